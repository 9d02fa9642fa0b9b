"""TurboQuant_mse and TurboQuant_prod (paper, Algorithms 1 and 2), for
vectors of any norm.

Every vector x is stored as its norm ||x|| (float32) and the unit vector
u = x / ||x||, quantized by one or two *instances* (the outlier split gives
each channel subset its own instance).  Per instance, with Pi its rotation,
c its Lloyd-Max centroids and beta their decision boundaries:

    Algorithm 1 (mse, b bits)                 Algorithm 2 (prod, b bits)
    y   = Pi u                                y   = Pi u
    idx = #{k : y > beta_k}  (per coord)      idx = mse codes with b-1 bits
    y~  = c[idx]                              r   = y - c[idx]   (rotated residual)
    x~  = ||x|| Pi^T y~                       sigma = sign(S r), gamma = ||r||
                                              x~  = ||x|| Pi^T (c[idx] + sqrt(pi/2)/m gamma S^T sigma)

Edge cases (SPEC.md, "Edge cases"): ||x|| is computed as m * sqrt(sum((x/m)^2))
with m = max|x_i|, so denormal and huge inputs neither underflow nor overflow;
a zero vector has norm 0 and u = 0; a vector with a NaN/Inf element or a norm
that overflows float32 is *non-finite*: every norm field is NaN and its codes
and signs are 0, so attention over it yields NaN for exactly the queries that
see it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from turboquant import format as tqf

from . import codebook as cbk
from .qjl import layer_qjl, qjl_signs
from .rotation import layer_rotation


@dataclass(frozen=True)
class InstanceParams:
    """Everything one instance needs: its channels, Pi, codebook and S."""

    instance: tqf.Instance
    channels: np.ndarray
    rotation: np.ndarray
    codebook: cbk.Codebook | None  # None when mse_bits == 0
    qjl: np.ndarray | None  # S, when instance.qjl


@dataclass(frozen=True)
class LayerParams:
    fmt: tqf.LayerFormat
    keys: tuple[InstanceParams, ...]
    values: tuple[InstanceParams, ...]  # empty for value_mode "group"


_PARAMS_CACHE: dict[tqf.LayerFormat, LayerParams] = {}


def layer_params(fmt: tqf.LayerFormat) -> LayerParams:
    """Rotations, codebooks and QJL matrices of one layer (cached)."""
    if fmt not in _PARAMS_CACHE:

        def build(insts, chans):
            out = []
            for inst, ch in zip(insts, chans):
                out.append(
                    InstanceParams(
                        inst,
                        ch,
                        layer_rotation(fmt, inst),
                        cbk.load(inst.dim, inst.mse_bits) if inst.mse_bits else None,
                        layer_qjl(fmt, inst) if inst.qjl else None,
                    )
                )
            return tuple(out)

        keys = build(fmt.key_instances, fmt.channel_split("key"))
        values = build(fmt.value_instances, fmt.channel_split("value")) if fmt.value_instances else ()
        _PARAMS_CACHE[fmt] = LayerParams(fmt, keys, values)
    return _PARAMS_CACHE[fmt]


# ------------------------------------------------------------------ norms
def l2_norm(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(||x||, u) in float32 along the last axis, overflow/underflow safe.

    m = max|x_i|; s = x / m; ||x|| = m * sqrt(sum(s^2)); u = s / sqrt(sum(s^2)).
    Zero vectors give (0, 0).  Non-finite input gives a non-finite norm."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = np.max(np.abs(x), axis=-1, keepdims=True)
        safe = np.where(m > 0, m, np.float32(1))
        s = x / safe
        ss = np.sqrt(np.sum(s * s, axis=-1, keepdims=True, dtype=np.float32))
        norm = (m * ss)[..., 0]
        u = s / np.where(ss > 0, ss, np.float32(1))
    return norm.astype(np.float32), u.astype(np.float32)


# ------------------------------------------------------------------ Algorithm 1
def rotate(u: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """y = Pi u for each row u (float32)."""
    return (u @ rotation.T).astype(np.float32)


def assign_codes(y: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """idx = #{k : y > beta_k}: the nearest centroid; a tie goes to the lower code."""
    return np.searchsorted(boundaries, y, side="left").astype(np.uint8)


def centroids_of(codes: np.ndarray, cb: cbk.Codebook) -> np.ndarray:
    return cb.centroids[codes]


# ------------------------------------------------------------------ encode one tensor
def encode_instances(x: np.ndarray, params: tuple[InstanceParams, ...]) -> dict[int, dict[str, np.ndarray]]:
    """Encode rows of x [..., d] with each instance.  Returns per instance
    index the stages: ``norm``, ``y`` (rotated unit coordinates), ``codes``,
    and for prod ``residual_proj`` (S r), ``signs``, ``rnorm`` (gamma)."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        bad = ~np.all(np.isfinite(x), axis=-1)
    out = {}
    for p in params:
        norm, u = l2_norm(x[..., p.channels])
        bad = bad | ~np.isfinite(norm)
        out[p.instance.index] = {"norm": norm, "u": u}
    for p in params:
        st = out[p.instance.index]
        u = np.where(bad[..., None], np.float32(0), st.pop("u"))
        st["y"] = y = rotate(u, p.rotation)
        if p.codebook is not None:
            st["codes"] = assign_codes(y, p.codebook.boundaries)
            recon = centroids_of(st["codes"], p.codebook)
        else:
            st["codes"] = np.zeros(y.shape, np.uint8)
            recon = np.zeros_like(y)
        if p.qjl is not None:
            r = (y - recon).astype(np.float32)  # Algorithm 2: residual, rotated domain
            st["residual_proj"] = (r @ p.qjl.T).astype(np.float32)
            st["signs"] = qjl_signs(p.qjl, r)
            st["rnorm"] = np.sqrt(np.sum(r * r, axis=-1, dtype=np.float32)).astype(np.float32)
    # Non-finite tokens: NaN norms, zero codes and signs.
    for st in out.values():
        st["norm"] = np.where(bad, np.float32(np.nan), st["norm"]).astype(np.float32)
        st["codes"] = np.where(bad[..., None], np.uint8(0), st["codes"])
        if "signs" in st:
            st["signs"] = np.where(bad[..., None], np.uint8(0), st["signs"])
            st["rnorm"] = np.where(bad, np.float32(np.nan), st["rnorm"]).astype(np.float32)
    return out


def decode_instances(
    fields: dict[int, dict[str, np.ndarray]], params: tuple[InstanceParams, ...], rotated: bool = False
) -> list[np.ndarray]:
    """Dequantize per instance: ||x|| (c[idx] + sqrt(pi/2)/m gamma S^T sigma),
    in the rotated domain (``rotated=True``) or mapped back by Pi^T."""
    outs = []
    for p in params:
        st = fields[p.instance.index]
        y = centroids_of(st["codes"], p.codebook) if p.codebook is not None else np.zeros(st["codes"].shape, np.float32)
        y = y.astype(np.float32)
        if p.qjl is not None:
            sigma = st["signs"].astype(np.float32) * 2 - 1
            y = y + tqf.qjl_scale(p.instance.dim) * st["rnorm"][..., None] * (sigma @ p.qjl)
        y = st["norm"][..., None] * y
        outs.append(y.astype(np.float32) if rotated else (y @ p.rotation).astype(np.float32))
    return outs


def scatter_channels(parts: list[np.ndarray], params: tuple[InstanceParams, ...], d: int) -> np.ndarray:
    out = np.empty((*parts[0].shape[:-1], d), np.float32)
    for part, p in zip(parts, params):
        out[..., p.channels] = part
    return out

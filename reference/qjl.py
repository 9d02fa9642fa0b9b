"""Quantized Johnson-Lindenstrauss sketch of the residual (paper, Def. 1, Alg. 2).

S has i.i.d. N(0,1) entries, shape (m, m) with m the instance dimension:
S = ``rng.gaussian_matrix(seed, m)`` (the portable generator, SPEC.md section 2)
with seed ``LayerFormat.seed("qjl", instance)``, computed in float64 and
stored as float32.

S acts on the residual in the *rotated* domain, r = Pi u - c~ (u the unit
vector, c~ its Lloyd-Max reconstruction).  The residual in the original
domain is Pi^T r, so S r = (S Pi)(Pi^T r): this is the paper's Algorithm 2
exactly, with Q_qjl's matrix equal to S Pi (again i.i.d. Gaussian, as Pi is
orthogonal and independent of S), and it saves one rotation per token.

    quantize:   sigma = sign(S r) in {-1, +1}^m   (sign(0) := +1),  gamma = ||r||
    dequantize: r~ = sqrt(pi/2)/m * gamma * S^T sigma
    estimator:  <q', r~> = sqrt(pi/2)/m * gamma * <S q', sigma>, unbiased for <q', r>
                (q' = Pi q, so <S q', sigma> = <(S Pi) q, sigma>).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from turboquant import format as tqf

from . import rng


@lru_cache(maxsize=256)
def qjl_matrix(m: int, seed: int) -> np.ndarray:
    """The m x m float32 QJL matrix S of stream ``seed`` (read-only)."""
    out = np.ascontiguousarray(rng.gaussian_matrix(seed, m), dtype=np.float32)
    out.flags.writeable = False
    return out


def layer_qjl(fmt: tqf.LayerFormat, instance: tqf.Instance) -> np.ndarray:
    return qjl_matrix(instance.dim, fmt.seed("qjl", instance.index))


def qjl_signs(s: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """sign(S r) for rows r of ``residual`` as uint8 bits (1: +1, 0: -1)."""
    proj = residual.astype(np.float32) @ s.T
    return (proj >= 0).astype(np.uint8)


def qjl_dequantize(s: np.ndarray, bits: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """r~ = sqrt(pi/2)/m * gamma * S^T sigma for each row."""
    sigma = bits.astype(np.float32) * 2 - 1
    return (tqf.qjl_scale(s.shape[0]) * gamma[..., None] * (sigma @ s)).astype(np.float32)

"""Asymmetric min/max value quantization in groups of g channels (value mode ``group``).

Per group of g consecutive channels (unrotated):

    zero  = fp16(min v),  scale = fp16((max v - min v) / (2^b - 1))
    code  = clamp(floor((v - zero) / scale + 1/2), 0, 2^b - 1)   (float32, scale from its fp16 value)
    v~    = zero + scale * code

A group whose scale rounds to 0 stores code 0 (v~ = zero).  A token with a
NaN/Inf value, or whose min/max/scale leave the fp16 range (|.| > 65504),
is non-finite: all scales and zeros are fp16 NaN (0x7E00), codes are 0.
"""

from __future__ import annotations

import numpy as np

from turboquant import format as tqf


def group_quantize(v: np.ndarray, bits: int, group_size: int) -> dict[str, np.ndarray]:
    """v [..., d] -> {"scale", "zero": float16 [..., d/g], "codes": uint8 [..., d], "t": float32 [..., d]}."""
    v = np.asarray(v, dtype=np.float32)
    d = v.shape[-1]
    g = v.reshape(*v.shape[:-1], d // group_size, group_size)
    levels = np.float32((1 << bits) - 1)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        mn = g.min(axis=-1)
        mx = g.max(axis=-1)
        zero16 = mn.astype(np.float16)
        scale16 = ((mx - mn) / levels).astype(np.float16)
        bad_group = ~(np.isfinite(zero16) & np.isfinite(scale16) & np.isfinite(mx.astype(np.float16)))
        bad = np.any(bad_group, axis=-1) | ~np.all(np.isfinite(v), axis=-1)
        zero = zero16.astype(np.float32)[..., None]
        scale = scale16.astype(np.float32)[..., None]
        t = np.where(scale > 0, (g - zero) / np.where(scale > 0, scale, np.float32(1)), np.float32(0))
        codes = np.clip(np.floor(t + np.float32(0.5)), 0, levels)
    codes = np.where(bad[..., None, None], 0, codes).astype(np.uint8).reshape(v.shape)
    nan16 = np.array(tqf.GROUP_NAN_BITS, np.uint16).view(np.float16)
    zero16 = np.where(bad[..., None], nan16, zero16)
    scale16 = np.where(bad[..., None], nan16, scale16)
    return {"scale": scale16, "zero": zero16, "codes": codes, "t": t.reshape(v.shape).astype(np.float32)}


def group_dequantize(scale: np.ndarray, zero: np.ndarray, codes: np.ndarray, group_size: int) -> np.ndarray:
    d = codes.shape[-1]
    c = codes.reshape(*codes.shape[:-1], d // group_size, group_size).astype(np.float32)
    out = zero.astype(np.float32)[..., None] + scale.astype(np.float32)[..., None] * c
    return out.reshape(codes.shape).astype(np.float32)

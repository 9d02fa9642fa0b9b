"""Bit packing (SPEC.md, "Bit packing").

A field of n codes of b bits (b in 1..8) is one little-endian bit stream:
bit j of code i is stream bit i*b + j, and stream bit k is bit (k mod 8)
(LSB = 0) of byte k // 8.  Codes straddle bytes when 8 is not a multiple
of b; the last byte is zero-padded.  Signs are codes with b = 1.
"""

from __future__ import annotations

import numpy as np

from turboquant.format import packed_nbytes


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack the last axis of ``codes`` (values < 2^bits) LSB-first."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits={bits} is not supported; allowed values: 1..8")
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {1 << bits}) for bits={bits}")
    n = codes.shape[-1]
    j = np.arange(bits, dtype=np.uint8)
    stream = ((codes[..., :, None].astype(np.uint8) >> j) & 1).reshape(*codes.shape[:-1], n * bits)
    pad = packed_nbytes(n, bits) * 8 - n * bits
    if pad:
        stream = np.concatenate([stream, np.zeros((*stream.shape[:-1], pad), np.uint8)], axis=-1)
    return np.packbits(stream, axis=-1, bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of ``pack_bits``: the first ``n`` codes of each row, uint8."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits={bits} is not supported; allowed values: 1..8")
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.shape[-1] < packed_nbytes(n, bits):
        raise ValueError(f"packed has {packed.shape[-1]} bytes, {packed_nbytes(n, bits)} needed for n={n}, bits={bits}")
    stream = np.unpackbits(packed, axis=-1, bitorder="little")[..., : n * bits]
    stream = stream.reshape(*packed.shape[:-1], n, bits)
    weights = (1 << np.arange(bits)).astype(np.uint8)
    return (stream * weights).sum(axis=-1, dtype=np.uint8)

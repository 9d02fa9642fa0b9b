"""Bit packing of slot fields (SPEC §5: LSB-first streams) on torch tensors, and table
lookups that turn packed codes straight into centroid values.

Packing: 8 codes of b bits are exactly b bytes, so codes are taken in groups of 8, each
group is one integer (code i at bit i*b) and its b little-endian bytes are the stream.

Unpacking for attention never materialises integer codes: a *chunk* of the stream (one
byte when b divides 8, 12 bits = 4 codes when b = 3) indexes a table whose row holds the
chunk's codes already mapped through a value table (centroids, +-1 signs, or the codes
themselves), so one gather yields float values.  ``field_lut`` builds such a table."""

from __future__ import annotations

import torch

from turboquant import format as tqf


def chunk_bits(bits: int) -> int:
    """Stream bits per table index: a byte when bits divides 8, else (3 bits) 12 bits."""
    tqf.check_choice("bits", bits, tqf.SUPPORTED_BITS)
    return 8 if 8 % bits == 0 else 12


def field_lut(bits: int, values: torch.Tensor) -> torch.Tensor:
    """float32 [2^chunk_bits, chunk_bits/bits]: row k = values[codes of the chunk k]."""
    cb = chunk_bits(bits)
    k = torch.arange(1 << cb, dtype=torch.int64)
    shifts = torch.arange(cb // bits, dtype=torch.int64) * bits
    codes = (k[:, None] >> shifts[None, :]) & ((1 << bits) - 1)
    return values.to(torch.float32)[codes].contiguous()


def lookup(packed: torch.Tensor, bits: int, count: int, lut: torch.Tensor) -> torch.Tensor:
    """Packed fields uint8 [..., nbytes] -> float32 [..., count]: lut[...] of each code.

    ``packed`` may be a strided view (a field of a slot tensor)."""
    lead = packed.shape[:-1]
    if 8 % bits == 0:
        idx = packed.to(torch.int64)
    else:  # 3 bits: 3 bytes = 8 codes = two 12-bit chunks
        nb = packed.shape[-1]
        if nb % 3:
            packed = torch.nn.functional.pad(packed, (0, 3 - nb % 3))
        g = packed.reshape(*lead, -1, 3).to(torch.int64)
        b0, b1, b2 = g[..., 0], g[..., 1], g[..., 2]
        idx = torch.stack((b0 | ((b1 & 15) << 8), (b1 >> 4) | (b2 << 4)), dim=-1)
    vals = lut.index_select(0, idx.reshape(-1)).view(*lead, -1)
    return vals if vals.shape[-1] == count else vals[..., :count]


def pack(codes: torch.Tensor, bits: int, nbytes: int) -> torch.Tensor:
    """Codes (integers < 2^bits) [..., n] -> uint8 [..., nbytes], nbytes = ceil(n*bits/8)."""
    n = codes.shape[-1]
    if nbytes != tqf.packed_nbytes(n, bits):
        raise ValueError(f"nbytes={nbytes} does not match {n} codes of {bits} bits ({tqf.packed_nbytes(n, bits)})")
    c = codes.to(torch.int64)
    if n % 8:
        c = torch.nn.functional.pad(c, (0, 8 - n % 8))
    c = c.reshape(*c.shape[:-1], -1, 8)
    word = (c << (torch.arange(8, dtype=torch.int64) * bits)).sum(-1)  # disjoint bits: sum == or
    by = (word[..., None] >> (torch.arange(bits, dtype=torch.int64) * 8)) & 255
    return by.reshape(*by.shape[:-2], -1)[..., :nbytes].to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of ``pack``: uint8 [..., nbytes] -> int64 codes [..., count]."""
    ident = torch.arange(1 << bits, dtype=torch.float32)
    return lookup(packed, bits, count, field_lut(bits, ident)).to(torch.int64)

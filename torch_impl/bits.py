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


def lookup_columns(bits: int, nbytes: int) -> torch.Tensor:
    """int64 [lookup's columns]: the code index (position in the field) of each column ``lookup``
    returns; indices >= the field's count are padding.  When bits divides 8 the columns are the
    codes in order; for 3 bits they are grouped by chunk half: column h*4G + 4g + i holds code
    8g + 4h + i (G = 3-byte groups), which lets ``lookup`` write both halves contiguously."""
    if 8 % bits == 0:
        return torch.arange(nbytes * 8 // bits)
    groups = -(-nbytes // 3)
    h, g, i = torch.meshgrid(torch.arange(2), torch.arange(groups), torch.arange(4), indexing="ij")
    return (8 * g + 4 * h + i).reshape(-1)


def lookup(packed: torch.Tensor, bits: int, lut: torch.Tensor) -> torch.Tensor:
    """Packed fields uint8 [..., nbytes] -> float32 [..., columns]: lut values of each code, in the
    column order of ``lookup_columns`` (padding columns included).

    ``packed`` may be a strided view (a field of a slot tensor)."""
    lead = packed.shape[:-1]
    if 8 % bits == 0:
        idx = packed.to(torch.int32)
    else:  # 3 bits: 3 bytes = 8 codes = two 12-bit chunks
        nb = packed.shape[-1]
        if nb % 3:
            packed = torch.nn.functional.pad(packed, (0, 3 - nb % 3))
        b0, b1, b2 = packed[..., 0::3], packed[..., 1::3], packed[..., 2::3]
        idx = torch.empty((*lead, 2, b0.shape[-1]), dtype=torch.int32, device=packed.device)
        torch.bitwise_or(b0.to(torch.int32), (b1 & 15).to(torch.int32) << 8, out=idx[..., 0, :])
        torch.bitwise_or((b1 >> 4).to(torch.int32), b2.to(torch.int32) << 4, out=idx[..., 1, :])
    return lut.index_select(0, idx.reshape(-1)).view(*lead, -1)


def _pack_weights(n: int, bits: int, device) -> tuple[torch.Tensor, int]:
    """float32 [n, words] with entry 2^(bit of code j within its word), and the word size in bytes:
    one byte when bits divides 8, else (3 bits) 3 bytes = 8 codes.  Exact: words < 2^24."""
    key = (n, bits, str(device))
    if key not in _WEIGHTS:
        per = 8 // bits if 8 % bits == 0 else 8  # codes per word
        nwords = -(-n // per)
        w = torch.zeros(n, nwords, dtype=torch.float32)
        j = torch.arange(n)
        w[j, j // per] = torch.pow(2.0, (j % per) * bits).to(torch.float32)
        _WEIGHTS[key] = (w.to(device), 1 if 8 % bits == 0 else 3)
    return _WEIGHTS[key]


def pack(codes: torch.Tensor, bits: int, nbytes: int) -> torch.Tensor:
    """Codes (integers < 2^bits) [..., n] -> uint8 [..., nbytes], nbytes = ceil(n*bits/8).

    The codes of one word (a byte, or 3 bytes for 3 bits) occupy disjoint bits, so the word is a
    weighted sum: one float32 matmul, exact because every word is below 2^24."""
    n = codes.shape[-1]
    if nbytes != tqf.packed_nbytes(n, bits):
        raise ValueError(f"nbytes={nbytes} does not match {n} codes of {bits} bits ({tqf.packed_nbytes(n, bits)})")
    w, word_bytes = _pack_weights(n, bits, codes.device)
    words = codes.to(torch.float32) @ w
    if word_bytes == 1:
        return words.to(torch.uint8)
    words = words.to(torch.int32)
    by = torch.empty((*words.shape, 3), dtype=torch.uint8, device=codes.device)
    for k in range(3):
        by[..., k] = (words >> (8 * k)) & 255
    return by.reshape(*words.shape[:-1], -1)[..., :nbytes]


def unpack(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of ``pack``: uint8 [..., nbytes] -> int64 codes [..., count]."""
    ident = torch.arange(1 << bits, dtype=torch.float32)
    cols = lookup_columns(bits, packed.shape[-1])
    vals = lookup(packed, bits, field_lut(bits, ident))
    out = torch.empty((*vals.shape[:-1], int(cols.max()) + 1), dtype=torch.int64)
    out[..., cols] = vals.to(torch.int64)
    return out[..., :count]


_WEIGHTS: dict = {}

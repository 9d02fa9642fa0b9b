"""Shared @triton.jit helpers: unpacking bit-packed slot fields (LSB-first
streams, format.py / reference.pack) and writing little-endian fields.

Slots are read as int32 words (every slot is SLOT_ALIGN = 4 bytes aligned);
a field is addressed by its bit offset from the start of the slot.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def unpack_codes(ptrs, tmask, BT: tl.constexpr, BIT_OFF: tl.constexpr, BITS: tl.constexpr,
                 M: tl.constexpr, MP: tl.constexpr, FAST: tl.constexpr):
    """Codes of one packed field for a tile of slots.

    ptrs  [BT] int32 pointers to word 0 of each slot; tmask [BT] valid slots.
    Returns int32 [BT, MP]: code j of the field (j < M), 0 for j >= M or
    masked slots.  FAST (bit offset word aligned, whole words per group):
    load whole words once and shift; otherwise each code is cut out of the
    two words around it."""
    MASK: tl.constexpr = (1 << BITS) - 1
    if FAST:
        if BITS == 3:
            # 32 codes = 3 words = two 48-bit windows of 16 codes each.
            NG: tl.constexpr = MP // 32
            NGV: tl.constexpr = M // 32
            g = tl.arange(0, NG)
            base = ptrs[:, None] + (BIT_OFF // 32) + g[None, :] * 3
            m2 = tmask[:, None] & (g < NGV)[None, :]
            w0 = tl.load(base, mask=m2, other=0).to(tl.uint32, bitcast=True).to(tl.uint64)
            w1 = tl.load(base + 1, mask=m2, other=0).to(tl.uint32, bitcast=True).to(tl.uint64)
            w2 = tl.load(base + 2, mask=m2, other=0).to(tl.uint32, bitcast=True).to(tl.uint64)
            v0 = w0 | (w1 << 32)
            v1 = (w1 >> 16) | (w2 << 16)
            v = tl.join(v0, v1)  # [BT, NG, 2]
            sh = (tl.arange(0, 16) * 3).to(tl.uint64)
            c = (v[:, :, :, None] >> sh[None, None, None, :]) & MASK  # [BT, NG, 2, 16]
            codes = tl.reshape(c, (BT, MP)).to(tl.int32)
        else:
            PER: tl.constexpr = 32 // BITS
            NW: tl.constexpr = MP // PER
            NWV: tl.constexpr = (M * BITS) // 32
            w_idx = tl.arange(0, NW)
            w = tl.load(ptrs[:, None] + (BIT_OFF // 32) + w_idx[None, :],
                        mask=tmask[:, None] & (w_idx < NWV)[None, :], other=0).to(tl.uint32, bitcast=True)
            sh = (tl.arange(0, PER) * BITS).to(tl.uint32)
            c = (w[:, :, None] >> sh[None, None, :]) & MASK  # [BT, NW, PER]
            codes = tl.reshape(c, (BT, MP)).to(tl.int32)
    else:
        j = tl.arange(0, MP)
        p = BIT_OFF + j * BITS
        wi = p >> 5
        sh = (p & 31).to(tl.uint32)
        jm = j < M
        straddle = (p & 31) + BITS > 32
        w0 = tl.load(ptrs[:, None] + wi[None, :], mask=tmask[:, None] & jm[None, :], other=0)
        w1 = tl.load(ptrs[:, None] + wi[None, :] + 1, mask=tmask[:, None] & (jm & straddle)[None, :], other=0)
        w0 = w0.to(tl.uint32, bitcast=True)
        w1 = w1.to(tl.uint32, bitcast=True)
        # (w1 << 1) << (31 - sh): valid shift amounts; bits of w1 land above BITS
        # unless the code straddles, and MASK removes them.
        codes = (((w0 >> sh[None, :]) | ((w1 << 1) << (31 - sh)[None, :])) & MASK).to(tl.int32)
    return codes


@triton.jit
def load_f32(ptrs, tmask, BYTE_OFF: tl.constexpr):
    """A float32 field (4-byte aligned) of each slot: [BT] float32 (0 where masked)."""
    return tl.load(ptrs + BYTE_OFF // 4, mask=tmask, other=0).to(tl.float32, bitcast=True)


@triton.jit
def load_f16_array(ptrs, tmask, BT: tl.constexpr, BYTE_OFF: tl.constexpr, N: tl.constexpr, NP: tl.constexpr):
    """N float16 values at BYTE_OFF (2-byte aligned) of each slot: [BT, NP] float32."""
    raw = unpack_codes(ptrs, tmask, BT, BYTE_OFF * 8, 16, N, NP, False)
    return raw.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def store_u32(bptr, off, bits, mask):
    """Store 4 little-endian bytes of int32 ``bits`` at uint8 pointers bptr + off."""
    u = bits.to(tl.uint32, bitcast=True)
    tl.store(bptr + off, (u & 255).to(tl.uint8), mask=mask)
    tl.store(bptr + off + 1, ((u >> 8) & 255).to(tl.uint8), mask=mask)
    tl.store(bptr + off + 2, ((u >> 16) & 255).to(tl.uint8), mask=mask)
    tl.store(bptr + off + 3, ((u >> 24) & 255).to(tl.uint8), mask=mask)


@triton.jit
def store_u16(bptr, off, bits, mask):
    """Store 2 little-endian bytes of the low 16 bits of int32 ``bits``."""
    u = bits.to(tl.uint32, bitcast=True)
    tl.store(bptr + off, (u & 255).to(tl.uint8), mask=mask)
    tl.store(bptr + off + 1, ((u >> 8) & 255).to(tl.uint8), mask=mask)


@triton.jit
def pack_store_codes(bptr, tmask, codes, BT: tl.constexpr, BYTE_OFF: tl.constexpr, BITS: tl.constexpr,
                     MP: tl.constexpr, NBYTES: tl.constexpr):
    """Pack codes [BT, MP] (values < 2^BITS, zero beyond the field's count)
    LSB-first into the NBYTES bytes at BYTE_OFF of each slot (uint8 pointers
    bptr [BT]): 8 codes make BITS whole bytes."""
    NG: tl.constexpr = MP // 8
    c = tl.reshape(codes.to(tl.uint32), (BT, NG, 8))
    sh = (tl.arange(0, 8) * BITS).to(tl.uint32)
    v = tl.sum(c << sh[None, None, :], axis=2)  # disjoint bits: sum == or
    g = tl.arange(0, NG)
    for k in tl.static_range(BITS):
        off = g * BITS + k
        tl.store(bptr[:, None] + BYTE_OFF + off[None, :], ((v >> (8 * k)) & 255).to(tl.uint8),
                 mask=tmask[:, None] & (off < NBYTES)[None, :])

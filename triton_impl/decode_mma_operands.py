"""decode_mma_operands: a tile's packed key and value codes turned into ``mma.sync`` A-operand registers
(Gluon), for decode_mma.py's kernel.

The two products are transposed so that the GQA group is the MMA's N = 8 columns:

* scores   S^T [16 tokens, 8 heads]  = K'  [16 tokens, d]  @ Q'^T [d, 8]      (mma m16n8k16)
* values   O^T [d, 8 heads]         += V'^T [d, 16 tokens] @ P^T  [16 tokens, 8]

K' and V'^T are the centroids c[idx] of the tile (norms apply to scores and to P), built in
registers in the mma A-operand layout.  Which rotated coordinate sits in which operand register is
free: a permutation of the coordinates applied to Q' (query side) and undone when the accumulator
is stored (value side) leaves both products unchanged.  The kernel picks it so that every lane's
operand elements are one contiguous run of codes of a slot (no stored byte changes):

* key A operand: lane (g, r) = (lane // 4, lane % 4) holds tokens g and g + 8 and, of each, the MMA
  columns k = 16 kt + 8 hf + 2 r + e (kt < d/16, hf, e < 2).  Slot key code 32 r + (4 kt + 2 hf + e)
  goes to column k: each lane reads d/4 consecutive codes of its two tokens (12 bytes at 3 bits).
* value A operand: lane (g, r) holds coordinates n = 8 j + g (j < 16) of tokens 2 r + e + 8 hf.
  Slot value code 16 g + j goes to row n: each lane reads 16 consecutive codes (48 bits at 3 bits).

An mma operand register holds two consecutive K-dimension elements (``k_width`` 2).  For keys
these are two consecutive codes of one slot, for values the same code of two consecutive tokens;
either way one lookup in a *pair table* (``pair[a | b << bits]`` = the two fp16 centroids c[a],
c[b] as one 32-bit word, 2^(2 bits) entries, in shared memory) gives the register, so decoding costs a
shift, a mask-and-lane and an ld.shared per two elements.  Entry e's copies are words
e * COPIES .. e * COPIES + COPIES - 1 and lane l reads copy l % COPIES, so lanes spread over the banks.
Where keys and values share one codebook (tq3, tq4: the kernel's SHARED_TABLE) one table of 2 TABLE_WORDS words
serves both, with twice the copies: at 3 bits 32, every lane its own bank, no conflict whatever the
codes (with 16 copies two lanes share a copy and collide when their entries differ in parity: the
profile showed every lookup at exactly two wavefronts).  4-bit keys with a table of their own (k4v3)
have 4 copies of 256 entries: 8 lanes share a copy and collide whenever their entries differ in the
low 3 bits.  AttnConfig.mma_key_table = "single" gives them a single-code table instead,
16 entries x 32 copies (word 32 e + lane = c[e] in both halves): two conflict-free lookups a pair,
joined into the same word (low half of one, high half of the other), so the same bits.
AttnConfig.mma_value_table moves the values the same way: "wide" (k4v3) gives its 3-bit value pair table
32 copies (8 KB, beside the 2 KB single-code key table, with a three-tile ring), "single" (tq4) looks the
values up on the keys' single-code table (2 KB in all, in an allocation of its own after the ring);
beside a key table, "auto" values (decode_mma.resolve_value_table) are "wide" for k4v3 and "single" for tq4.
Without a table (AttnConfig.mma_key_table / mma_value_table = "prmt"): 4-bit codes of a symmetric codebook are
decoded in registers by byte permutes (prmt.b32) of the fp16 magnitudes' bytes, held in four registers
(_prmt_halves): the same values, no ld.shared.  That is the default ("auto") for k4v3's and tq4's keys, with
k4v3's wide value table and a four-tile ring (the key table's 2 KB freed) and tq4's values by byte permutes too
(no table at all); 3-bit keys keep the pair table.  Where each table sits in shared memory and which one a
preset gets: decode_mma (TABLE_WORDS, resolve_key_table, resolve_value_table).
"""

from __future__ import annotations

import math

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

TILE_TOKENS = 16  # tokens per MMA tile (the m16 of the key product, the k16 of the value product)
TILE = gl.constexpr(TILE_TOKENS)
# _prmt_key_pairs's byte-permute selectors (prmt.b32 default mode: selector nibble j picks byte j of the result
# from {b, a}, a = bytes 0-3): the sign bytes of nibbles 0-3 and 4-7 of a word from (a = neg, b = neg << 4),
# and a pair's low and high bytes from (a = low bytes, b = high bytes) for pairs 0 and 1 of the four
PRMT_SIGN_LO, PRMT_SIGN_HI = gl.constexpr(0x1504), gl.constexpr(0x3726)
PRMT_PAIR_LO, PRMT_PAIR_HI = gl.constexpr(0x5140), gl.constexpr(0x7362)
# and the low halves of two words (a's, then b's), the high halves (_prmt_value_pairs)
PRMT_LOW_HALVES, PRMT_HIGH_HALVES = gl.constexpr(0x5410), gl.constexpr(0x7632)


@triton.constexpr_function
def key_words3(d):
    """KW3: the key word layout KW [16 t, 4 r] plus the lane's d/8 pair indices in registers."""
    return gl.DistributedLinearLayout(
        reg_bases=[[8, 0, 0]] + [[0, 0, 1 << i] for i in range(int(math.log2(d // 8)))],
        lane_bases=[[0, 1, 0], [0, 2, 0], [1, 0, 0], [2, 0, 0], [4, 0, 0]], warp_bases=[], block_bases=[],
        shape=[16, 4, d // 8])


@gluon.jit
def _sel_word(w0, w1, w2, w3, wi):
    """Word wi (per-register constant) of a lane's segment."""
    return gl.where(wi == 0, w0, gl.where(wi == 1, w1, gl.where(wi == 2, w2, w3)))


@gluon.jit
def _expand_pairs(pair):
    """int32 words holding two fp16 values (low half first) -> fp16 [..., 2]."""
    lo = pair.to(gl.int16).to(gl.float16, bitcast=True)
    hi = (pair >> 16).to(gl.int16).to(gl.float16, bitcast=True)
    return gl.join(lo, hi)


@gluon.jit
def lookup(addr):
    """The int32 words at byte addresses ``addr`` (uint32 tensor) of the kernel's shared memory
    (its tables start at Triton's ``global_smem``, the ring at RING0: MMA_RING_BYTES; decode_attention_mma
    checks the compiled kernel's shared size against it)."""
    return gl.inline_asm_elementwise(
        "{ .reg .b32 a; mov.u32 a, global_smem; add.u32 a, a, $1; ld.shared.b32 $0, [a]; }",
        "=r,r", [addr], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _opaque(x):
    """x (uint32), through a register move the compiler cannot see into: a lane's table-copy offset stays
    one register, so (code field & mask) | offset is one LOP3 (otherwise the compiler re-applies the
    offset's own mask in every address: a second LOP3 a lookup)."""
    return gl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=gl.uint32, is_pure=True, pack=1)


@triton.constexpr_function
def _single_code_table(kb, copies):
    """Whether the key table is the single-code table (AttnConfig.mma_key_table = "single"): 4-bit keys
    with 32 copies, which a 256-entry pair table cannot have in TABLE_WORDS words."""
    return kb == 4 and copies == 32


@triton.constexpr_function
def _run_mask(pb, n):
    """The low half-field mask of n fields of pb bits: (2^(pb/2) - 1) repeated every pb bits."""
    return sum(((1 << (pb // 2)) - 1) << (pb * k) for k in range(n))


@gluon.jit
def key_word_offsets(SW: gl.constexpr, K_CODES: gl.constexpr, KB: gl.constexpr, D: gl.constexpr,
                      KW3: gl.constexpr):
    """Byte offsets, inside a ring stage, of word 0 of each lane's key segment [16 t, 4 r]
    (lane (g, r): tokens g, g + 8, segment r)."""
    KW: gl.constexpr = gl.SliceLayout(2, KW3)
    t = gl.arange(0, TILE, layout=gl.SliceLayout(1, KW))
    r = gl.arange(0, 4, layout=gl.SliceLayout(0, KW))
    return (t[:, None] * (SW * 4) + K_CODES + r[None, :] * (KB * D // 32)).to(gl.uint32)


@gluon.jit
def key_words(ofs, KB: gl.constexpr, D: gl.constexpr):
    """The key code words at ring offsets ``ofs`` (the stage's byte address added)."""
    w0 = lookup(ofs)
    w1 = lookup(ofs + 4)
    w2 = lookup(ofs + 8)
    if KB * D // 128 > 3:
        w3 = lookup(ofs + 12)
    else:
        w3 = gl.zeros_like(w0)
    return w0, w1, w2, w3


@gluon.jit
def value_word_offsets(SW: gl.constexpr, V_CODES: gl.constexpr, VB: gl.constexpr, VP3: gl.constexpr):
    """Byte offsets, inside a ring stage, of the first of the two words holding codes 16 g .. 16 g + 15
    of the even token of pair tp, [8 tp, 8 g] (the odd token's are SW * 4 further)."""
    VP: gl.constexpr = gl.SliceLayout(2, VP3)
    tp = gl.arange(0, TILE // 2, layout=gl.SliceLayout(1, VP))
    g = gl.arange(0, 8, layout=gl.SliceLayout(0, VP))
    return ((2 * tp)[:, None] * (SW * 4) + ((V_CODES * 8 + g * (16 * VB)) // 32 * 4)[None, :]).to(gl.uint32)


@gluon.jit
def _u64(w):
    return w.to(gl.uint32, bitcast=True).to(gl.uint64)


@gluon.jit
def _prmt(a, b, sel):
    """Bytes of {b, a} picked by sel's low four nibbles (PTX prmt.b32, default mode), per element."""
    return gl.inline_asm_elementwise("prmt.b32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, sel], dtype=gl.uint32,
                                     is_pure=True, pack=1)


@gluon.jit
def _prmt_halves(w, kprmt, q4):
    """The half2 (c[n_k], c[n_k+1]) of nibbles k = q4 & ~1 and k + 1 (q4 < 8, a per-register constant) of the
    code words w, for a symmetric ascending 16-centroid codebook (c[i] = -c[15 - i]): nibble i is
    c[8 + i & 7] if its bit 3 is set, else -c[8 + (i ^ 7) & 7].  kprmt = (ML0, ML1, MH0, MH1): the low and high
    bytes of the fp16 magnitudes c[8] .. c[15] (params.prmt_key_bytes).  The magnitude indices of all eight
    nibbles take three ALU instructions; the low and high bytes of four magnitudes (nibbles 0-3, or 4-7 after a
    shift) a byte permute each over a 2-register table; the signs, each nibble's bit 3 to its high byte's bit
    7, a byte permute of the negatives' word and of it shifted by 4; the pair's interleave one more (CSE shares
    all but the last among the word's pairs)."""
    neg = ~w & 0x88888888
    m = (w ^ ((neg >> 3) * 7)) & 0x77777777
    half = gl.where(q4 < 4, m, m >> 16)
    ml0, ml1, mh0, mh1 = kprmt
    lo = _prmt(ml0 + half * 0, ml1 + half * 0, half)
    hi = _prmt(mh0 + half * 0, mh1 + half * 0, half)
    sign = _prmt(neg, neg << 4, gl.where(q4 < 4, PRMT_SIGN_LO, PRMT_SIGN_HI)) & 0x80808080
    return _prmt(lo, hi | sign, gl.where(q4 % 4 < 2, PRMT_PAIR_LO, PRMT_PAIR_HI))


@gluon.jit
def _prmt_key_pairs(w0, w1, w2, w3, kprmt, D: gl.constexpr, KW3: gl.constexpr):
    """mma_key_table "prmt": the key pair registers [16 t, 4 r, D/8] of 4-bit codes of a symmetric codebook
    (c[i] = -c[15 - i], ascending) without a table in shared memory: pair ip is nibbles 2 ip % 8 and the next
    of word ip // 4, so _prmt_halves of that word.  18 instructions a word of eight codes (four pairs) against
    28 with the single-code table (two lookups a pair and a join); the same fp16 values, so the same bits."""
    NP: gl.constexpr = D // 8
    ip = gl.arange(0, NP, layout=gl.SliceLayout(0, gl.SliceLayout(0, KW3)))
    wi = gl.expand_dims(gl.expand_dims(ip // 4, 0), 0)
    q4 = gl.expand_dims(gl.expand_dims(2 * (ip % 4), 0), 0)  # the pair's first nibble (per-register constants)
    w = _sel_word(w0.to(gl.uint32, bitcast=True)[:, :, None], w1.to(gl.uint32, bitcast=True)[:, :, None],
                  w2.to(gl.uint32, bitcast=True)[:, :, None], w3.to(gl.uint32, bitcast=True)[:, :, None], wi)
    return _prmt_halves(w, kprmt, q4).to(gl.int32, bitcast=True)


@gluon.jit
def _prmt_value_pairs(a0, a1, b0, b1, kprmt, VP3: gl.constexpr):
    """mma_value_table "prmt" (tq4: 4-bit values of the keys' symmetric codebook): the value pair registers
    [8 tp, 8 g, 16 j] = (c[a_j], c[b_j]) of the two tokens' runs a = (a0, a1), b = (b0, b1) (codes 0-7, 8-15),
    without a table: _prmt_halves of each token's word gives the half2 (c[x_2k], c[x_2k+1]), and one byte
    permute takes code j's half from a's and from b's (5.5 instructions a pair against 7 with two single-code
    lookups and a join; the same values)."""
    j = gl.expand_dims(gl.expand_dims(gl.arange(0, 16, layout=gl.SliceLayout(0, gl.SliceLayout(0, VP3))), 0), 0)
    hi = j >= 8
    wa = gl.where(hi, a1.to(gl.uint32, bitcast=True)[:, :, None], a0.to(gl.uint32, bitcast=True)[:, :, None])
    wb = gl.where(hi, b1.to(gl.uint32, bitcast=True)[:, :, None], b0.to(gl.uint32, bitcast=True)[:, :, None])
    q4 = j % 8
    xa = _prmt_halves(wa, kprmt, q4)
    xb = _prmt_halves(wb, kprmt, q4)
    return _prmt(xa, xb, gl.where(j % 2 == 0, PRMT_LOW_HALVES, PRMT_HIGH_HALVES)).to(gl.int32, bitcast=True)


@gluon.jit
def key_operand(w0, w1, w2, w3, kprmt, KB: gl.constexpr, D: gl.constexpr, COPIES: gl.constexpr,
                 K_TABLE: gl.constexpr, OPA: gl.constexpr, KW3: gl.constexpr):
    """The tile's key centroids as the A operand [16 tokens, D] from its words (module docstring);
    the key table at byte K_TABLE of shared memory (0, or where mma_value_table puts another table or the ring
    first: bits above its entries', so that an OR places the entry), COPIES copies of each entry; COPIES 0:
    no table, byte permutes of the magnitudes' bytes kprmt (_prmt_key_pairs)."""
    NP: gl.constexpr = D // 8  # pairs per lane and token (d/4 codes)
    if COPIES == 0:
        x = _expand_pairs(_prmt_key_pairs(w0, w1, w2, w3, kprmt, D, KW3))  # [16 t, 4 r, NP (kt, hf), 2 e]
        x = gl.reshape(x, [TILE, 4, D // 16, 2, 2])  # t, r, kt, hf, e
        x = gl.permute(x, [0, 2, 3, 1, 4])  # t, kt, hf, r, e
        return gl.convert_layout(gl.reshape(x, [TILE, D]), OPA, assert_trivial=True)
    PB: gl.constexpr = 2 * KB
    # lane (g, r) = 4 (t % 8) + r reads copy lane % COPIES of the table (bank-conflict spreading)
    t = gl.arange(0, TILE, layout=gl.SliceLayout(1, gl.SliceLayout(2, KW3)))
    r = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(2, KW3)))
    copy4 = ((((4 * (t % 8))[:, None] + r[None, :]) % COPIES) * 4).to(gl.uint32)
    if _single_code_table(KB, COPIES):
        # two lookups a pair: keep the offset (and the table's base) one register (one LOP3 an address)
        copy4 = _opaque(copy4 + K_TABLE)
    copy4 = copy4[:, :, None]
    ip = gl.arange(0, NP, layout=gl.SliceLayout(0, gl.SliceLayout(0, KW3)))
    bit = ip * PB
    wi = gl.expand_dims(gl.expand_dims(bit // 32, 0), 0)
    sh = gl.expand_dims(gl.expand_dims((bit % 32).to(gl.uint64), 0), 0)
    x0 = _u64(w0)[:, :, None]
    x1 = _u64(w1)[:, :, None]
    x2 = _u64(w2)[:, :, None]
    x3 = _u64(w3)[:, :, None]
    lo = _sel_word(x0, x1, x2, x3, wi)
    hi = _sel_word(x0, x1, x2, x3, wi + 1)
    v = lo | (hi << 32)
    if _single_code_table(KB, COPIES):
        # 16 entries x 32 copies, each word c[e] in both halves: the pair word is the low half of
        # code a's word and the high half of code b's (the same word as pair[a | b << 4])
        # byte address 128 idx + copy4: code a (bits sh..sh+3) and code b (sh+4..sh+7) shifted to bit 7
        # (per-register constant shifts, so one funnel shift and one LOP3 an address)
        sa = (v >> gl.maximum(sh, 7) - 7) << 7 - gl.minimum(sh, 7)
        sb = (v >> gl.maximum(sh, 3) - 3) << 3 - gl.minimum(sh, 3)
        wa = lookup((sa.to(gl.uint32) & 0x780) | copy4)
        wb = lookup((sb.to(gl.uint32) & 0x780) | copy4)
        pair = (wa & 0xFFFF) | (wb & -65536)
    else:
        idx = ((v >> sh) & ((1 << PB) - 1)).to(gl.uint32)
        pair = lookup((idx * (COPIES * 4)) | _opaque(copy4))  # [16, 4, NP] int32, key table at byte 0
    x = _expand_pairs(pair)  # [16 t, 4 r, NP (kt, hf), 2 e]
    x = gl.reshape(x, [TILE, 4, D // 16, 2, 2])  # t, r, kt, hf, e
    x = gl.permute(x, [0, 2, 3, 1, 4])  # t, kt, hf, r, e
    x = gl.reshape(x, [TILE, D])
    return gl.convert_layout(x, OPA, assert_trivial=True)


@gluon.jit
def value_operand(a0, a1, b0, b1, kprmt, V_CODES: gl.constexpr, VB: gl.constexpr, D: gl.constexpr,
                   COPIES: gl.constexpr, V_TABLE: gl.constexpr, OPA: gl.constexpr, VP3: gl.constexpr):
    """The tile's value centroids as the A operand [D, 16 tokens] from its words (module docstring);
    the value table at byte V_TABLE of shared memory, COPIES copies of each entry; COPIES 0: no table,
    byte permutes (_prmt_value_pairs)."""
    if COPIES == 0:
        gl.static_assert(VB == 4 and V_CODES % 4 == 0)  # a run of 16 codes: two whole words
        x = _expand_pairs(_prmt_value_pairs(a0, a1, b0, b1, kprmt, VP3))  # tp, g, j, e
        x = gl.permute(x, [2, 1, 0, 3])  # j, g, tp, e
        return gl.convert_layout(gl.reshape(x, [D, TILE]), OPA, assert_trivial=True)
    VP: gl.constexpr = gl.SliceLayout(2, VP3)
    tp = gl.arange(0, TILE // 2, layout=gl.SliceLayout(1, VP))
    g = gl.arange(0, 8, layout=gl.SliceLayout(0, VP))
    # lane % COPIES, in bytes, plus the value table's offset
    copy4 = ((((tp % 4)[:, None] + 4 * g[None, :]) % COPIES) * 4 + V_TABLE).to(gl.uint32)[:, :, None]
    sh = ((V_CODES * 8 + g * (16 * VB)) % 32).to(gl.uint64)[None, :]
    a = (_u64(a0) | (_u64(a1) << 32)) >> sh
    b = (_u64(b0) | (_u64(b1) << 32)) >> sh
    j = gl.arange(0, 16, layout=gl.SliceLayout(0, gl.SliceLayout(0, VP3)))
    if _single_code_table(VB, COPIES):
        # 4-bit values on the single-code table (AttnConfig.mma_value_table = "single"): code a_j's word gives
        # the low half, b_j's the high half (the word pair[a_j | b_j << 4]); byte address 128 code + copy4,
        # each code shifted to bit 7 by per-register constant shifts (one funnel shift and one LOP3 an address)
        copy4 = _opaque(copy4)
        if V_CODES % 4 == 0:
            # the run starts at a word (sh = 0): codes 0..7 in the first word, 8..15 in the second, so 32-bit
            # shifts of the word itself (half the registers of the 64-bit run)
            hi = gl.expand_dims(gl.expand_dims(j >= 8, 0), 0)
            sj = gl.expand_dims(gl.expand_dims(((j % 8) * VB).to(gl.uint32), 0), 0)
            xa = gl.where(hi, a1.to(gl.uint32, bitcast=True)[:, :, None], a0.to(gl.uint32, bitcast=True)[:, :, None])
            xb = gl.where(hi, b1.to(gl.uint32, bitcast=True)[:, :, None], b0.to(gl.uint32, bitcast=True)[:, :, None])
        else:
            sj = gl.expand_dims(gl.expand_dims((j * VB).to(gl.uint64), 0), 0)
            xa = a[:, :, None]
            xb = b[:, :, None]
        sa = (xa >> gl.maximum(sj, 7) - 7) << 7 - gl.minimum(sj, 7)
        sb = (xb >> gl.maximum(sj, 7) - 7) << 7 - gl.minimum(sj, 7)
        wa = lookup((sa.to(gl.uint32) & 0x780) | copy4)
        wb = lookup((sb.to(gl.uint32) & 0x780) | copy4)
        pair = (wa & 0xFFFF) | (wb & -65536)  # [8 tp, 8 g, 16 j]
    else:
        # Pair index of code j = a_j | b_j << VB: even j from E, odd j from O, field k at bit 2 VB k
        # (a bit-select per word instead of shifts and masks per pair).
        HALF: gl.constexpr = _run_mask(2 * VB, 8)
        bs = b << VB
        e = (a & HALF) | (bs ^ (bs & HALF))
        o = ((a >> VB) & HALF) | (b ^ (b & HALF))
        sel = gl.expand_dims(gl.expand_dims(j % 2, 0), 0)
        s = gl.expand_dims(gl.expand_dims((j // 2 * (2 * VB)).to(gl.uint64), 0), 0)
        eo = gl.where(sel == 0, e[:, :, None], o[:, :, None])
        idx = ((eo >> s) & ((1 << (2 * VB)) - 1)).to(gl.uint32)
        pair = lookup((idx * (COPIES * 4)) | _opaque(copy4))  # [8 tp, 8 g, 16 j]
    x = _expand_pairs(pair)  # tp, g, j, e
    x = gl.permute(x, [2, 1, 0, 3])  # j, g, tp, e
    x = gl.reshape(x, [D, TILE])
    return gl.convert_layout(x, OPA, assert_trivial=True)

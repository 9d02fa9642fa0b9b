"""decode_mma: decode attention over the packed cache with the codes decoded straight into
``mma.sync`` operand registers (Gluon, sm_80+; the fast path on Hopper).

What one program computes
-------------------------
One (sequence b, KV head h, split sp): the G query heads of the GQA group against the tokens
[sp*chunk, (sp+1)*chunk) of the sequence, streamed in tiles of 16 tokens by one warp, one
online-softmax step a tile (_attend_tile) or, with STEP_TILES = 2 (AttnConfig.mma_step_tiles), a
step per two tiles (_attend_pair: one cross-lane reduction per 32 tokens, per-lane denominators).
It writes the same partial state as ``attn_core._split_kernel`` (m, l, unnormalised rotated value
accumulator); ``merge.merge_splits`` merges the splits and rotates back.
Grid: (num_seqs, num_kv_heads, num_splits), one warp per program.

Shared memory: the key and value tables the layout has (decode_mma_operands; none where keys and values are
decoded by byte permutes), then a ring of STAGES tiles (MMA_RING_BYTES).  A tile's TILE slots of one KV head are
one contiguous, 16-byte aligned run of the cache; cp.async copies it, coalesced, STAGES - 1 tiles ahead, and the
lanes read their words from the ring with ld.shared in the operand pattern (one barrier per tile).
The tile loop (_tile_step / _pair_step) carries the ring stage and wraps it instead of a signed remainder a use,
copies into a runtime row of the ring instead of a warp-uniform branch a stage, takes a page's offset as one
32 x 32 -> 64-bit multiply, runs the tiles whole inside the split without the token masks (one-tile loop; the
last tile keeps them) and rescales only in a step where the running max or the value scale moved (two-tile
loop).  This "lean" loop replaced a plainer one (one branch a ring stage, the rescale test on the factor): the
same bits in the GPU tests (results/2026-12-05-h100-s20/call1-tests), 1-10 % faster at every shape and preset of
the H100 run results/2026-12-05-h100-s20/call15-kernels.

How the codes become MMA operands (which lane holds which codes, the pair tables and the
byte permutes) is decode_mma_operands.py's docstring; the ring's copies, decode_mma_ring.py's.

Numerics: as the split kernel's fp16 path.  q' is scaled by 1/max|q'| per head; scores are
fp32 = qsc * ||k|| * <q'16, c16>; softmax in fp32 (base 2); P^T is multiplied by ||v|| / s, s the
running maximum of the finite value norms seen, so that it stays in fp16 range, and the fp32
accumulator is rescaled when s grows.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2

from turboquant import format as tqf

from .attn_core import acc_width
from .decode_mma_operands import (
    TILE,
    TILE_TOKENS,
    key_operand,
    key_word_offsets,
    key_words,
    key_words3,
    lookup,
    value_operand,
    value_word_offsets,
)
from .decode_mma_ring import (
    barrier,
    copy_first_tiles,
    copy_tile_to_row,
    page_source_wide,
    tile_page,
)
from .device import REG_SUB_PARTITIONS as SCHEDULERS  # a warp scheduler each: a one-warp program runs on one
from .merge import merge_splits
from .params import KernelParams, next_pow2
from .pdl import launch_dependents as pdl_launch_dependents
from .pdl import launch_options
from .pdl import wait as pdl_wait
from .query import query_layout

LOG2E = gl.constexpr(1.4426950408889634)
TABLE_WORDS = gl.constexpr(1024)  # shared-memory words per pair table (entries x copies)
TABLE_BYTES = 2 * 4 * TABLE_WORDS.value  # key and value tables
# The value table's kind (AttnConfig.mma_value_table; "auto": resolve_value_table): "pair" (the layouts above), "wide"
# (k4v3: the 3-bit values' pair table with 32 copies, 8 KB, and the 4-bit keys' single-code table, 2 KB, in
# 10 KB, then a ring of three 2 KB tiles: one 16 KB allocation, as the default) or "single" (tq4: keys and
# values on one single-code table of their shared 4-bit codebook, 16 entries x 32 copies, 2 KB, in an
# allocation of its own after the 8 KB ring: 10 KB a program instead of 16)
VALUE_TABLES = ("auto", "pair", "wide", "single", "prmt")
WIDE_TABLE_WORDS = gl.constexpr(2048 + 512)
WIDE_RING_BYTES = 6144
# "wide" beside keys by byte permutes (mma_key_table "prmt"): no key table, so the value table's 8 KB and a ring of
# RING_BYTES (four tiles: two a softmax step) make the 16 KB
WIDE_PRMT_TABLE_WORDS = gl.constexpr(2048)
SINGLE_TABLE_WORDS = gl.constexpr(512)
# "single"'s register cap where "auto" picks it (resolve_value_table): 144 (8 bytes of stack, none at 152; 12
# one-warp programs an SM by registers, as at 152: device.resident_blocks) timed at or above 152 at every shape;
# at 128 it spills
SINGLE_MAXNREG = 144
# the register cap where "auto" gives 4-bit keys byte permutes (resolve_key_table, resolve_value_table): 152, timed
# on an H100 (results/2026-12-05-h100-s18/call3-decode-prmt) at or within 1 % of 128 at four shapes for k4v3 and tq4
# (k4v3 1 x 128k 83.8 us against 93.8 at 128)
PRMT_MAXNREG = 152
# the register cap of the pair tables' layout where the cap is the default MAXNREG (tq3; resolve_maxnreg): 152,
# timed on an H100 (results/2026-12-05-h100-s19/call14-decode, mma@r152l1) against 128: -4 to -10 % at 8 x 32k,
# 1 x 128k, 64 x 1k and 256 x 6k, +0.9 % at 32 x 32k
LEAN_MAXNREG = 152
RING_BYTES = 8192  # the tile ring: 4 stages of up to 2 KB (tq3, k4v3), 2 of up to 4 KB (tq4)
# Shared memory is one allocation (tables + ring) whose size must be a power of two (a Triton layout
# rule: another size aborts the compiler), or, for a ring smaller than the tables, two (the tables,
# then the ring), each a power of two: Triton 3.6's allocator places the larger first (ties in program
# order), so the tables still start at byte 0 and the ring at TABLE_BYTES, where the raw ld.shared
# addressing expects them (checked once per configuration before its first use: _verify_ring_placement). 4 KB holds two
# 2 KB tiles (tq3, k4v3): 12 KB a program, 17 an SM by shared memory instead of 13 (16 at the
# 128-register cap), for one tile a softmax step and one tile in flight. The ring sizes allowed:
MMA_RING_BYTES = (4096,) + tuple((1 << k) - TABLE_BYTES for k in (14, 15, 16))
# the ring of mma_value_table "prmt" (tq4's keys and values by byte permutes, no table: the ring is the kernel's only
# shared memory, a power of two): the default 8 KB (two of tq4's 4 KB tiles, one a softmax step) or 16 KB (four: two
# a step, with 7 % fewer instructions a tile at a 168-register cap, where 12 one-warp programs an SM still fit
# (device.resident_blocks); compiled for sm_90 with Triton 3.6, not yet timed: docs/kernel-notes.md, twenty-fifth
# session)
PRMT_RING_BYTES = (RING_BYTES, 2 * RING_BYTES)
# the key table's kind (AttnConfig.mma_key_table); "auto" (resolve_key_table): "prmt" for 4-bit keys of a symmetric
# codebook where the value table and the ring are the defaults, else "single" for 4-bit keys (then the values keep a
# table of their own; the H200 timed it 1.4-3.7 % faster than "pair" for k4v3 and 0.5-3.0 % for tq4 at every shape,
# results/2026-12-04-h200-s12/call1-kernels), else "pair".
# "prmt": 4-bit keys of a symmetric codebook decoded by byte permutes of the magnitudes' fp16 bytes
# (decode_mma_operands._prmt_key_pairs: no key table read, 18 instructions for 8 codes against 28; the same values
# as "single", whose shared-memory layout it keeps beside an explicit value table; "auto" values beside it: k4v3's
# wide table with a four-tile ring, tq4's values by byte permutes too, no table)
KEY_TABLES = ("auto", "pair", "single", "prmt")
STEP_TILES = (0, 1, 2)  # tiles per online-softmax step (AttnConfig.mma_step_tiles; 0: 2 where the ring allows)
# register cap per thread (AttnConfig.mma_maxnreg's default): 128 fits without spills with the shared
# pair table and lifts the register limit from 12 to 16 one-warp programs an SM; shared memory (16 KB a
# program) holds it at 13 (0: the compiler's choice, ~155)
MAXNREG = 128



@gluon.jit
def _mul_rn(a, b):
    """a * b rounded to float32 (PTX mul.rn: never fused into an FMA with a later add)."""
    return gl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=gl.float32, is_pure=True,
                                     pack=1)


@gluon.jit
def _scale_ratio(vs, vs_new, vs_use):
    """vs / vs_use, the accumulator's factor for the value scale's move from vs to vs_new (vs_use: vs_new, 1 where
    it is 0), exactly 1 where it did not move: div.full.f32 (a reciprocal, then a product) does not always give 1
    for x / x, and _attend_tile's test of the factor against 1 would then shrink the accumulator, not the
    denominator, by an ulp (what made the two-tile and one-tile loops differ by a bf16 ulp, nineteenth session)."""
    return gl.where(vs_new == vs, 1.0, gl.where(vs > 0, vs, 1.0) / vs_use)


@gluon.jit
def _attend_tile(sb, ok, q_op, qsc, sm_scale_log2, m_i, l_i, acc, vs, koff, kprmt, voff, kn_off, vn_off,
                 KB: gl.constexpr, VB: gl.constexpr, D: gl.constexpr, SW: gl.constexpr, V_CODES: gl.constexpr,
                 K_COPIES: gl.constexpr, K_TABLE: gl.constexpr, V_COPIES: gl.constexpr, V_TABLE: gl.constexpr,
                 OPA: gl.constexpr, OPB: gl.constexpr, MMA: gl.constexpr, KW3: gl.constexpr, VP3: gl.constexpr,
                 MASKED: gl.constexpr):
    """One tile of 16 tokens (ring stage at byte address sb; ok: which of its tokens are in the split)
    folded into the running state: max m_i and sum l_i (base 2, per head), the rotated value
    accumulator acc [D, 8] in units of the running value scale vs.  Returns (m_i, l_i, acc, vs).
    MASKED False: every token of the tile is in the split (ok is not read; the same bits as ok all true).
    (The rescale stays a test on the factor here: _attend_pair's form made this loop longer,
    docs/kernel-notes.md, seventeenth session.)"""
    kw0, kw1, kw2, kw3 = key_words(koff + sb, KB, D)
    kn = lookup(kn_off + sb).to(gl.float32, bitcast=True)
    vn = lookup(vn_off + sb).to(gl.float32, bitcast=True)
    va0 = lookup(voff + sb)
    va1 = lookup(voff + sb + 4)
    vb0 = lookup(voff + sb + SW * 4)
    vb1 = lookup(voff + sb + (SW * 4 + 4))

    # scores S^T [16 tokens, 8 heads] and the online softmax over the tile's tokens
    a_k = key_operand(kw0, kw1, kw2, kw3, kprmt, KB, D, K_COPIES, K_TABLE, OPA, KW3)
    s = mma_v2(a_k, q_op, gl.zeros([TILE, 8], gl.float32, MMA))
    if MASKED:
        s = s * (kn * sm_scale_log2)[:, None] * qsc[None, :]
        s = gl.where(ok[:, None], s, float("-inf"))
    else:  # the last product rounded as the masked path's (no select after it: the compiler would fuse it)
        s = _mul_rn(s * (kn * sm_scale_log2)[:, None], qsc[None, :])
    m_new = gl.maximum(m_i, gl.max(s, axis=0))
    m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2(m_i - m_use)
    p = gl.exp2(s - m_use[None, :])
    l_i = l_i * alpha + gl.sum(p, axis=0)

    # values: P^T scaled by ||v|| / s (fp16 range), O^T += V'^T P^T
    vabs = gl.abs(vn)
    if MASKED:
        vs_new = gl.maximum(vs, gl.max(gl.where(ok & (vabs < float("inf")), vabs, 0.0), axis=0))
    else:
        vs_new = gl.maximum(vs, gl.max(gl.where(vabs < float("inf"), vabs, 0.0), axis=0))
    vs_use = gl.where(vs_new > 0, vs_new, 1.0)
    w = p * (vn / vs_use)[:, None]
    if MASKED:
        w = gl.where(ok[:, None], w, 0.0)
    p_op = gl.convert_layout(w.to(gl.float16), OPB)
    a_v = value_operand(va0, va1, vb0, vb1, kprmt, V_CODES, VB, D, V_COPIES, V_TABLE, OPA, VP3)
    # rescale the accumulator only when the running max or the value scale moved (rare after the
    # first tiles); the factor is <= 1 (or NaN, which must reach the accumulator)
    factor = alpha * _scale_ratio(vs, vs_new, vs_use)
    if gl.max(gl.where(factor == 1.0, 0, 1), axis=0) > 0:
        acc = acc * factor[None, :]
    acc = mma_v2(a_v, p_op, acc)
    return m_new, l_i, acc, vs_new


@gluon.jit
def _tile_scores(sb, ok, q_op, qsc, sm_scale_log2, koff, kprmt, kn_off, KB: gl.constexpr, D: gl.constexpr,
                 K_COPIES: gl.constexpr, K_TABLE: gl.constexpr, OPA: gl.constexpr, MMA: gl.constexpr,
                 KW3: gl.constexpr):
    """The scores S^T [16 tokens, 8 heads] of the tile in ring stage sb (base 2, scaled; tokens not
    in the split: -inf)."""
    kw0, kw1, kw2, kw3 = key_words(koff + sb, KB, D)
    kn = lookup(kn_off + sb).to(gl.float32, bitcast=True)
    a_k = key_operand(kw0, kw1, kw2, kw3, kprmt, KB, D, K_COPIES, K_TABLE, OPA, KW3)
    s = mma_v2(a_k, q_op, gl.zeros([TILE, 8], gl.float32, MMA))
    s = s * (kn * sm_scale_log2)[:, None] * qsc[None, :]
    return gl.where(ok[:, None], s, float("-inf"))


@gluon.jit
def _tile_value_operand(sb, voff, kprmt, V_CODES: gl.constexpr, VB: gl.constexpr, D: gl.constexpr, SW: gl.constexpr,
                        V_COPIES: gl.constexpr, V_TABLE: gl.constexpr, OPA: gl.constexpr, VP3: gl.constexpr):
    """The value A operand [D, 16 tokens] of the tile in ring stage sb."""
    va0 = lookup(voff + sb)
    va1 = lookup(voff + sb + 4)
    vb0 = lookup(voff + sb + SW * 4)
    vb1 = lookup(voff + sb + (SW * 4 + 4))
    return value_operand(va0, va1, vb0, vb1, kprmt, V_CODES, VB, D, V_COPIES, V_TABLE, OPA, VP3)


@gluon.jit
def _attend_pair(sb0, sb1, ok0, ok1, q_op, qsc, sm_scale_log2, m_i, l_t, acc, vs, inv, koff, kprmt, voff, kn_off,
                 vn_off, KB: gl.constexpr, VB: gl.constexpr, D: gl.constexpr, SW: gl.constexpr, V_CODES: gl.constexpr,
                 K_COPIES: gl.constexpr, K_TABLE: gl.constexpr, V_COPIES: gl.constexpr, V_TABLE: gl.constexpr,
                 OPA: gl.constexpr, OPB: gl.constexpr, MMA: gl.constexpr, KW3: gl.constexpr, VP3: gl.constexpr):
    """Two tiles of 16 tokens (ring stages sb0, sb1) folded into the running state with one
    online-softmax update (STEP_TILES = 2): the cross-lane reductions (score max, value-norm max, the
    rescale test) run once per 32 tokens, and the softmax denominator stays per lane, l_t [16, 8] in the
    scores' layout (summed over tokens after the loop).  The same sums as two _attend_tile steps, rounded
    differently.  The reciprocal of the value scale (inv, carried: returned with the state), alpha and the
    accumulator's factor are computed only in a step where the running max or the value scale moved
    (elsewhere inv is the carried one, alpha and the factor exactly 1: the bits of computing them).  Returns
    (m, l_t, acc, vs, inv)."""
    s0 = _tile_scores(sb0, ok0, q_op, qsc, sm_scale_log2, koff, kprmt, kn_off, KB, D, K_COPIES, K_TABLE, OPA, MMA, KW3)
    s1 = _tile_scores(sb1, ok1, q_op, qsc, sm_scale_log2, koff, kprmt, kn_off, KB, D, K_COPIES, K_TABLE, OPA, MMA, KW3)
    vn0 = lookup(vn_off + sb0).to(gl.float32, bitcast=True)
    vn1 = lookup(vn_off + sb1).to(gl.float32, bitcast=True)
    m_new = gl.maximum(m_i, gl.max(gl.maximum(s0, s1), axis=0))
    m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
    p0 = gl.exp2(s0 - m_use[None, :])
    p1 = gl.exp2(s1 - m_use[None, :])

    # values: P^T scaled by ||v|| / s (fp16 range), O^T += V'^T P^T, both tiles
    f0 = gl.where(ok0 & (gl.abs(vn0) < float("inf")), gl.abs(vn0), 0.0)
    f1 = gl.where(ok1 & (gl.abs(vn1) < float("inf")), gl.abs(vn1), 0.0)
    vs_new = gl.maximum(vs, gl.max(gl.maximum(f0, f1), axis=0))
    vs_use = gl.where(vs_new > 0, vs_new, 1.0)
    if gl.max(gl.where((m_new != m_i) | (vs_new != vs), 1, 0), axis=0) > 0:  # NaN != NaN: moved
        alpha = gl.exp2(m_i - m_use)
        l_t = l_t * alpha[None, :] + (p0 + p1)
        inv = 1.0 / vs_use
        acc = acc * (alpha * _scale_ratio(vs, vs_new, vs_use))[None, :]  # <= 1 (or NaN, which must reach acc)
    else:
        l_t = l_t + (p0 + p1)  # alpha = 1
    w0 = gl.where(ok0[:, None], p0 * (vn0 * inv)[:, None], 0.0)
    w1 = gl.where(ok1[:, None], p1 * (vn1 * inv)[:, None], 0.0)
    a_v = _tile_value_operand(sb0, voff, kprmt, V_CODES, VB, D, SW, V_COPIES, V_TABLE, OPA, VP3)
    acc = mma_v2(a_v, gl.convert_layout(w0.to(gl.float16), OPB), acc)
    a_v = _tile_value_operand(sb1, voff, kprmt, V_CODES, VB, D, SW, V_COPIES, V_TABLE, OPA, VP3)
    acc = mma_v2(a_v, gl.convert_layout(w1.to(gl.float16), OPB), acc)
    return m_new, l_t, acc, vs_new, inv


@gluon.jit
def _tile_step(ring, RW0: gl.constexpr, RING0: gl.constexpr, t0, s, pg, end, q_op, qsc, sm_scale_log2, m_i, l_i, acc,
               vs, koff, kprmt, voff, kn_off, vn_off, bt_row, head_base, block_size, stride_cb, stride_cs, w_copy,
               t_row, KB: gl.constexpr, VB: gl.constexpr, D: gl.constexpr, SW: gl.constexpr, V_CODES: gl.constexpr,
               K_COPIES: gl.constexpr, K_TABLE: gl.constexpr, V_COPIES: gl.constexpr, V_TABLE: gl.constexpr,
               STAGES: gl.constexpr, STAGE_WORDS: gl.constexpr, OPA: gl.constexpr, OPB: gl.constexpr,
               MMA: gl.constexpr, KW3: gl.constexpr, VP3: gl.constexpr, PAGE_AHEAD: gl.constexpr,
               MASKED: gl.constexpr):
    """One step of the one-tile loop (as _pair_step): the tile at t0 in stage s, the copy
    of tile t0 + (STAGES - 1) TILE into the stage before it.  Returns the state and (s, pg) for the next step."""
    async_copy.wait_group(STAGES - 2)  # tile t0 has landed (this lane's copies) ...
    barrier()  # ... and every lane's; every lane is done reading the previous stage
    ta = t0 + (STAGES - 1) * TILE  # the tile this step copies
    if PAGE_AHEAD:  # its page loaded a step earlier
        src = page_source_wide(pg, ta, head_base, block_size, stride_cb, stride_cs)
        pg = tile_page(ta + TILE, end, bt_row, block_size)
    else:
        src = page_source_wide(tile_page(ta, end, bt_row, block_size), ta, head_base, block_size, stride_cb,
                                stride_cs)
    copy_tile_to_row(ring, RW0, gl.where(s >= 1, s - 1, STAGES - 1), ta, end, src, w_copy, SW, STAGE_WORDS)
    sb = (RING0 + s * (STAGE_WORDS * 4)).to(gl.uint32)  # stage s's byte address
    m_i, l_i, acc, vs = _attend_tile(sb, t_row < end - t0, q_op, qsc, sm_scale_log2, m_i, l_i, acc, vs, koff, kprmt,
                                     voff, kn_off, vn_off, KB, VB, D, SW, V_CODES, K_COPIES, K_TABLE, V_COPIES,
                                     V_TABLE, OPA, OPB, MMA, KW3, VP3, MASKED)
    return m_i, l_i, acc, vs, gl.where(s == STAGES - 1, 0, s + 1), pg


@gluon.jit
def _pair_step(ring, RW0: gl.constexpr, RING0: gl.constexpr, t0, s, pg0, pg1, end, q_op, qsc, sm_scale_log2, m_i, l_t,
               acc, vs, inv, koff, kprmt, voff, kn_off, vn_off, bt_row, head_base, block_size, stride_cb, stride_cs,
               w_copy, t_row,
               KB: gl.constexpr, VB: gl.constexpr, D: gl.constexpr, SW: gl.constexpr, V_CODES: gl.constexpr,
               K_COPIES: gl.constexpr, K_TABLE: gl.constexpr, V_COPIES: gl.constexpr, V_TABLE: gl.constexpr,
               STAGES: gl.constexpr, STAGE_WORDS: gl.constexpr, OPA: gl.constexpr, OPB: gl.constexpr,
               MMA: gl.constexpr, KW3: gl.constexpr, VP3: gl.constexpr, PAGE_AHEAD: gl.constexpr):
    """One step of _tiles_in_pairs's loop: the pair of tiles at t0 in stages s, s + 1, the
    copies of tiles t0 + (STAGES - 2) TILE and the next into stages c, c + 1 (the previous pair's).  The stage is
    carried and wrapped (a signed remainder is four uniform instructions a use) and the copies take it as a
    runtime row of the ring; _attend_pair's rescale only where something moved (inv carried).  Returns the state
    (with inv) and (s, pg0, pg1) for the next step."""
    async_copy.wait_group(STAGES - 4)  # tiles t0, t0 + TILE have landed (this lane's copies) ...
    barrier()  # ... and every lane's; every lane is done reading the previous pair's stages
    ta = t0 + (STAGES - 2) * TILE  # the two tiles this step copies: ta, ta + TILE
    c = gl.where(s >= 2, s - 2, s + (STAGES - 2))
    if PAGE_AHEAD:
        src0 = page_source_wide(pg0, ta, head_base, block_size, stride_cb, stride_cs)
        src1 = page_source_wide(pg1, ta + TILE, head_base, block_size, stride_cb, stride_cs)
        pg0 = tile_page(ta + 2 * TILE, end, bt_row, block_size)
        pg1 = tile_page(ta + 3 * TILE, end, bt_row, block_size)
        copy_tile_to_row(ring, RW0, c, ta, end, src0, w_copy, SW, STAGE_WORDS)
        copy_tile_to_row(ring, RW0, c + 1, ta + TILE, end, src1, w_copy, SW, STAGE_WORDS)
    else:
        for n in gl.static_range(2):
            tn = ta + n * TILE
            copy_tile_to_row(ring, RW0, c + n, tn, end,
                              page_source_wide(tile_page(tn, end, bt_row, block_size), tn, head_base, block_size,
                                                stride_cb, stride_cs), w_copy, SW,
                              STAGE_WORDS)
    sb0 = (RING0 + s * (STAGE_WORDS * 4)).to(gl.uint32)
    sb1 = sb0 + STAGE_WORDS * 4
    m_i, l_t, acc, vs, inv = _attend_pair(sb0, sb1, t_row < end - t0, t_row < end - t0 - TILE, q_op, qsc,
                                          sm_scale_log2, m_i, l_t, acc, vs, inv, koff, kprmt, voff, kn_off, vn_off, KB,
                                          VB, D, SW, V_CODES, K_COPIES, K_TABLE, V_COPIES, V_TABLE, OPA, OPB, MMA, KW3,
                                          VP3)
    return m_i, l_t, acc, vs, inv, gl.where(s == STAGES - 2, 0, s + 2), pg0, pg1


@gluon.jit
def _tiles_in_pairs(ring, RW0: gl.constexpr, RING0: gl.constexpr, start, end, q_op, qsc, sm_scale_log2, m_i, acc, vs,
                    koff, kprmt, voff, kn_off, vn_off, bt_row, head_base, block_size, stride_cb, stride_cs, w_copy,
                    t_row,
                    KB: gl.constexpr, VB: gl.constexpr, D: gl.constexpr, SW: gl.constexpr,
                    V_CODES: gl.constexpr, K_COPIES: gl.constexpr, K_TABLE: gl.constexpr, V_COPIES: gl.constexpr,
                    V_TABLE: gl.constexpr,
                    STAGES: gl.constexpr,
                    STAGE_WORDS: gl.constexpr, OPA: gl.constexpr, OPB: gl.constexpr, MMA: gl.constexpr,
                    KW3: gl.constexpr, VP3: gl.constexpr, PAGE_AHEAD: gl.constexpr):
    """The split's tiles [start, end) two at a time, one online-softmax step a pair (STEP_TILES = 2;
    STAGES >= 4 and even): the steps of _pair_step.  Pair (i, i + 1) sits in stages i % STAGES and
    (i + 1) % STAGES; tiles i + STAGES - 2 and i + STAGES - 1 are copied into the previous pair's stages once
    every lane is past it, so STAGES - 2 tiles are in flight while a pair is computed.  A pair's second tile
    past ``end`` is all masked (zero-filled words, scores -inf)."""
    copy_first_tiles(ring, RW0, STAGES - 2, start, end, bt_row, head_base, block_size, stride_cb, stride_cs, w_copy,
                      SW, STAGE_WORDS)
    l_t = gl.zeros([TILE, 8], gl.float32, MMA)
    s = start * 0  # the pair's first stage
    # PAGE_AHEAD: the pages of the tiles a step copies are loaded one step earlier (no block-table load in
    # the chain from the loop's top to its cp.async)
    if PAGE_AHEAD:
        pg0 = tile_page(start + (STAGES - 2) * TILE, end, bt_row, block_size)
        pg1 = tile_page(start + (STAGES - 1) * TILE, end, bt_row, block_size)
    else:
        pg0 = s
        pg1 = s
    # every pair with the masks: the whole pairs in a loop of their own (as _tile_step's) took ptxas to 948
    # instructions a step instead of 863 (two LOP3 a lookup instead of one: the lane's table offset
    # recomputed in each address), whatever the register cap
    inv = vs * 0.0 + 1.0  # 1 / the value scale in use (1 before any value norm)
    for t0 in range(start, end, 2 * TILE):
        m_i, l_t, acc, vs, inv, s, pg0, pg1 = _pair_step(
            ring, RW0, RING0, t0, s, pg0, pg1, end, q_op, qsc, sm_scale_log2, m_i, l_t, acc, vs, inv, koff, kprmt,
            voff, kn_off, vn_off, bt_row, head_base, block_size, stride_cb, stride_cs, w_copy, t_row, KB, VB, D,
            SW, V_CODES, K_COPIES, K_TABLE, V_COPIES, V_TABLE, STAGES, STAGE_WORDS, OPA, OPB, MMA, KW3, VP3,
            PAGE_AHEAD)
    async_copy.wait_group(0)
    return m_i, gl.sum(l_t, axis=0), acc, vs


@gluon.jit
def _load_query(qbuf_ptr, qrow0, G: gl.constexpr, DQ: gl.constexpr, D: gl.constexpr, OPB: gl.constexpr,
                MMA: gl.constexpr):
    """Q'^T [D, 8] as the B operand (fp16), coordinates permuted (module docstring), scaled per head, and the
    per-head scale qsc [8] in the accumulator's column layout: loaded straight in the operand layout, and once
    more in the accumulator layout for the scale, so no layout conversion (the kernel's only shared memory is
    its own allocation)."""
    kq = gl.arange(0, D, layout=gl.SliceLayout(1, OPB))
    colq = gl.arange(0, 8, layout=gl.SliceLayout(0, OPB))
    cq = 32 * ((kq >> 1) & 3) + 4 * (kq >> 4) + 2 * ((kq >> 3) & 1) + (kq & 1)
    q = gl.load(qbuf_ptr + (qrow0 + colq[None, :]) * DQ + cq[:, None], mask=(colq < G)[None, :], other=0.0)
    kc = gl.arange(0, D, layout=gl.SliceLayout(1, MMA))
    cols = gl.arange(0, 8, layout=gl.SliceLayout(0, MMA))
    qa = gl.load(qbuf_ptr + (qrow0 + cols[None, :]) * DQ + kc[:, None], mask=(cols < G)[None, :], other=0.0)
    qm = gl.max(gl.abs(qa), axis=0)
    qsc = gl.where(qm > 0, qm, 1.0)
    qm_op = gl.max(gl.abs(q), axis=0)  # qm again, in the operand's column layout
    q_op = (q * (1.0 / gl.where(qm_op > 0, qm_op, 1.0))[None, :]).to(gl.float16)
    return q_op, qsc


@gluon.jit(do_not_specialize=["num_q_heads", "num_splits"])
def _decode_mma_kernel(
    qbuf_ptr, cache_ptr, bt_ptr, stride_bt, seq_lens_ptr, part_acc_ptr, part_ml_ptr,
    stride_cb, stride_ch, stride_cs, kpair_ptr, vpair_ptr, kprmt_ptr, sm_scale_log2,
    block_size: gl.constexpr,  # a constexpr: each tile's page and offset by shifts, not a division (-4 % a loop)
    num_q_heads, num_splits,
    G: gl.constexpr, DQ: gl.constexpr, DACC: gl.constexpr, D: gl.constexpr,
    KB: gl.constexpr, K_NORM: gl.constexpr, K_CODES: gl.constexpr,
    VB: gl.constexpr, V_NORM: gl.constexpr, V_CODES: gl.constexpr,
    SW: gl.constexpr, STAGES: gl.constexpr, STAGE_WORDS: gl.constexpr, SHARED_TABLE: gl.constexpr,
    STEP_TILES: gl.constexpr, KEY_SINGLE: gl.constexpr, PAGE_AHEAD: gl.constexpr, VALUE_TABLE: gl.constexpr,
    KEY_PRMT: gl.constexpr, PDL: gl.constexpr,
):
    # Layouts (one warp).  MMA: m16n8 accumulators; OPA/OPB: its operands.  KW [16 t, 4 r]: key
    # words, lane (g, r) holds tokens g, g + 8 of segment r; VP [8 tp, 8 g]: value words, lane (g, r)
    # holds token pairs r, r + 4 of run g.  KW3/VP3 add the per-lane pair index in registers.
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    OPA: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    OPB: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)
    KW3: gl.constexpr = key_words3(D)
    VP3: gl.constexpr = gl.DistributedLinearLayout(
        reg_bases=[[4, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 4], [0, 0, 8]],
        lane_bases=[[1, 0, 0], [2, 0, 0], [0, 1, 0], [0, 2, 0], [0, 4, 0]], warp_bases=[], block_bases=[],
        shape=[8, 8, 16])
    ROW: gl.constexpr = gl.SliceLayout(1, MMA)  # per token of a tile
    COL: gl.constexpr = gl.SliceLayout(0, MMA)  # per query head

    b = gl.program_id(0)
    h = gl.program_id(1)
    sp = gl.program_id(2)
    seq_len = gl.load(seq_lens_ptr + b)
    chunk = gl.cdiv(gl.cdiv(seq_len, num_splits), TILE) * TILE
    start = sp * chunk
    end = gl.minimum(start + chunk, seq_len)
    qrow0 = (b * num_q_heads + h * G).to(gl.int64)
    cols = gl.arange(0, 8, layout=COL)

    if not PDL:  # (with PDL: after the tables, once the query rotation's launch has ended)
        q_op, qsc = _load_query(qbuf_ptr, qrow0, G, DQ, D, OPB, MMA)

    # Shared memory (int32 words): the pair tables (2 TABLE_WORDS words: the key table then the value
    # table, TABLE_WORDS each, or with SHARED_TABLE one table for both; every entry repeated so that
    # lanes spread over the banks), then a ring of STAGES tiles (TILE slots = TILE * SW words each,
    # STAGE_WORDS apart) filled by cp.async: one allocation, or two where the ring is smaller than the
    # tables (MMA_RING_BYTES; the tables at byte 0 either way, the ring at byte RING0).  VALUE_TABLE (1 "wide",
    # 2 "single", decode_mma.VALUE_TABLES) lays the tables out otherwise, below.  The tables are written a word
    # a lane, consecutive words by consecutive lanes (no bank conflict).
    FL: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
    WIDE_VALUES: gl.constexpr = VALUE_TABLE == 1
    SINGLE_VALUES: gl.constexpr = VALUE_TABLE == 2
    PRMT_VALUES: gl.constexpr = VALUE_TABLE == 3  # keys and values by byte permutes: no table at all
    # the tables' words
    TW: gl.constexpr = ((WIDE_PRMT_TABLE_WORDS if KEY_PRMT else WIDE_TABLE_WORDS) if WIDE_VALUES
                        else SINGLE_TABLE_WORDS if SINGLE_VALUES else 0 if PRMT_VALUES else 2 * TABLE_WORDS)
    if PRMT_VALUES:  # the ring alone, at byte 0
        smem = gl.allocate_shared_memory(gl.int32, [STAGES * STAGE_WORDS], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        ring = smem
        RW0: gl.constexpr = 0
    elif SINGLE_VALUES:
        # two allocations, the ring the larger: Triton places it first (byte 0; it is also first in program
        # order), the 2 KB table after it (checked before first use: _verify_ring_placement)
        ring = gl.allocate_shared_memory(gl.int32, [STAGES * STAGE_WORDS], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        smem = gl.allocate_shared_memory(gl.int32, [TW], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        RW0: gl.constexpr = 0
    elif STAGES * STAGE_WORDS < TW and not WIDE_VALUES:
        smem = gl.allocate_shared_memory(gl.int32, [TW], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        ring = gl.allocate_shared_memory(gl.int32, [STAGES * STAGE_WORDS], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        RW0: gl.constexpr = 0  # stage 0's first word in ``ring``
    else:
        smem = gl.allocate_shared_memory(gl.int32, [TW + STAGES * STAGE_WORDS], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        ring = smem
        RW0: gl.constexpr = TW
    # K_TABLE, V_TABLE: byte addresses of the key and value tables
    if PRMT_VALUES:
        gl.static_assert(KEY_PRMT)
        K_TABLE: gl.constexpr = 0
        K_COPIES: gl.constexpr = 0
        V_COPIES: gl.constexpr = 0  # 0: no value table read either
        V_TABLE: gl.constexpr = 0
    elif SHARED_TABLE:
        K_TABLE: gl.constexpr = 0
        K_COPIES: gl.constexpr = 2 * TABLE_WORDS // (1 << (2 * KB))
        V_COPIES: gl.constexpr = K_COPIES
        V_TABLE: gl.constexpr = 0
        e2 = gl.arange(0, 2 * TABLE_WORDS, layout=FL)
        smem.slice(0, 2 * TABLE_WORDS).store(gl.load(kpair_ptr + e2 // K_COPIES))
    elif WIDE_VALUES:
        # 3-bit values' pair table with 32 copies (every lane its own bank: conflict-free) at byte 0, then
        # the 4-bit keys' single-code table (16 entries x 32 copies) at byte 8,192 (above every value entry's
        # bits, so an OR places a key entry), then a 3-stage ring: 16 KB in all, as the default layout
        K_COPIES: gl.constexpr = 0 if KEY_PRMT else 32  # 0: no key table read
        V_COPIES: gl.constexpr = 32
        V_TABLE: gl.constexpr = 0
        VW: gl.constexpr = 32 * (1 << (2 * VB))  # the value table's words
        K_TABLE: gl.constexpr = VW * 4
        ev = gl.arange(0, VW, layout=FL)
        smem.slice(0, VW).store(gl.load(vpair_ptr + ev // 32))
        if not KEY_PRMT:  # (keys by byte permutes: no key table, the ring right after the values')
            ek = gl.arange(0, TW - VW, layout=FL)
            smem.slice(VW, TW - VW).store(gl.load(kpair_ptr + 17 * (ek // 32)))
    elif SINGLE_VALUES:
        # keys and values on one single-code table of their 4-bit codebook (word 32 e + lane = c[e] | c[e] << 16),
        # at byte STAGES * STAGE_WORDS * 4 (after the ring; above every entry's bits, so an OR places an entry)
        K_TABLE: gl.constexpr = STAGES * STAGE_WORDS * 4
        K_COPIES: gl.constexpr = 0 if KEY_PRMT else 32  # 0: no key table read
        V_COPIES: gl.constexpr = 32
        V_TABLE: gl.constexpr = K_TABLE
        e = gl.arange(0, TW, layout=FL)
        smem.store(gl.load(kpair_ptr + 17 * (e // 32)))
    elif KEY_SINGLE:
        # 4-bit keys, single-code table: word 32 e + lane = c[e] | c[e] << 16 = pair[e | e << 4]
        # (words 512..1023 repeat it, unread)
        K_TABLE: gl.constexpr = 0
        K_COPIES: gl.constexpr = 0 if KEY_PRMT else 32  # 0: no key table read
        V_COPIES: gl.constexpr = TABLE_WORDS // (1 << (2 * VB))
        V_TABLE: gl.constexpr = TABLE_WORDS * 4
        e = gl.arange(0, TABLE_WORDS, layout=FL)
        smem.slice(0, TABLE_WORDS).store(gl.load(kpair_ptr + 17 * ((e // 32) % 16)))
        smem.slice(TABLE_WORDS, TABLE_WORDS).store(gl.load(vpair_ptr + e // V_COPIES))
    else:
        K_TABLE: gl.constexpr = 0
        K_COPIES: gl.constexpr = TABLE_WORDS // (1 << (2 * KB))
        V_COPIES: gl.constexpr = TABLE_WORDS // (1 << (2 * VB))
        V_TABLE: gl.constexpr = TABLE_WORDS * 4
        e = gl.arange(0, TABLE_WORDS, layout=FL)
        smem.slice(0, TABLE_WORDS).store(gl.load(kpair_ptr + e // K_COPIES))
        smem.slice(TABLE_WORDS, TABLE_WORDS).store(gl.load(vpair_ptr + e // V_COPIES))
    RING0: gl.constexpr = 0 if SINGLE_VALUES or PRMT_VALUES else TW * 4  # byte address of stage 0
    if KEY_PRMT:  # mma_key_table "prmt" (the single-code layout, its key table unread; K_COPIES 0): byte permutes
        kprmt = (gl.load(kprmt_ptr).to(gl.uint32, bitcast=True), gl.load(kprmt_ptr + 1).to(gl.uint32, bitcast=True),
                 gl.load(kprmt_ptr + 2).to(gl.uint32, bitcast=True), gl.load(kprmt_ptr + 3).to(gl.uint32, bitcast=True))
    else:
        kprmt = (0, 0, 0, 0)

    if PDL:  # programmatic dependent launch (AttnConfig.mma_pdl): the tables built while the query rotation ran
        pdl_wait()
        q_op, qsc = _load_query(qbuf_ptr, qrow0, G, DQ, D, OPB, MMA)
        pdl_launch_dependents()  # the merge's programs may start while this launch's last ones run

    m_i = gl.full([8], float("-inf"), gl.float32, COL)
    l_i = gl.zeros([8], gl.float32, COL)
    vs = 0.0  # running value scale s (largest finite value norm seen)
    acc = gl.zeros([D, 8], gl.float32, MMA)
    t_row = gl.arange(0, TILE, layout=ROW)
    head_base = cache_ptr + h.to(gl.int64) * stride_ch
    bt_row = bt_ptr + b.to(gl.int64) * stride_bt
    # cp.async vectors: 16 bytes (a tile's contiguous words)
    CL: gl.constexpr = gl.BlockedLayout([4], [32], [1], [0])
    w_copy = gl.arange(0, STAGE_WORDS, layout=CL)
    # ring offsets: slots SW words apart in a stage
    koff = key_word_offsets(SW, K_CODES, KB, D, KW3)
    voff = value_word_offsets(SW, V_CODES, VB, VP3)
    kn_off = (t_row * (SW * 4) + K_NORM).to(gl.uint32)
    vn_off = (t_row * (SW * 4) + V_NORM).to(gl.uint32)

    if STEP_TILES == 1:  # one online-softmax step a tile
        # Pipeline: tile i is copied (cp.async, 16 B per lane and vector, coalesced) into stage i % STAGES
        # STAGES - 1 tiles ahead of its use; masked words (tokens past the split) are zero-filled.
        copy_first_tiles(ring, RW0, STAGES - 1, start, end, bt_row, head_base, block_size, stride_cb, stride_cs,
                          w_copy, SW, STAGE_WORDS)
        # _tile_step: the stage carried, the tiles whole inside the split without masks, then the last
        s = start * 0
        pg = tile_page(start + (STAGES - 1) * TILE, end, bt_row, block_size) if PAGE_AHEAD else s
        t_whole = start + gl.maximum(end - start, 0) // TILE * TILE  # tiles before it: whole inside the split
        for masked in gl.static_range(2):  # the whole tiles without masks, then the last (at most one) with them
            for t0 in range(t_whole if masked else start, end if masked else t_whole, TILE):
                m_i, l_i, acc, vs, s, pg = _tile_step(
                    ring, RW0, RING0, t0, s, pg, end, q_op, qsc, sm_scale_log2, m_i, l_i, acc, vs, koff, kprmt,
                    voff, kn_off, vn_off, bt_row, head_base, block_size, stride_cb, stride_cs, w_copy, t_row, KB,
                    VB, D, SW, V_CODES, K_COPIES, K_TABLE, V_COPIES, V_TABLE, STAGES, STAGE_WORDS, OPA, OPB, MMA,
                    KW3, VP3, PAGE_AHEAD, masked == 1)
        async_copy.wait_group(0)
    else:  # two tiles a step
        m_i, l_i, acc, vs = _tiles_in_pairs(ring, RW0, RING0, start, end, q_op, qsc, sm_scale_log2, m_i, acc, vs, koff,
                                            kprmt, voff, kn_off, vn_off, bt_row, head_base, block_size, stride_cb,
                                            stride_cs, w_copy, t_row, KB, VB, D, SW, V_CODES, K_COPIES, K_TABLE,
                                            V_COPIES, V_TABLE, STAGES, STAGE_WORDS, OPA, OPB, MMA, KW3, VP3,
                                            PAGE_AHEAD)

    # partial state -> part_ml [rows, S, 2] (m in natural-log units), part_acc [rows, S, DACC]
    # (accumulator row n is slot value coordinate 16 (n % 8) + n // 8)
    prow = (qrow0 + cols) * num_splits + sp
    hm = cols < G
    gl.store(part_ml_ptr + prow * 2, m_i * (1.0 / LOG2E), mask=hm)
    gl.store(part_ml_ptr + prow * 2 + 1, l_i, mask=hm)
    n = gl.arange(0, D, layout=gl.SliceLayout(1, MMA))
    pos = 16 * (n % 8) + n // 8
    gl.store(part_acc_ptr + prow[None, :] * DACC + pos[:, None], acc * gl.where(vs > 0, vs, 1.0), mask=hm[None, :])


MMA_BITS = (3, 4)  # key / value code widths the operand builders cover
MMA_HEAD_SIZE = 128
MMA_MAX_GROUP = 8  # query heads per KV head: the MMA's N
NO_CUDA = "needs a CUDA device (Gluon kernels do not run in the interpreter)"


SPLIT_RULES = ("fill", "waves", "rounds")  # AttnConfig.mma_split_rule
# "rounds": a program's fixed cost in tiles (prologue, epilogue, its share of the merge), fitted to the H100's
# split-count sweep (results/2026-12-06-h100-s23/call2-kernels; docs/kernel-notes.md, twenty-third session)
ROUND_FIXED_TILES = 5
# "rounds": the issue rate of a scheduler running 1 or 2 programs (its last, partial round) against its full 3,
# from the H100's split-count sweep of the twenty-fifth session (results/2026-12-06-h100-s25/call1-kernels, tq3):
# a tile took 1.30x as long on schedulers running one program (8 x 32k, 2 splits) as on schedulers running three
# (32 x 32k, 6 splits), 1.11x on schedulers running two (8 x 32k, 12 splits)
ROUND_PARTIAL_EFFICIENCY = (0.77, 0.90)
# "rounds": the most tiles a program of a candidate split count reads (4,096 tokens), where some count within the
# cap reads no more: at 32 x 32k one round of 342-tile programs (6 splits) was 1.3-3.7 % slower than two or three
# rounds (12 or 18 splits) for k4v3 and tq4 on the H200, in three runs (results/2026-12-06-h200-s24/call8-kernels,
# results/2026-12-06-h200-s25/call3-kernels and call9-kernels), where the model has them within 3 %. Not explained
# by the model; a guess: in a single round the slowest of 1,536 programs ends the launch
ROUND_MAX_TILES = 256


def ring_stages(params: KernelParams, ring_bytes: int) -> tuple[int, int]:
    """(words a ring stage, stages) of a ring of ring_bytes: a stage holds one tile of the preset's slots,
    rounded up to a power of two of words (its cp.async vectors)."""
    stage_words = next_pow2(TILE_TOKENS * (params.slot_bytes // 4))
    return stage_words, ring_bytes // (4 * stage_words)


def mma_shared_bytes(params: KernelParams, ring_bytes: int, value_table: str = "pair", key_table: str = "auto") -> int:
    """The mma kernel's shared memory in bytes: its tables (VALUE_TABLES: "wide" WIDE_TABLE_WORDS, "single"
    SINGLE_TABLE_WORDS) and its tile ring, in one allocation or two (MMA_RING_BYTES; decode_attention_mma
    checks the compiled kernel against it); value_table as resolve_value_table gives it, not "auto"."""
    stage_words, stages = ring_stages(params, ring_bytes)
    wide = (WIDE_PRMT_TABLE_WORDS if key_table == "prmt" else WIDE_TABLE_WORDS).value
    tables = {"wide": 4 * wide, "single": 4 * SINGLE_TABLE_WORDS.value, "prmt": 0}.get(value_table, TABLE_BYTES)
    return tables + 4 * stages * stage_words


def wide_ring_bytes(key_table: str) -> int:
    """The ring of mma_value_table "wide": WIDE_RING_BYTES beside the 4-bit keys' 2 KB single-code table (16 KB in
    all), RING_BYTES beside keys by byte permutes ("prmt": no key table; a 6 KB ring would leave 14 KB, not a power
    of two)."""
    return RING_BYTES if key_table == "prmt" else WIDE_RING_BYTES


def value_table_unsupported(params: KernelParams, value_table: str, ring_bytes: int, key_table: str,
                            asked_key: str | None = None) -> str | None:
    """Why AttnConfig.mma_value_table cannot serve this preset / ring / key table (resolved: resolve_key_table), or
    None; the reason names the key table as asked (asked_key, where given)."""
    m = params.meta
    shown = key_table if asked_key is None else asked_key
    if value_table == "wide":
        if (m["K0_BITS"], m["V0_BITS"]) != (4, 3) or key_table == "pair":
            return (f"it needs 4-bit keys on the single-code table and 3-bit values (k4v3), got {m['K0_BITS']}-bit "
                    f"keys, {m['V0_BITS']}-bit values, mma_key_table={shown!r}")
        if ring_bytes != wide_ring_bytes(key_table):
            return (f"its ring is {WIDE_RING_BYTES} bytes (three tiles; 16 KB with the tables), {RING_BYTES} beside "
                    f"mma_key_table 'prmt' (no key table; the allocation's size a power of two): "
                    f"mma_ring_bytes={ring_bytes}")
    if value_table == "single":
        if (m["K0_BITS"], m["V0_BITS"]) != (4, 4) or not m["KV_PAIR_SAME"] or key_table == "pair":
            return (f"it needs 4-bit keys and values of one codebook on the single-code table (tq4), got "
                    f"{m['K0_BITS']}-bit keys, {m['V0_BITS']}-bit values, mma_key_table={shown!r}")
        if ring_bytes != RING_BYTES:
            return f"its ring is the default {RING_BYTES} bytes (an allocation of its own): mma_ring_bytes={ring_bytes}"
    if value_table == "prmt":
        if (m["K0_BITS"], m["V0_BITS"]) != (4, 4) or not m["KV_PAIR_SAME"] or not m["K_PRMT"] or key_table != "prmt":
            return (f"it needs 4-bit keys and values of one symmetric codebook (tq4) with mma_key_table 'prmt', got "
                    f"{m['K0_BITS']}-bit keys, {m['V0_BITS']}-bit values, mma_key_table={shown!r}")
        if ring_bytes not in PRMT_RING_BYTES:
            return (f"its ring is the default {RING_BYTES} bytes or {PRMT_RING_BYTES[-1]} (the kernel's only shared "
                    f"memory, a power of two): mma_ring_bytes={ring_bytes}")
    return None


def resolve_value_table(params: KernelParams, value_table: str, ring_bytes: int, maxnreg: int, key_table: str,
                        step_tiles: int) -> tuple[str, int, int]:
    """(value table, ring bytes, register cap) of a launch (key_table resolved: resolve_key_table).  An explicit
    value table keeps the ring and cap it is given.  "auto" (AttnConfig.mma_value_table's default): beside keys by
    byte permutes ("prmt", what "auto" keys are for k4v3 and tq4), "wide" with its four-tile ring for k4v3 and
    "prmt" (no table) for tq4, each at a PRMT_MAXNREG cap where the cap is the default MAXNREG: on an H100 (the
    eighteenth session, results/2026-12-05-h100-s18/call3-decode-prmt, at 32 x 32k, 1 x 128k, 64 x 1k and 256 x 6k)
    k4v3 +5 to +16 % and tq4 +12 to +19 % against the single-code key table's layouts below.  Beside a key table,
    what the H200 timed fastest (results/2026-12-05-h200-s15/call14-decode): "wide" with its WIDE_RING_BYTES ring
    for k4v3, "single" for tq4 at a SINGLE_MAXNREG cap where the cap is the default MAXNREG, each where the launch
    leaves what it needs at the default (the ring at RING_BYTES, the key table not "pair", one tile a softmax step
    allowed; "single": a cap of MAXNREG, 0 or at least SINGLE_MAXNREG); "pair" elsewhere."""
    if value_table != "auto":
        return value_table, ring_bytes, maxnreg
    m = params.meta
    if ring_bytes != RING_BYTES or key_table == "pair":
        return "pair", ring_bytes, maxnreg
    prmt_cap = PRMT_MAXNREG if maxnreg == MAXNREG else maxnreg
    if (m["K0_BITS"], m["V0_BITS"]) == (4, 3) and key_table == "prmt":  # no key table: a four-tile ring
        return "wide", wide_ring_bytes(key_table), prmt_cap
    if (m["K0_BITS"], m["V0_BITS"]) == (4, 4) and m["KV_PAIR_SAME"] and key_table == "prmt":  # no table at all
        return "prmt", RING_BYTES, prmt_cap
    if (m["K0_BITS"], m["V0_BITS"]) == (4, 3) and step_tiles in (0, 1):
        return "wide", wide_ring_bytes(key_table), maxnreg
    if (m["K0_BITS"], m["V0_BITS"]) == (4, 4) and m["KV_PAIR_SAME"] \
            and (maxnreg in (MAXNREG, 0) or maxnreg >= SINGLE_MAXNREG):
        return "single", ring_bytes, SINGLE_MAXNREG if maxnreg == MAXNREG else maxnreg
    return "pair", ring_bytes, maxnreg


def whole_wave_splits(splits: int, rows: int, per_sm: int, sms: int, cap: int) -> int:
    """AttnConfig.mma_split_rule="waves": the split count whose rows x splits one-warp programs fill the
    nearest whole number of waves (per_sm programs an SM at once, sms SMs) instead of ``splits``'s
    rows x splits, which can leave a last, partial wave of short programs (at 1 x 128k: 8 rows x 256 splits =
    2,048 programs for 12 x 132 = 1,584 slots at 152 registers; device.resident_blocks). At most ``cap`` splits
    (then the whole waves below); at least one; unchanged while the programs fit one wave."""
    wave = per_sm * sms
    programs = rows * splits
    if programs <= wave or rows <= 0:
        return splits
    w = max(1, round(programs / wave))
    s = (w * wave) // rows
    if s > cap:
        s = (max(1, programs // wave) * wave) // rows
    return max(1, min(s, cap))


@functools.lru_cache(maxsize=4096)  # every layer of a step asks the same (~60 us a search, ~0.1 us a hit)
def scheduler_round_splits(rows: int, max_kv: int, per_sm: int, sms: int, cap: int,
                           fixed_tiles: int = ROUND_FIXED_TILES) -> int:
    """AttnConfig.mma_split_rule="rounds": the split count (1 to ``cap``) whose busiest warp scheduler finishes
    first, by a model fitted to the H100's split-count sweeps: rows x splits one-warp programs spread over the
    SCHEDULERS x sms schedulers, each running per_sm / SCHEDULERS at once (3 at 12 an SM) in rounds; a full
    round costs its programs' tiles (a program's tiles plus ``fixed_tiles``, one each), the last, partial round of
    r programs r / ROUND_PARTIAL_EFFICIENCY[r - 1] of them (fewer warps issue less than the full rate: latency).
    Counts whose programs read more than ROUND_MAX_TILES tiles are left out; where every count within the cap
    does, the cap (the shortest programs).  The fewest splits where several tie.  The partial round's rate
    replaced (twenty-fifth session) a floor of one full round, which took one split at 256 x 6k (4 programs a
    scheduler: 3, then 1 alone) where "waves"' three were 1.6-4.3 % faster on the H200
    (results/2026-12-06-h200-s24/call8-kernels).  The default rule since the twenty-fifth session."""
    lanes = SCHEDULERS * sms
    slots = max(1, per_sm // SCHEDULERS)
    cap = max(1, cap)
    first = max(1, min(cap, -(-max_kv // (ROUND_MAX_TILES * TILE_TOKENS))))  # the fewest splits of at most that many
    best, best_cost = first, None
    for s in range(first, cap + 1):
        chunk = -(-max_kv // s)  # tokens a split
        tiles = -(-chunk // TILE_TOKENS) + fixed_tiles  # the kernel's chunk in whole tiles, and its fixed cost
        full, r = divmod(-(-rows * s // lanes), slots)  # the busiest scheduler's whole rounds, and the rest
        rate = ROUND_PARTIAL_EFFICIENCY[r - 1] if 0 < r <= len(ROUND_PARTIAL_EFFICIENCY) else 1.0
        cost = tiles * (slots * full + r / rate)
        if best_cost is None or cost < best_cost:
            best, best_cost = s, cost
    return best


def resolve_maxnreg(maxnreg: int) -> int:
    """The register cap of a launch (maxnreg as resolve_value_table gives it): LEAN_MAXNREG where it is still the
    default MAXNREG (tq3's pair tables; 4-bit keys' layouts come at PRMT_MAXNREG or SINGLE_MAXNREG already)."""
    return LEAN_MAXNREG if maxnreg == MAXNREG else maxnreg


def resolve_layout(params: KernelParams, *, key_table: str = "auto", shared_table: bool = True,
                   value_table: str = "auto", ring_bytes: int = RING_BYTES, maxnreg: int = MAXNREG,
                   step_tiles: int = 0, **_: object) -> tuple:
    """(key table, shared_table, value table, ring bytes, register cap) of a launch with these options
    (decode.mma_options' names), resolved in the launcher's order: resolve_key_table, resolve_value_table,
    resolve_maxnreg.  Without the launcher's first-use check of "single" (_launch_value_table), which can only
    take the pair tables instead."""
    key_table, shared_table = resolve_key_table(params, key_table, shared_table, value_table, ring_bytes)
    value_table, ring_bytes, maxnreg = resolve_value_table(params, value_table, ring_bytes, maxnreg, key_table,
                                                           step_tiles)
    return key_table, shared_table, value_table, ring_bytes, resolve_maxnreg(maxnreg)


_RING_VERIFIED: set = set()
_PLACEMENT_FAILED: set = set()  # "auto"'s "single" configurations whose check failed (they take the pair tables)


def resolve_key_table(params: KernelParams, key_table: str, shared_table: bool, value_table: str = "auto",
                      ring_bytes: int = RING_BYTES) -> tuple[str, bool]:
    """(key table, shared_table) of a launch.  mma_key_table "auto": "prmt" for 4-bit keys of a symmetric codebook
    (k4v3, tq4) where the value table is "auto" too and the ring the default RING_BYTES (the layout timed: with
    "auto"'s values beside it, resolve_value_table), else the single-code table for 4-bit keys, whose values then
    keep a table of their own (shared_table off), else "pair"; "single" and "prmt" asked for have the single-code
    layout too (shared_table off, whatever it was); other values unchanged (checked by the launcher)."""
    if key_table in ("single", "prmt"):  # the single-code layout: the values get a table of their own
        return key_table, False
    if key_table != "auto":
        return key_table, shared_table
    if params.meta["K_PRMT"] and value_table == "auto" and ring_bytes == RING_BYTES:
        return "prmt", False
    key_table = "single" if params.meta["K0_BITS"] == 4 else "pair"
    return key_table, shared_table and key_table == "pair"


def _launch_value_table(params: KernelParams, device: torch.device, value_table: str, ring_bytes: int, maxnreg: int,
                        shared_table: bool, key_table: str, step_tiles: int, *, group: int, block_size: int,
                        verify: bool) -> tuple[str, int, int]:
    """(value table, ring bytes, register cap) of a launch (key_table resolved): resolve_value_table, and for
    "auto"'s "single" (a second shared allocation) its placement checked once, outside a CUDA-graph capture.
    Where it cannot be (a capture before the first check) or failed (warned once), the launch takes the pair
    tables with the ring and cap it was given: the same words, so the same bits."""
    resolved = resolve_value_table(params, value_table, ring_bytes, maxnreg, key_table, step_tiles)
    if value_table != "auto" or resolved[0] != "single" or not verify:
        return resolved
    _, ring, cap = resolved
    key = _placement_key(params, device, cap, ring, shared_table, key_table, group, block_size, "single")
    if key in _RING_VERIFIED:
        return resolved
    if key in _PLACEMENT_FAILED or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return "pair", ring_bytes, maxnreg
    try:
        _verify_ring_placement(params, device, cap, ring, shared_table, key_table, group=group,
                               block_size=block_size, value_table="single")
    except RuntimeError as e:
        _PLACEMENT_FAILED.add(key)
        warnings.warn(f"{e}; mma_value_table='auto' keeps the pair tables for {params.fmt.preset.name}",
                      RuntimeWarning, stacklevel=3)
        return "pair", ring_bytes, maxnreg
    return resolved


def prepare_decode_layout(params: KernelParams, device: torch.device, *, group: int, block_size: int,
                          maxnreg: int = MAXNREG, ring_bytes: int = RING_BYTES, shared_table: bool = True,
                          key_table: str = "auto", value_table: str = "auto", step_tiles: int = 0,
                          **_: object) -> str:
    """What the first decode launch of a layer (GQA ``group``, pages of ``block_size`` tokens, the launcher's
    options) would check before it can use "auto"'s layout, done now: at engine start, before vLLM captures
    CUDA graphs, in which the check cannot run.  Returns the value table the launches will use."""
    key_table, shared_table = resolve_key_table(params, key_table, shared_table, value_table, ring_bytes)
    return _launch_value_table(params, device, value_table, ring_bytes, maxnreg, shared_table, key_table,
                               step_tiles, group=group, block_size=block_size, verify=True)[0]


def _placement_key(params: KernelParams, device: torch.device, maxnreg: int, ring_bytes: int, shared_table: bool,
                   key_table: str, group: int, block_size: int, value_table: str) -> tuple:
    return (params.fmt.preset.name, params.fmt.head_size, str(device), maxnreg, ring_bytes, shared_table, key_table,
            group, block_size, value_table)


def _verify_ring_placement(params: KernelParams, device: torch.device, maxnreg: int, ring_bytes: int,
                           shared_table: bool, key_table: str, *, group: int, block_size: int,
                           value_table: str = "pair") -> None:
    """Two shared allocations (a ring smaller than the tables, MMA_RING_BYTES; or value_table "single", whose
    2 KB table follows the larger ring) are read at raw addresses that assume where Triton placed them (the
    larger first).  Once per configuration and process, before its first use: a small decode (one sequence
    of 3 tiles over one KV head of ``group`` query heads, pages of ``block_size`` tokens: the caller's
    compiled specialization; random codes) with this layout and with the one-allocation default (RING_BYTES,
    pair tables), one tile a softmax step each, must give the same bits, or this raises instead of letting
    misplaced words be read as centroids."""
    key = _placement_key(params, device, maxnreg, ring_bytes, shared_table, key_table, group, block_size,
                         value_table)
    if key in _RING_VERIFIED:
        return
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(f"mma_ring_bytes={ring_bytes}, mma_value_table={value_table!r} is verified on its first "
                           "call outside CUDA-graph capture (decode_mma._verify_ring_placement); run one decode step "
                           "eagerly before capturing")
    m = params.meta
    gen = torch.Generator(device="cpu").manual_seed(0)
    nb = -(-3 * TILE_TOKENS // block_size)
    cache = torch.randint(0, 256, (nb, 1, block_size, params.slot_bytes), generator=gen, dtype=torch.uint8)
    one = torch.tensor([1.0], dtype=torch.float32).view(torch.uint8)
    cache[..., m["K0_NORM"]:m["K0_NORM"] + 4] = one  # finite norms: every output is a number
    cache[..., m["V0_NORM"]:m["V0_NORM"] + 4] = one
    cache = cache.to(device)
    qbuf = torch.randn((group, query_layout(params)["DQ"]), generator=gen).to(device)
    bt = torch.arange(nb, dtype=torch.int32, device=device)[None, :]
    sl = torch.tensor([3 * TILE_TOKENS], dtype=torch.int32, device=device)
    outs = []
    for ring, table in ((ring_bytes, value_table), (RING_BYTES, "pair")):
        out = torch.empty((1, group, m["D"]), dtype=torch.bfloat16, device=device)
        decode_attention_mma(qbuf, cache, bt, sl, out, params, num_q_heads=group, sm_scale=0.1, num_splits=1,
                             maxnreg=maxnreg, ring_bytes=ring, shared_table=shared_table, step_tiles=1,
                             key_table=key_table, value_table=table, verify_ring=False)
        outs.append(out)
    if not torch.equal(outs[0], outs[1]):
        raise RuntimeError(f"mma_ring_bytes={ring_bytes}, mma_value_table={value_table!r}: the decode kernel's second "
                           f"shared allocation is not where its raw addresses expect it (this Triton "
                           f"{triton.__version__} placed its allocations otherwise); use mma_ring_bytes={RING_BYTES} "
                           "and mma_value_table='pair'")
    _RING_VERIFIED.add(key)


def mma_decode_unsupported(params: KernelParams, query_dtype: torch.dtype, device: torch.device, num_q_heads: int,
                           num_kv_heads: int, block_size: int) -> str | None:
    """Why decode_attention_mma cannot serve this launch, or None when it can."""
    m = params.meta
    if query_dtype not in (torch.float16, torch.bfloat16):
        return f"query dtype {query_dtype} (fp16/bf16 only; fp32 queries take the split kernel's fp32 dots)"
    if m["K_NI"] != 1 or m["V_NI"] != 1 or m["V_GROUP"] or m["K0_QJL"]:
        return "one mse key instance and one mse value instance only (no outlier split, QJL or group values)"
    if m["D"] != MMA_HEAD_SIZE or m["K0_M"] != MMA_HEAD_SIZE or m["V0_M"] != MMA_HEAD_SIZE:
        return f"head size {m['D']} (only {MMA_HEAD_SIZE})"
    if m["K0_BITS"] not in MMA_BITS or m["V0_BITS"] not in MMA_BITS:
        return f"key/value bits {m['K0_BITS']}/{m['V0_BITS']} (only {MMA_BITS})"
    if num_q_heads // num_kv_heads > MMA_MAX_GROUP:
        return f"GQA group of {num_q_heads // num_kv_heads} query heads (at most {MMA_MAX_GROUP})"
    if block_size % TILE_TOKENS:
        return f"block_size {block_size} (a multiple of {TILE_TOKENS} only)"
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return NO_CUDA
    if torch.version.hip is not None:  # (a ROCm device reports capabilities of its own; Gluon's mma_v2 is NVIDIA's)
        return "needs an NVIDIA GPU (mma.sync, ld.shared and prmt in inline PTX), got a ROCm device"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "needs mma.sync (compute capability 8.0 or newer)"
    return None


def decode_attention_mma(qbuf: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
                         out: torch.Tensor, params: KernelParams, *, num_q_heads: int, sm_scale: float,
                         num_splits: int, maxnreg: int = MAXNREG, ring_bytes: int = RING_BYTES,
                         shared_table: bool = True, step_tiles: int = 0, key_table: str = "auto",
                         output_rotation: str = "fma", page_ahead: bool = False, value_table: str = "auto",
                         verify_ring: bool = True, pdl: bool = False) -> torch.Tensor:
    """Decode attention of one query row per sequence: qbuf = rotate_query(query) [B * Hq, DQ],
    out [B, Hq, D].  Splits of the mma kernel, then merge.merge_splits.  ``maxnreg``: register cap per
    thread (AttnConfig.mma_maxnreg; 0: the compiler's choice).  ``ring_bytes``: the
    cp.async tile ring (AttnConfig.mma_ring_bytes; at least two tiles of the preset).  ``shared_table``:
    one pair table for keys and values where their codebooks coincide (AttnConfig.mma_shared_table;
    False: a table each, half the copies).  ``step_tiles``: tiles of 16 tokens per online-softmax step
    (AttnConfig.mma_step_tiles: 1, or 2 where the ring holds an even number >= 4 of the preset's
    tiles; 0: 2 where it does, else 1).  ``key_table``: "pair" (a pair table of the key codebook),
    "single" (4-bit keys without a table shared with the values: 16 entries x 32 copies, two
    conflict-free lookups a pair instead of one conflicting one), "prmt" (4-bit keys of a symmetric codebook by
    byte permutes, no table read: _prmt_key_pairs) or "auto" ("single" for 4-bit keys, overriding
    shared_table; else "pair"; AttnConfig.mma_key_table).  ``page_ahead``: block-table pages loaded a
    step before their tiles' copies (AttnConfig.mma_page_ahead; the same bits).  ``value_table``: VALUE_TABLES
    (AttnConfig.mma_value_table): "wide" (k4v3's value pair table with 32 copies, its ring WIDE_RING_BYTES) or
    "single" (tq4's values on the keys' single-code table, 10 KB a program); both hold the pair layout's
    words, so they give the bits of one tile a step; "auto": resolve_value_table, which may change the ring
    and register cap with it (a CUDA-graph capture before "auto"'s "single" is verified gets "pair"); the
    default cap then becomes resolve_maxnreg's.  ``pdl``: this launch, the merge's and the inverse rotation's
    are programmatic dependent launches (AttnConfig.mma_pdl, triton_impl/pdl.py): each may start while the
    launch before it runs and waits for it before reading its output (this kernel builds its tables first);
    qbuf's writer must be the launch before this one or precede an ordinary launch that is (which starts only
    once it has ended).  The same bits.  No host synchronisation."""
    m = params.meta
    b = block_table.shape[0]
    hkv = cache.shape[1]
    dacc = acc_width(params)
    part_acc = torch.empty((b * num_q_heads * num_splits, dacc), dtype=torch.float32, device=cache.device)
    part_ml = torch.empty((b * num_q_heads * num_splits, 2), dtype=torch.float32, device=cache.device)
    words = cache.view(torch.int32)  # [NB, H, BS, SLOT_BYTES / 4]
    sw = params.slot_bytes // 4
    tqf.check_choice("mma_value_table", value_table, VALUE_TABLES)
    asked_key = key_table
    key_table, shared_table = resolve_key_table(params, key_table, shared_table, value_table, ring_bytes)
    value_table, ring_bytes, maxnreg = _launch_value_table(
        params, cache.device, value_table, ring_bytes, maxnreg, shared_table, key_table, step_tiles,
        group=num_q_heads // hkv, block_size=cache.shape[2], verify=verify_ring)
    stage_words, stages = ring_stages(params, ring_bytes)
    why = value_table_unsupported(params, value_table, ring_bytes, key_table, asked_key)
    if why:
        raise ValueError(f"mma_value_table={value_table!r} is not supported for {params.fmt.preset.name}: {why}; "
                         f"allowed: 'wide' for k4v3 with mma_key_table 'auto' or 'single' and mma_ring_bytes="
                         f"{WIDE_RING_BYTES} or with 'prmt' and {RING_BYTES}, 'single' for tq4 with mma_key_table "
                         f"'auto' or 'single' and mma_ring_bytes={RING_BYTES}, 'prmt' for tq4 with mma_key_table "
                         f"'prmt' and mma_ring_bytes {RING_BYTES} or {PRMT_RING_BYTES[-1]}, 'pair' or 'auto' for any")
    if value_table not in ("wide", "prmt") and (ring_bytes not in MMA_RING_BYTES or stages < 2):
        raise ValueError(f"mma_ring_bytes={ring_bytes} holds {stages} tile(s) of {4 * stage_words} bytes "
                         f"({params.fmt.preset.name}); allowed values: "
                         f"{[r for r in MMA_RING_BYTES if r >= 8 * stage_words]}"
                         + (f" ({WIDE_RING_BYTES}: with mma_value_table='wide')" if ring_bytes == WIDE_RING_BYTES
                            else ""))
    pairs_fit = stages >= 4 and stages % 2 == 0
    if type(step_tiles) is not int or step_tiles not in STEP_TILES or (step_tiles == 2 and not pairs_fit):
        raise ValueError(f"mma_step_tiles={step_tiles!r} is not supported with mma_ring_bytes={ring_bytes} "
                         f"({stages} tiles of {params.fmt.preset.name}); allowed values: "
                         f"{[t for t in STEP_TILES if t != 2 or pairs_fit]}")
    if step_tiles == 0:
        step_tiles = 2 if pairs_fit else 1
    table_shared = bool(shared_table and m["KV_PAIR_SAME"])
    ok = {"single": m["K0_BITS"] == 4, "prmt": m["K_PRMT"]}  # (both take the single-code layout: not shared)
    if key_table not in KEY_TABLES or not ok.get(key_table, True):
        raise ValueError(f"mma_key_table={key_table!r} is not supported for {params.fmt.preset.name}; allowed values: "
                         f"{[t for t in KEY_TABLES if ok.get(t, True)]} ('single' needs 4-bit keys, 'prmt' 4-bit keys "
                         "of a symmetric codebook)")
    # a second shared allocation (a ring smaller than the default tables, or the single-code value table's
    # own): its placement is checked before first use
    if verify_ring and ((ring_bytes < TABLE_BYTES and value_table == "pair") or value_table == "single"):
        _verify_ring_placement(params, cache.device, maxnreg, ring_bytes, shared_table, key_table,
                               group=num_q_heads // hkv, block_size=cache.shape[2], value_table=value_table)
    maxnreg = resolve_maxnreg(maxnreg)
    kernel = _decode_mma_kernel[(b, hkv, num_splits)](
        qbuf, words, block_table, block_table.stride(0), seq_lens, part_acc, part_ml,
        words.stride(0), words.stride(1), words.stride(2), params.k_pair, params.v_pair,
        params.k_prmt if key_table == "prmt" else params.k_pair,
        float(sm_scale) * LOG2E.value, cache.shape[2], num_q_heads, num_splits,
        G=num_q_heads // hkv, DQ=query_layout(params)["DQ"], DACC=dacc, D=m["D"],
        KB=m["K0_BITS"], K_NORM=m["K0_NORM"], K_CODES=m["K0_CODES"],
        VB=m["V0_BITS"], V_NORM=m["V0_NORM"], V_CODES=m["V0_CODES"],
        SW=sw, STAGES=stages, STAGE_WORDS=stage_words, SHARED_TABLE=table_shared,
        STEP_TILES=step_tiles, KEY_SINGLE=key_table in ("single", "prmt"), PAGE_AHEAD=bool(page_ahead),
        VALUE_TABLE=VALUE_TABLES.index(value_table) - 1, KEY_PRMT=key_table == "prmt", PDL=bool(pdl),
        num_warps=1, **({"maxnreg": maxnreg} if maxnreg else {}), **launch_options(pdl),
    )
    # lookup addresses the tables from the start of the kernel's shared memory and the ring right after
    # them: they must be all of it (a layout conversion that needed scratch space would break that)
    shared = mma_shared_bytes(params, ring_bytes, value_table, key_table)
    if kernel is not None and kernel.metadata.shared != shared:
        raise RuntimeError(f"decode_mma kernel uses {kernel.metadata.shared} bytes of shared memory, expected "
                           f"exactly its tables and tile ring ({shared})")
    return merge_splits(part_acc, part_ml, out, params, num_q_heads=num_q_heads, num_splits=num_splits,
                        output_rotation=output_rotation, pdl=pdl)

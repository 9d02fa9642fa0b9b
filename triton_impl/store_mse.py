"""store_mse: the store of the one-instance mse presets (tq3, k4v3, tq4, tq3_hadamard, ...) with the
rotation on tensor cores.

What one launch computes (one launch for the keys, one for the values; SPEC §4.1, §4.2, §5):
for every row r = token * H + head of x [num_tokens, H, D] whose slot_mapping[token] >= 0,

    n = ||x 2^-e||, norm = 2^e n                                  (SPEC §4.1)
    y' = (x 2^-e) Pi^T, y = y' / n                                (= Pi u, SPEC §4.2)
    idx_j = #{k : y'_j > beta_k n}                                (= #{k : y_j > beta_k})
    slot[NORM:NORM+4] = norm (NORM_NAN_BITS for a non-finite token, codes 0)
    slot[CODES:...]   = idx packed LSB-first, written as little-endian int32 words

2^-e is the power of two that brings M = max|x| into [1, 2): the scaling is exact, so x 2^-e keeps
x's bits, no partial sum can overflow, and no coordinate needs a division.  Rounding differs from
the reference's (M sqrt(sum (x/M)^2), then u = x/(M n)) by a few float32 ulps: inside NORM_RTOL and
CODE_MARGIN (SPEC §10).  The product runs
on tensor cores in fp16 with float32 accumulation: Pi^T = P0 + P1, two fp16 parts (params.rotation_split;
P1 is the fp16 rounding of Pi^T - P0, so Pi^T is represented to 2^-25 absolute, P1 mostly
subnormal), and x 2^-e in XSPLIT fp16 parts (1 for bf16 / fp16 input, 2 for float32): the products
x0 P0 + x0 P1 (+ x1 P0).  An fp16 part of x 2^-e (elements below 2) is exact above 2^-14 and within
2^-25 below, so |y - y_exact| <= sqrt(D) 2^-24 / n ~ 7e-7 at D = 128 (n >= 1), and typically
~1e-8: far inside SPEC §10's CODE_MARGIN (SPEC §4 allows any such method).

Layouts: x rows [BR, D] (D = 64 or 128, the instance is the whole head); Pi^T parts [2, D, D] fp16
loaded once per program (shared memory); codes packed 8 at a time into BITS bytes, then into words.
Grid: (programs,), persistent: program p takes row tiles p, p + programs, ... of BR rows
(PROGRAMS_PER_SM programs an SM unless programs_per_sm says otherwise); with col_blocks = NB > 1, NB
programs share each row tile, program p its coordinates [(p % NB) D / NB, (p % NB + 1) D / NB) of the
row tiles p // NB, p // NB + programs / NB, ... (Pi^T's parts: those D / NB columns).

Options (VARIANTS; DEFAULT_VARIANT = prefetch + lean + search + kv: the H200 measured prefetch + lean faster
than neither at 2k-32k tokens, tq3 1.2-1.7x, tq4 1.0-1.3x, results/2026-12-04-h200-knobs-s10, and
search on top of them faster again, tq4 1.36-1.40x, k4v3 1.13-1.21x, tq3 1.02-1.09x at 8k and 32k tokens,
results/2026-12-04-h200-s11/call1-p2-search; every combination
stores the same bytes, checked under the interpreter by test_store_mse.py): "prefetch": tile i +
programs's slots and x loaded into registers before tile i is encoded (by hand; Triton 3.6's own
pipeliner issues them only after tile i's stores, then waits at once); "lean": no separate
finiteness pass (a non-finite x makes the norm non-finite), and Pi^T's columns permuted (codes.perm_col)
so that each lane of the accumulator holds D/4 consecutive coordinates and packs whole words from
its own registers (no shuffles, no shared-memory round trip; the same products land in other
columns, so y' is bit-identical); "halves": "lean" with the product in two column blocks of D/2. The
permuted pack applies where BR >= 16 warps and a lane group's D/4 codes fill whole words; elsewhere
only the finiteness fold. "search": the codes of a symmetric 3- or 4-bit codebook by binary search
over the positive boundaries (codes.boundary_codes; other codebooks keep the linear count). "kv": keys and values in
one launch (_store_mse_kv_kernel: half the persistent programs each, the same rows' arithmetic), one
launch a layer instead of two and the two halves side by side; the H200 timed it faster than two
launches at every size, most where a decode step's few rows leave the card idle in each launch: tq3 7.0
against 13.1 us at 32 tokens x 8 heads, 16.8 against 21.3 at 2k, 183 against 208 at 32k; k4v3 and tq4
alike (results/2026-12-05-h200-s15/call15-store). "balance" (with "kv" or "wg"): the keys' and the values'
programs of that one launch split so that the longest program, at its tiles' instructions, is shortest
(store_wg.key_programs) instead of half each, so that k4v3's key programs (4-bit codes) do not run on after
its value programs are done.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from turboquant import format as tqf

from . import store_wg
from .codes import boundary_codes, lane_group_whole_words, perm_col
from .device import sm_count
from .params import INTERPRET, NORM_NAN_BITS, KernelParams

# The CPU interpreter's tl.dot on 16-bit floats is not trustworthy (bf16 as raw bits): there the
# parts go in as float32 (fp16 x fp16 products are exact in float32 either way): F32_PARTS=INTERPRET.
STORE_MSE_BR = 64  # rows (token, head) per tile
STORE_MSE_WARPS = 4
PROGRAMS_PER_SM = 2  # each loads Pi^T's parts (2 x 32 KiB at D = 128) once
# Options of the kernel (each stores the same bytes), see the module docstring: "prefetch" (next tile
# loaded before this one is encoded), "lean" (no separate finiteness pass; accumulator columns permuted
# so that each lane packs whole words), "halves" (lean, the product in two column blocks), "search"
# (codes of symmetric 3/4-bit codebooks by binary search over the boundaries), "kv" (keys and values in one
# launch), "wg" (keys and values in one launch of store_wg's Gluon kernel: every row quantity in the registers
# of the rows' threads, Hopper only; within SPEC §10 of the reference, not always store_mse's bytes), "balance"
# (with kv or wg: the keys' and the values' programs split by their tiles' instructions so that the longest
# program is shortest, store_wg.key_programs, instead of half each: k4v3's 4-bit keys cost 18 % more than its
# 3-bit values)
VARIANTS = ("prefetch", "lean", "halves", "search", "kv", "wg", "balance")
DEFAULT_VARIANT = ("prefetch", "lean", "search", "kv")
# The launch for a decode step's few rows: at most SMALL_ROWS rows of (token, head) in a call that chooses
# nothing itself take SMALL_LAUNCH (16-row tiles of 4 warps, each tile's coordinates over 4 programs, keys
# and values in one launch, 5 programs an SM). Compiled for sm_90 (tq3): a 430-instruction loop a warp
# against the default's 1,746, 94 registers, 20 KB of shared memory; 2 x 4 x tiles programs instead of
# 2 x tiles. The H200 (results/2026-12-05-h200-s15/call15-store, tq3 / k4v3 / tq4, 8 KV heads): 3.5-3.7 us
# for 32 tokens (256 rows) against 7.0-7.6 us for the default tile in one launch and 13.1-13.7 us in two;
# 7.3-7.7 us against 7.7-8.5 at 256 tokens (2,048 rows); slower from 2,048 tokens (29-33 us against 17-19).
# A decode step of up to 256 sequences of 8 KV heads takes it.
SMALL_ROWS = 2048
SMALL_LAUNCH = {"block_rows": 16, "num_warps": 4, "col_blocks": 4, "variant": DEFAULT_VARIANT,
                "programs_per_sm": 5}
# The launch of a call that chooses nothing itself with more than SMALL_ROWS rows, where store_wg's kernel
# serves it (Hopper, bf16 / fp16 input, whole code words a lane group): 64-row tiles of 4 warps, 64 KB of
# shared memory and 162-164 registers a thread (compiled for sm_90), so 3 programs an SM; its loop is 1,271
# instructions a warp and tile for tq3 against 1,763 for DEFAULT_VARIANT's, with no shared-memory layout
# conversion (store_wg's docstring).  Timed on an H100 (eighteenth session, results/2026-12-05-h100-s18): 32k tokens
# x 8 heads tq3 179.8 -> 119.9 us, k4v3 212.5 -> 153.1, tq4 244.6 -> 172.2; 8k tokens 51.7 -> 32.5 (tq3); at 2 programs
# an SM within -7..+4 % of 3.  "balance" (the key / value programs split by their tiles' instructions) timed on an H100
# in three rounds (twenty-third session, results/2026-12-06-h100-s23/call2-kernels): k4v3 -2.0 % at 2k tokens, -3.0 % at
# 8k, -1.4 % at 32k (14.9 -> 14.6, 39.6 -> 38.4, 129.3 -> 127.5 us); tq3 and tq4 (where it splits as before) within
# +-0.7 %; the same bytes (test_balance_stores_the_default_bytes on the GPU).
WG_LAUNCH = {"variant": ("prefetch", "lean", "search", "wg", "balance"), "programs_per_sm": 3}
# fp16 parts of an input element x 2^-e (see above)
XSPLIT = {torch.bfloat16: 1, torch.float16: 1, torch.float32: 2}


def store_mse_applies(params: KernelParams) -> bool:
    """Whether this kernel covers the layer's format: keys and values one mse instance each over the
    whole head (no QJL, no outlier split, no group values), head size 64 or 128."""
    return bool(params.meta["STORE_MSE"])


@triton.jit
def _split_fp16(x, PART: tl.constexpr):
    """Part PART (0 or 1) of float32 x as fp16 parts: x0 = fp16(x), x1 = fp16(x - x0)."""
    p = x.to(tl.float16)
    if PART > 0:
        p = (x - p.to(tl.float32)).to(tl.float16)
    return p


@triton.jit
def _pack_words(codes, BR: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, wptr, tm):
    """Pack codes [BR, D] (< 2^BITS) LSB-first and store them as int32 words at wptr [BR] (int32
    pointers to the field's first word), rows where tm."""
    c8 = tl.reshape(codes.to(tl.uint32), (BR, D // 8, 8))
    sh = (tl.arange(0, 8) * BITS).to(tl.uint32)
    v = tl.sum(c8 << sh[None, None, :], axis=2)  # [BR, D // 8]: 8 codes = BITS bytes (disjoint bits)
    if BITS == 4:
        w = tl.arange(0, D // 8)
        tl.store(wptr[:, None] + w[None, :], v.to(tl.int32, bitcast=True), mask=tm[:, None])
    elif BITS == 2:
        lo, hi = tl.split(tl.reshape(v, (BR, D // 16, 2)))
        w = tl.arange(0, D // 16)
        tl.store(wptr[:, None] + w[None, :], (lo | (hi << 16)).to(tl.int32, bitcast=True), mask=tm[:, None])
    else:  # 3 bits: 32 codes = four 24-bit chunks c0..c3 = three words
        even, odd = tl.split(tl.reshape(v, (BR, D // 32, 2, 2)))  # chunks (0, 2) and (1, 3)
        c0, c2 = tl.split(even)
        c1, c3 = tl.split(odd)
        g = tl.arange(0, D // 32) * 3
        m = tm[:, None]
        tl.store(wptr[:, None] + g[None, :], (c0 | (c1 << 24)).to(tl.int32, bitcast=True), mask=m)
        tl.store(wptr[:, None] + g[None, :] + 1, ((c1 >> 8) | (c2 << 16)).to(tl.int32, bitcast=True), mask=m)
        tl.store(wptr[:, None] + g[None, :] + 2, ((c2 >> 16) | (c3 << 8)).to(tl.int32, bitcast=True), mask=m)


@triton.jit
def _field_word(c4, W: tl.constexpr, BITS: tl.constexpr, OFF: tl.constexpr):
    """Bits [32 W, 32 W + 32) of each lane group's code field (q's G codes, LSB-first) contributed
    by c4 [BR, g, 4 (q), 2 (t)] (uint32 codes of columns 8g + 2q + t, the column block starting at
    code OFF of the field): [BR, 4].  The shifts are compile-time constants per register."""
    gi = tl.arange(0, c4.shape[1])[None, :, None, None]
    ti = tl.arange(0, 2)[None, None, None, :]
    s = (OFF + 2 * gi + ti) * BITS - 32 * W
    lo = tl.where((s >= 0) & (s < 32), c4 << tl.minimum(tl.maximum(s, 0), 31).to(tl.uint32), 0)
    hi = tl.where((s < 0) & (s > -BITS), c4 >> tl.minimum(tl.maximum(-s, 0), 31).to(tl.uint32), 0)
    return tl.sum(tl.sum(lo | hi, axis=3), axis=1)  # disjoint bits


@triton.jit
def _rotate(xs, p0, p1, BR: tl.constexpr, N: tl.constexpr, XSPLIT: tl.constexpr, F32_PARTS: tl.constexpr):
    """y' = xs Pi^T [BR, N] on tensor cores: x0 P1 (+ x1 P0) + x0 P0, small terms first."""
    x0 = _split_fp16(xs, 0)
    if F32_PARTS:
        x0 = x0.to(tl.float32)
    acc = tl.dot(x0, p1, tl.zeros((BR, N), tl.float32))
    if XSPLIT > 1:
        x1 = _split_fp16(xs, 1)
        if F32_PARTS:
            x1 = x1.to(tl.float32)
        acc = tl.dot(x1, p0, acc)
    return tl.dot(x0, p0, acc)


@triton.jit
def _load_tile(x_ptr, slot_ptr, tile, stride_xt, stride_xh, num_rows, H: tl.constexpr, D: tl.constexpr,
               BR: tl.constexpr, XMASK_SLOT: tl.constexpr):
    """(slot [BR] int32, x [BR, D] in x's dtype) of row tile `tile` (rows past num_rows: slot -1).
    XMASK_SLOT: x rows whose slot < 0 are not read (0); else every existing row is read, so that the
    load does not wait for the slots (a padding row's x is read and discarded)."""
    j = tl.arange(0, D)
    r = tile * BR + tl.arange(0, BR)
    tok = r // H
    h = r % H
    # int32 slots: a layer's cache would need > 2^31 * 64 bytes for more
    slot = tl.load(slot_ptr + tok, mask=r < num_rows, other=-1).to(tl.int32)
    if XMASK_SLOT:
        xm = slot >= 0
    else:
        xm = r < num_rows
    x = tl.load(x_ptr + tok.to(tl.int64)[:, None] * stride_xt + h[:, None] * stride_xh + j[None, :],
                mask=xm[:, None], other=0.0)
    return slot, x


@triton.jit
def _encode_tile(slot, x, tile, cache_ptr, bnd_ptr, y_ptr, p0, p1, q0, q1, stride_cb, stride_ch, stride_cs,
                 H: tl.constexpr, BLOCK_SIZE: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr,
                 SYMMETRIC: tl.constexpr, NORM: tl.constexpr, CODES: tl.constexpr, BR: tl.constexpr,
                 XSPLIT: tl.constexpr, DEBUG_Y: tl.constexpr, F32_PARTS: tl.constexpr, FOLD_FIN: tl.constexpr,
                 PERM: tl.constexpr, SEARCH: tl.constexpr, NB: tl.constexpr, cb):
    """Encode one row tile (slot [BR], x [BR, D]) into the cache (see the module docstring).
    p0, p1: Pi^T's parts (PERM = 2: their first column block; q0, q1 the second).  NB > 1 (PERM = 0):
    only the coordinates [cb N, cb N + N) of the row tile, N = D / NB (p0, p1: those columns of Pi^T's
    parts), their whole code words, and the norm where cb = 0."""
    r = tile * BR + tl.arange(0, BR)
    h = r % H
    tm = slot >= 0
    x = x.to(tl.float32)
    # SPEC §4.1 with an exact power-of-two scale 2^-e (mx 2^-e in [1, 2); biased exponent of mx
    # clamped to 1..253): ||x|| = 2^e sqrt(sum (x 2^-e)^2), within NORM_RTOL of M sqrt(sum (x/M)^2)
    if FOLD_FIN:
        mx = tl.max(tl.abs(x), axis=1)
    else:
        fin = tl.sum(((tl.abs(x) == float("inf")) | (x != x)).to(tl.int32), axis=1) == 0
        mx = tl.max(tl.abs(x), axis=1)
    eb = tl.minimum(tl.maximum((mx.to(tl.int32, bitcast=True) >> 23) & 0xFF, 1), 253)
    scale = ((254 - eb) << 23).to(tl.float32, bitcast=True)  # 2^-e
    if FOLD_FIN:
        # no finiteness pass: a non-finite x makes x 2^-e, its sum of squares, n and the norm
        # non-finite (2^-e > 0; a finite row's |x 2^-e| < 4 cannot overflow the sum), so "norm not
        # finite" is the whole test; such a row's products are discarded (codes 0)
        xs = x * scale[:, None]
    else:
        xs = tl.where(fin[:, None], x * scale[:, None], 0.0)  # exact
    n = tl.sqrt_rn(tl.sum(xs * xs, axis=1))  # ||x 2^-e||, in [1, 2 sqrt(D)) unless x = 0
    norm = n * (eb << 23).to(tl.float32, bitcast=True)  # exact unless it overflows
    if FOLD_FIN:
        bad = ~(norm < float("inf"))
    else:
        bad = ~fin | ~(norm < float("inf"))
    if PERM == 0:  # columns in order (no "lean", or where its pack does not apply): the statements in the
        # order of the kernel before the options (same SASS as it at NB = 1)
        N: tl.constexpr = D // NB
        acc = _rotate(xs, p0, p1, BR, N, XSPLIT, F32_PARTS)
        den = tl.where(n > 0, n, 1.0)  # x = 0: y = 0
        if DEBUG_Y:
            y = tl.where(bad[:, None], 0.0, tl.math.div_rn(acc, den[:, None]))
            tl.store(y_ptr + r.to(tl.int64)[:, None] * D + cb * N + tl.arange(0, N)[None, :], y, mask=tm[:, None])
        codes = tl.where(bad[:, None], 0, boundary_codes(acc, den, bnd_ptr, BITS, SYMMETRIC, SEARCH))
        blk = tl.where(tm, slot // BLOCK_SIZE, 0).to(tl.int64)
        off = tl.where(tm, slot % BLOCK_SIZE, 0)
        base = (cache_ptr + blk * stride_cb + h * stride_ch + off * stride_cs).to(tl.pointer_type(tl.int32))
        nbits = tl.where(bad, NORM_NAN_BITS, norm.to(tl.int32, bitcast=True))
        # column block cb: its whole words (N BITS / 32 of them); the norm by block 0
        tl.store(base + NORM // 4, nbits, mask=tm if NB == 1 else tm & (tl.zeros_like(slot) + cb == 0))
        _pack_words(codes, BR, N, BITS, base + CODES // 4 + cb * (N * BITS // 32), tm)
    else:
        # columns permuted (codes.perm_col) in NH blocks: each lane packs whole words of its rows' codes
        den = tl.where(n > 0, n, 1.0)  # x = 0: y = 0
        blk = tl.where(tm, slot // BLOCK_SIZE, 0).to(tl.int64)
        off = tl.where(tm, slot % BLOCK_SIZE, 0)
        base = (cache_ptr + blk * stride_cb + h * stride_ch + off * stride_cs).to(tl.pointer_type(tl.int32))
        nbits = tl.where(bad, NORM_NAN_BITS, norm.to(tl.int32, bitcast=True))
        tl.store(base + NORM // 4, nbits, mask=tm)
        NH: tl.constexpr = PERM
        N: tl.constexpr = D // NH
        WPG: tl.constexpr = D // 4 * BITS // 32  # words of one lane group's field
        w0 = tl.zeros((BR, 4), tl.uint32)
        w1 = tl.zeros((BR, 4), tl.uint32)
        w2 = tl.zeros((BR, 4), tl.uint32)
        w3 = tl.zeros((BR, 4), tl.uint32)
        for hh in tl.static_range(NH):
            if hh == 0:
                acc = _rotate(xs, p0, p1, BR, N, XSPLIT, F32_PARTS)
            else:
                acc = _rotate(xs, q0, q1, BR, N, XSPLIT, F32_PARTS)
            if DEBUG_Y:
                y = tl.where(bad[:, None], 0.0, tl.math.div_rn(acc, den[:, None]))
                ycol = perm_col(tl.arange(0, N), D, NH, hh)
                tl.store(y_ptr + r.to(tl.int64)[:, None] * D + ycol[None, :], y, mask=tm[:, None])
            codes = tl.where(bad[:, None], 0, boundary_codes(acc, den, bnd_ptr, BITS, SYMMETRIC, SEARCH))
            c4 = tl.reshape(codes.to(tl.uint32), (BR, N // 8, 4, 2))  # [BR, g, q, t]
            w0 |= _field_word(c4, 0, BITS, hh * (D // 4 // NH))
            if WPG > 1:
                w1 |= _field_word(c4, 1, BITS, hh * (D // 4 // NH))
            if WPG > 2:
                w2 |= _field_word(c4, 2, BITS, hh * (D // 4 // NH))
            if WPG > 3:
                w3 |= _field_word(c4, 3, BITS, hh * (D // 4 // NH))
        wp = base[:, None] + CODES // 4 + tl.arange(0, 4)[None, :] * WPG  # first word of each lane group
        tl.store(wp, w0.to(tl.int32, bitcast=True), mask=tm[:, None])
        if WPG > 1:
            tl.store(wp + 1, w1.to(tl.int32, bitcast=True), mask=tm[:, None])
        if WPG > 2:
            tl.store(wp + 2, w2.to(tl.int32, bitcast=True), mask=tm[:, None])
        if WPG > 3:
            tl.store(wp + 3, w3.to(tl.int32, bitcast=True), mask=tm[:, None])


@triton.jit
def _store_rows(
    x_ptr, cache_ptr, slot_ptr, rot_ptr, bnd_ptr, y_ptr,
    stride_xt, stride_xh, stride_cb, stride_ch, stride_cs,
    num_rows, pid, nprog,
    H: tl.constexpr, BLOCK_SIZE: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr,
    NORM: tl.constexpr, CODES: tl.constexpr,
    BR: tl.constexpr, XSPLIT: tl.constexpr, DEBUG_Y: tl.constexpr, F32_PARTS: tl.constexpr,
    PREFETCH: tl.constexpr, FOLD_FIN: tl.constexpr, PERM: tl.constexpr, SEARCH: tl.constexpr, NB: tl.constexpr,
):
    """Program pid of nprog: the row tiles pid, pid + nprog, ... of one tensor (keys or values).  With NB
    column blocks (PERM = 0): program pid takes column block pid % NB of the row tiles pid // NB,
    pid // NB + nprog // NB, ... (nprog a multiple of NB)."""
    j = tl.arange(0, D)
    if NB == 1:
        cb = 0
    else:
        cb = pid % NB
        pid = pid // NB
        nprog = nprog // NB
    # Pi^T = P0 + P1 (fp16 parts, [2, D, D], row c = input coordinate, column = output; under PERM
    # the columns permuted by perm_col, in PERM blocks: the same products, outputs in other columns)
    if PERM == 0:
        pt = rot_ptr + j[:, None] * D + cb * (D // NB) + tl.arange(0, D // NB)[None, :]
        p0 = tl.load(pt)
        p1 = tl.load(pt + D * D)
        q0, q1 = p0, p1  # unused
    else:
        c = tl.arange(0, D // PERM)
        pt = rot_ptr + j[:, None] * D + perm_col(c, D, PERM, 0)[None, :]
        p0 = tl.load(pt)
        p1 = tl.load(pt + D * D)
        if PERM == 2:
            qt = rot_ptr + j[:, None] * D + perm_col(c, D, PERM, 1)[None, :]
            q0 = tl.load(qt)
            q1 = tl.load(qt + D * D)
        else:
            q0, q1 = p0, p1  # unused
    if F32_PARTS:
        p0, p1, q0, q1 = p0.to(tl.float32), p1.to(tl.float32), q0.to(tl.float32), q1.to(tl.float32)
    num_tiles = tl.cdiv(num_rows, BR)
    if PREFETCH:
        # software pipelining by hand: tile i + nprog's slots and x are loaded into registers before
        # tile i is encoded, so their latency hides behind tile i's work (x read whatever the slot)
        slot_n, x_n = _load_tile(x_ptr, slot_ptr, pid, stride_xt, stride_xh, num_rows, H, D, BR, False)
        for tile in range(pid, num_tiles, nprog):
            slot, x = slot_n, x_n
            slot_n, x_n = _load_tile(x_ptr, slot_ptr, tile + nprog, stride_xt, stride_xh, num_rows, H, D, BR,
                                     False)
            _encode_tile(slot, x, tile, cache_ptr, bnd_ptr, y_ptr, p0, p1, q0, q1, stride_cb, stride_ch, stride_cs,
                         H, BLOCK_SIZE, D, BITS, SYMMETRIC, NORM, CODES, BR, XSPLIT, DEBUG_Y, F32_PARTS, FOLD_FIN,
                         PERM, SEARCH, NB, cb)
    else:
        for tile in range(pid, num_tiles, nprog):
            slot, x = _load_tile(x_ptr, slot_ptr, tile, stride_xt, stride_xh, num_rows, H, D, BR, True)
            _encode_tile(slot, x, tile, cache_ptr, bnd_ptr, y_ptr, p0, p1, q0, q1, stride_cb, stride_ch, stride_cs,
                         H, BLOCK_SIZE, D, BITS, SYMMETRIC, NORM, CODES, BR, XSPLIT, DEBUG_Y, F32_PARTS, FOLD_FIN,
                         PERM, SEARCH, NB, cb)


@triton.jit
def _store_mse_kernel(
    x_ptr, cache_ptr, slot_ptr, rot_ptr, bnd_ptr, y_ptr,
    stride_xt, stride_xh, stride_cb, stride_ch, stride_cs,
    num_rows,
    H: tl.constexpr, BLOCK_SIZE: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr,
    NORM: tl.constexpr, CODES: tl.constexpr,
    BR: tl.constexpr, XSPLIT: tl.constexpr, DEBUG_Y: tl.constexpr, F32_PARTS: tl.constexpr,
    PREFETCH: tl.constexpr, FOLD_FIN: tl.constexpr, PERM: tl.constexpr, SEARCH: tl.constexpr, NB: tl.constexpr,
):
    # One launch per tensor (keys, then values).  Grid: (programs,), persistent over row tiles (x NB
    # column blocks).
    _store_rows(x_ptr, cache_ptr, slot_ptr, rot_ptr, bnd_ptr, y_ptr, stride_xt, stride_xh, stride_cb, stride_ch,
                stride_cs, num_rows, tl.program_id(0), tl.num_programs(0), H, BLOCK_SIZE, D, BITS, SYMMETRIC, NORM,
                CODES, BR, XSPLIT, DEBUG_Y, F32_PARTS, PREFETCH, FOLD_FIN, PERM, SEARCH, NB)


@triton.jit
def _store_mse_kv_kernel(
    k_ptr, v_ptr, cache_ptr, slot_ptr, k_rot_ptr, v_rot_ptr, k_bnd_ptr, v_bnd_ptr, k_y_ptr, v_y_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_cb, stride_ch, stride_cs,
    num_rows, k_programs,
    H: tl.constexpr, BLOCK_SIZE: tl.constexpr, D: tl.constexpr, SYMMETRIC: tl.constexpr,
    K_BITS: tl.constexpr, K_NORM: tl.constexpr, K_CODES: tl.constexpr, K_PERM: tl.constexpr,
    V_BITS: tl.constexpr, V_NORM: tl.constexpr, V_CODES: tl.constexpr, V_PERM: tl.constexpr,
    BR: tl.constexpr, K_XSPLIT: tl.constexpr, V_XSPLIT: tl.constexpr, DEBUG_Y: tl.constexpr,
    F32_PARTS: tl.constexpr, PREFETCH: tl.constexpr, FOLD_FIN: tl.constexpr, SEARCH: tl.constexpr, NB: tl.constexpr,
):
    # Variant "kv": keys and values in one launch -- programs [0, k_programs) store the keys' row tiles,
    # the rest the values' (the same per-row arithmetic as two _store_mse_kernel launches: the same
    # bytes).  One launch a layer instead of two, and the two halves run side by side (a decode step's
    # few rows leave most of the card idle in each).  Grid: (k_programs + value programs,).
    pid = tl.program_id(0)
    if pid < k_programs:
        _store_rows(k_ptr, cache_ptr, slot_ptr, k_rot_ptr, k_bnd_ptr, k_y_ptr, stride_kt, stride_kh, stride_cb,
                    stride_ch, stride_cs, num_rows, pid, k_programs, H, BLOCK_SIZE, D, K_BITS, SYMMETRIC, K_NORM,
                    K_CODES, BR, K_XSPLIT, DEBUG_Y, F32_PARTS, PREFETCH, FOLD_FIN, K_PERM, SEARCH, NB)
    else:
        _store_rows(v_ptr, cache_ptr, slot_ptr, v_rot_ptr, v_bnd_ptr, v_y_ptr, stride_vt, stride_vh, stride_cb,
                    stride_ch, stride_cs, num_rows, pid - k_programs, tl.num_programs(0) - k_programs, H,
                    BLOCK_SIZE, D, V_BITS, SYMMETRIC, V_NORM, V_CODES, BR, V_XSPLIT, DEBUG_Y, F32_PARTS, PREFETCH,
                    FOLD_FIN, V_PERM, SEARCH, NB)


def _perm(variant: tuple[str, ...], d: int, bits: int, br: int, warps: int, col_blocks: int = 1) -> int:
    """PERM of the kernel: column blocks of the permuted product (0: columns not permuted).  Only
    where each lane group's field is whole words (d / 4 * bits a multiple of 32) and each warp's
    accumulator spans whole rows (br >= 16 warps; with fewer rows a warp holds part of the columns
    and the permuted pack would cross lanes), and not with column blocks across programs."""
    if not {"lean", "halves"} & set(variant) or not lane_group_whole_words(d, bits) or br < 16 * warps \
            or col_blocks > 1:
        return 0
    return 2 if "halves" in variant else 1


def check_col_blocks(col_blocks, d: int) -> int:
    """col_blocks (None: 1) as a power of two with head_size / col_blocks >= 32 (whole code words at 2 to 4
    bits a coordinate, and the product's N >= 16), else a ValueError naming the allowed values."""
    if col_blocks is None:
        return 1
    allowed = [1 << i for i in range(8) if (1 << i) <= d // 32]
    if type(col_blocks) is not int or col_blocks not in allowed:
        raise ValueError(f"col_blocks must be one of {allowed} at head_size={d} (coordinates a program >= 32), "
                         f"got {col_blocks!r}")
    return col_blocks


def store_mse(key: torch.Tensor, value: torch.Tensor, cache: torch.Tensor, slot_mapping: torch.Tensor,
              params: KernelParams, debug_rotated: torch.Tensor | None = None, *, block_rows: int | None = None,
              num_warps: int | None = None, variant: tuple[str, ...] | None = None,
              programs_per_sm: int | None = None, maxnreg: int | None = None, col_blocks: int | None = None,
              batch_invariant: bool = False) -> None:
    """store_kv for the formats store_mse_applies() covers; arguments checked by store_kv.
    block_rows (rows of (token, head) per tile, a power of two >= 16), num_warps and programs_per_sm
    (the persistent grid) override the defaults; variant: names from VARIANTS (None: DEFAULT_VARIANT,
    (): none); maxnreg: a register cap per thread (None: the compiler's choice; e.g. 128 lets two
    programs of 8 warps share an SM, at some spilling); col_blocks (None: 1): each row tile's coordinates
    split over that many programs (head_size / col_blocks each, their whole code words; the columns then
    not permuted), so that a few rows (a decode step's) spread over more of the card. A call that sets
    none of these with at most SMALL_ROWS rows takes SMALL_LAUNCH, with more WG_LAUNCH where store_wg serves
    it (with batch_invariant, for calls of any size). Every choice but "wg" stores the same bytes; "wg" stores
    bytes within SPEC §10 of the reference."""
    n, h, d = key.shape
    chosen = (block_rows, num_warps, variant, programs_per_sm, maxnreg, col_blocks) != (None,) * 6
    small = n * h <= SMALL_ROWS and not chosen
    # store_wg's checks only where it could serve: not on a decode step's few rows (outside batch_invariant)
    wg = not chosen and (batch_invariant or not small) and store_mse_applies(params) and store_wg.why_not(
        key, value, d, params.meta["K0_BITS"], params.meta["V0_BITS"], debug_rotated is not None) is None
    if small and not wg:
        block_rows, num_warps, variant, programs_per_sm = (
            SMALL_LAUNCH[k] for k in ("block_rows", "num_warps", "variant", "programs_per_sm"))
        col_blocks = min(SMALL_LAUNCH["col_blocks"], d // 32)
    elif wg:  # batch_invariant: for every call size, so that a row's bytes do not depend on the call's size
        variant, programs_per_sm = WG_LAUNCH["variant"], WG_LAUNCH["programs_per_sm"]
    variant = DEFAULT_VARIANT if variant is None else tuple(variant)
    for v in variant:
        tqf.check_choice("variant", v, VARIANTS)
    if "balance" in variant and not {"kv", "wg"} & set(variant):
        raise ValueError(f"variant 'balance' splits the programs of one launch for keys and values: it needs 'kv' or "
                         f"'wg' beside it, got variant={variant!r}")
    if not store_mse_applies(params):
        raise ValueError(f"store_mse does not cover preset {params.fmt.preset.name!r} at head_size="
                         f"{params.fmt.head_size}: it needs one mse instance for keys and for values, head size "
                         f"64 or 128")
    m = params.meta
    nb = check_col_blocks(col_blocks, d)
    rows = n * h
    br = block_rows or STORE_MSE_BR
    if br < 16 or br & (br - 1):
        raise ValueError(f"block_rows must be a power of two >= 16, got {br}")
    pps = PROGRAMS_PER_SM if programs_per_sm is None else programs_per_sm
    if not isinstance(pps, int) or pps < 1:
        raise ValueError(f"programs_per_sm must be a positive integer, got {pps!r}")
    if maxnreg is not None and (type(maxnreg) is not int or not 24 <= maxnreg <= 255):
        raise ValueError(f"maxnreg must be None or an integer 24 to 255, got {maxnreg!r}")
    warps = num_warps or STORE_MSE_WARPS
    tiles = triton.cdiv(rows, br)

    def programs(budget: int) -> int:  # persistent programs within budget, NB (one a column block) a row program
        return nb * max(1, min(tiles, budget // nb))

    if "wg" in variant:  # store_wg's kernel: 64-row tiles of 4 warps, whole rows a program
        why = None
        if (br, warps, nb, maxnreg) != (store_wg.BR.value, store_wg.NUM_WARPS.value, 1, None):
            why = (f"it runs block_rows={store_wg.BR.value}, num_warps={store_wg.NUM_WARPS.value}, col_blocks=1, "
                   f"no maxnreg; got {br}, {warps}, {nb}, {maxnreg}")
        why = why or store_wg.why_not(key, value, d, m["K0_BITS"], m["V0_BITS"], debug_rotated is not None)
        if why is not None:
            raise ValueError(f"store variant 'wg' cannot serve this call: {why}")
        store_wg.launch(key, value, cache, slot_mapping, params, sm=sm_count(key.device), search="search" in variant,
                        balance="balance" in variant,
                        programs_per_sm=store_wg.PROGRAMS_PER_SM if programs_per_sm is None else pps)
        return
    grid = (programs(sm_count(key.device) * pps),)
    y = debug_rotated if debug_rotated is not None else torch.empty(1, device=key.device, dtype=torch.float32)
    vy = rows * (m["K0_MP"] + m["K1_MP"])  # rotated_debug's layout: key instances, then value instances
    # keys and values may come in different dtypes: each its own number of fp16 parts (XSPLIT)
    common = dict(H=h, BLOCK_SIZE=cache.shape[2], D=d, SYMMETRIC=m["CB_SYMMETRIC"], BR=br,
                  DEBUG_Y=debug_rotated is not None, F32_PARTS=INTERPRET, PREFETCH="prefetch" in variant,
                  FOLD_FIN=bool({"lean", "halves"} & set(variant)), SEARCH="search" in variant, NB=nb,
                  num_warps=warps, **({"maxnreg": maxnreg} if maxnreg else {}))
    if "kv" in variant:  # one launch: half the persistent programs for the keys, half for the values
        half = programs(sm_count(key.device) * pps // 2)  # ("balance": store_wg.key_programs's share)
        k_programs = store_wg.key_programs(2 * half, tiles, m["K0_BITS"], m["V0_BITS"], balance="balance" in variant,
                                           col_blocks=nb)
        _store_mse_kv_kernel[(2 * half,)](
            key, value, cache, slot_mapping, params.k_rot_split, params.v_rot_split, params.k_bnd, params.v_bnd,
            y, y[vy:] if debug_rotated is not None else y,
            key.stride(0), key.stride(1), value.stride(0), value.stride(1),
            cache.stride(0), cache.stride(1), cache.stride(2), rows, k_programs,
            K_BITS=m["K0_BITS"], K_NORM=m["K0_NORM"], K_CODES=m["K0_CODES"],
            K_PERM=_perm(variant, d, m["K0_BITS"], br, warps, nb),
            V_BITS=m["V0_BITS"], V_NORM=m["V0_NORM"], V_CODES=m["V0_CODES"],
            V_PERM=_perm(variant, d, m["V0_BITS"], br, warps, nb), K_XSPLIT=XSPLIT[key.dtype],
            V_XSPLIT=XSPLIT[value.dtype], **common)
        return
    for x, rot, bnd, pfx, yoff in ((key, params.k_rot_split, params.k_bnd, "K0", 0),
                                   (value, params.v_rot_split, params.v_bnd, "V0", vy)):
        _store_mse_kernel[grid](
            x, cache, slot_mapping, rot, bnd, y[yoff:] if debug_rotated is not None else y,
            x.stride(0), x.stride(1), cache.stride(0), cache.stride(1), cache.stride(2),
            rows, BITS=m[f"{pfx}_BITS"], NORM=m[f"{pfx}_NORM"], CODES=m[f"{pfx}_CODES"],
            PERM=_perm(variant, d, m[f"{pfx}_BITS"], br, warps, nb), XSPLIT=XSPLIT[x.dtype], **common)

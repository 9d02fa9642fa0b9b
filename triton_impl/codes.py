"""The codes of a rotated row as the tensor-core stores compute and pack them, shared by store_mse.py and
store_wg.py's Gluon kernel: the codes against the codebook's decision boundaries (SPEC §4.3; y' = y n
compared with beta_k n) and the accumulator column order that gives each lane whole words of the code
field.  No layout is created here, so the jit functions run in either kind of kernel, in their arguments'
layouts."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def search_boundaries(bnd_ptr, BITS: tl.constexpr):
    """The positive boundaries beta_{HALF + k}, k < HALF - 1, that the binary search (SEARCH) compares |y'| n
    with: 3 for 3-bit codes, 7 for 4-bit (3-bit: the last repeated in the unused places), so that a loop over
    row tiles can load them once, before the loop (store_wg), instead of after each tile's product."""
    HALF: tl.constexpr = 1 << (BITS - 1)
    b0 = tl.load(bnd_ptr + HALF)
    b1 = tl.load(bnd_ptr + HALF + 1)
    b2 = tl.load(bnd_ptr + HALF + 2)
    if BITS == 4:
        b3 = tl.load(bnd_ptr + HALF + 3)
        b4 = tl.load(bnd_ptr + HALF + 4)
        b5 = tl.load(bnd_ptr + HALF + 5)
        b6 = tl.load(bnd_ptr + HALF + 6)
    else:
        b3 = b2
        b4 = b2
        b5 = b2
        b6 = b2
    return b0, b1, b2, b3, b4, b5, b6


@triton.jit
def search_codes(acc, den, b0, b1, b2, b3, b4, b5, b6, BITS: tl.constexpr):
    """boundary_codes's binary search (a symmetric 3- or 4-bit codebook) with its boundaries given
    (search_boundaries): the count of positive boundaries below |y| in 2 or 3 comparisons and 1 or 4 selects a
    coordinate, mirrored by the sign of y."""
    HALF: tl.constexpr = 1 << (BITS - 1)
    a = tl.abs(acc)
    # t_k = beta_{HALF + k} n, k < HALF - 1, ascending
    t0 = (b0 * den)[:, None]
    t1 = (b1 * den)[:, None]
    t2 = (b2 * den)[:, None]
    if BITS == 3:
        c1 = a > t1
        c0 = a > tl.where(c1, t2, t0)
        cnt = c1.to(tl.int32) * 2 + c0.to(tl.int32)
    else:
        t3 = (b3 * den)[:, None]
        t4 = (b4 * den)[:, None]
        t5 = (b5 * den)[:, None]
        t6 = (b6 * den)[:, None]
        c2 = a > t3
        c1 = a > tl.where(c2, t5, t1)
        c0 = a > tl.where(c2, tl.where(c1, t6, t4), tl.where(c1, t2, t0))
        cnt = c2.to(tl.int32) * 4 + c1.to(tl.int32) * 2 + c0.to(tl.int32)
    return tl.where(acc > 0, HALF + cnt, HALF - 1 - cnt)


@triton.jit
def boundary_codes(acc, den, bnd_ptr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr, SEARCH: tl.constexpr):
    """idx_j = #{k : y_j > beta_k}, as y'_j > beta_k n (no division per coordinate); acc [rows, N] = y',
    den [rows] = n (1 for x = 0), bnd_ptr the 2^BITS - 1 ascending boundaries.
    SEARCH (symmetric 3- and 4-bit codebooks): the count of positive boundaries below |y| by binary
    search over them (2 or 3 comparisons and 1 or 4 selects a coordinate instead of 3 or 7
    comparisons and adds): the same comparisons of the same numbers, so the same count."""
    HALF: tl.constexpr = 1 << (BITS - 1)
    if SYMMETRIC and SEARCH and (BITS == 3 or BITS == 4):
        b0, b1, b2, b3, b4, b5, b6 = search_boundaries(bnd_ptr, BITS)
        codes = search_codes(acc, den, b0, b1, b2, b3, b4, b5, b6, BITS)
    elif SYMMETRIC:
        # beta_{HALF-1} = 0 and beta_{HALF-1+i} = -beta_{HALF-1-i}: count the positive boundaries
        # below |y| and mirror (an exact tie y = -beta takes the upper code: inside CODE_MARGIN)
        a = tl.abs(acc)
        cnt = (a < 0).to(tl.int32)  # zeros in acc's layout (|y| < 0 never holds, NaN included)
        for k in tl.static_range(HALF, 2 * HALF - 1):
            cnt += (a > (tl.load(bnd_ptr + k) * den)[:, None]).to(tl.int32)
        codes = tl.where(acc > 0, HALF + cnt, HALF - 1 - cnt)
    else:
        codes = (acc > (tl.load(bnd_ptr) * den)[:, None]).to(tl.int32)
        for k in tl.static_range(1, 2 * HALF - 1):
            codes += (acc > (tl.load(bnd_ptr + k) * den)[:, None]).to(tl.int32)
    return codes


@triton.jit
def perm_col(c, D: tl.constexpr, NH: tl.constexpr, HH: tl.constexpr):
    """Coordinate held by column c (< D / NH) of the HH-th of NH column blocks of the permuted product:
    c = 8g + 2q + t holds q G + HH G / NH + 2g + t (G = D / 4).  In the tensor-core accumulator layout a lane
    holds the columns 8g + 2q + t of its rows for one q and every g, t, so it holds G / NH consecutive
    coordinates of each of its rows and packs whole words of their field from its own registers."""
    return ((c // 2) % 4) * (D // 4) + HH * (D // 4 // NH) + 2 * (c // 8) + c % 2


def lane_group_whole_words(d: int, bits: int) -> bool:
    """Whether a lane group's d/4 codes of ``bits`` bits fill whole 32-bit words (the permuted pack's need)."""
    return (d // 4 * bits) % 32 == 0

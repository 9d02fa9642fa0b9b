"""Merging the partial softmax states of a split decode in parallel, then one inverse rotation.

``attn_core._merge_kernel`` merges and rotates in one program per (token, 16 heads) and walks the
splits one at a time for every 16-column chunk: with a few rows and hundreds of splits (one long
sequence) it is a long serial chain.  Here the merge is spread over rows x column chunks and reads
the splits in blocks, and the rotation back runs as its own launch (rotate.rotate_rows; for the few
rows of a decode step its columns kernel).

The shape of a launch follows the rows and splits (plan_merge): few rows (one long sequence) get
fewer rows a program, so that the grid still covers the card, and many splits get wider blocks of
splits, so that a program's chain of dependent loads stays short (the H200 took 20 us for 1 x 128k's
32 rows x 256 splits with 16 rows x 16 splits a step: 8 programs, 32 steps in a row).  The block of
splits sets the order of the sums, so the bits of a row depend on the launch's split count (the
default mode's SPEC section 10 tolerance; the batch-invariant mode has its own merge, launch.run_merge).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from .attn_core import acc_width, store_channels
from .device import sm_count
from .params import KernelParams
from .pdl import launch_options
from .rotate import ROTATE_COLUMNS_ROWS, rotate_rows

MERGE_ROWS = 16  # most rows (token, query head) per program
MERGE_SPLITS = (16, 64, 256)  # splits read per step: the smallest that holds the launch's, capped by MERGE_ELEMS
MERGE_COLS = 32  # accumulator columns per program
MERGE_ELEMS = 8192  # rows x splits x columns of one step's accumulator block (registers of 4 warps)
MERGE_WAVES = 1  # fewer rows a program until the grid has this many programs an SM (or one row a program)
# _merge_rotate_kernel's most rows a program: all of a row's columns a program, the rotation a broadcast sum
# (Triton 3.6, sm_90, tq3: 1 to 8 rows 96-154 registers, no spill; 16 rows with a tl.dot rotation spilled ~2 KB)
MERGE_ROTATE_ROWS = 8


def plan_merge(n_rows: int, num_splits: int, col_chunks: int, sms: int,
               rows_per_program: int | None = None) -> tuple[int, int]:
    """(rows a program BR, splits a step SC) of a merge launch: BR halves from MERGE_ROWS while the
    grid has fewer than MERGE_WAVES programs an SM; SC the smallest of MERGE_SPLITS that holds every
    split, within MERGE_ELEMS (rows_per_program: a fixed BR, a power of two <= MERGE_ROWS, for tests)."""
    if rows_per_program is None:
        br = MERGE_ROWS
        while br > 1 and triton.cdiv(n_rows, br) * col_chunks < MERGE_WAVES * sms:
            br //= 2
    else:
        br = rows_per_program
        if br < 1 or br > MERGE_ROWS or br & (br - 1):
            raise ValueError(f"rows_per_program={rows_per_program!r} is not supported; allowed values: powers of "
                             f"two 1 to {MERGE_ROWS}")
    fits = [sc for sc in MERGE_SPLITS if br * sc * MERGE_COLS <= MERGE_ELEMS] or [MERGE_SPLITS[0]]
    sc = next((sc for sc in fits if sc >= num_splits), fits[-1])
    return br, sc


@triton.jit
def _split_weights(part_ml_ptr, prow, rm, num_splits, BR: tl.constexpr, SC: tl.constexpr):
    """(mu [BR], inv [BR]) of rows prow / num_splits (mask rm): mu = max_s m_s (0 where every split is empty),
    inv = 1 / l, l = sum_s exp(m_s - mu) l_s (NaN where l = 0), the splits SC at a time."""
    m = tl.full((BR,), float("-inf"), tl.float32)
    lsum = tl.zeros((BR,), tl.float32)
    for s0 in range(0, num_splits, SC):
        s = s0 + tl.arange(0, SC)
        ok = rm[:, None] & (s < num_splits)[None, :]
        ms = tl.load(part_ml_ptr + (prow[:, None] + s[None, :]) * 2, mask=ok, other=float("-inf"))
        ls = tl.load(part_ml_ptr + (prow[:, None] + s[None, :]) * 2 + 1, mask=ok, other=0.0)
        mn = tl.maximum(m, tl.max(ms, axis=1))
        mu = tl.where(mn == float("-inf"), 0.0, mn)
        lsum = lsum * tl.exp(m - mu) + tl.sum(tl.where(ms == float("-inf"), 0.0, ls * tl.exp(ms - mu[:, None])),
                                              axis=1)
        m = mn
    mu = tl.where(m == float("-inf"), 0.0, m)
    inv = tl.where(lsum > 0, 1.0 / tl.where(lsum > 0, lsum, 1.0), float("nan"))
    return mu, inv


@triton.jit
def _merged_columns(part_acc_ptr, part_ml_ptr, prow, rm, num_splits, mu, inv, cols, BR: tl.constexpr,
                    SC: tl.constexpr, CW: tl.constexpr, DACC: tl.constexpr):
    """o [BR, CW] = sum_s exp(m_s - mu) acc_s[cols] * inv (a split that saw nothing, m_s = -inf, weighs 0)."""
    o = tl.zeros((BR, CW), tl.float32)
    for s0 in range(0, num_splits, SC):
        s = s0 + tl.arange(0, SC)
        ok = rm[:, None] & (s < num_splits)[None, :]
        ms = tl.load(part_ml_ptr + (prow[:, None] + s[None, :]) * 2, mask=ok, other=float("-inf"))
        w = tl.where(ms == float("-inf"), 0.0, tl.exp(ms - mu[:, None]) * inv[:, None])
        a = tl.load(part_acc_ptr + (prow[:, None, None] + s[None, :, None]) * DACC + cols[None, None, :],
                    mask=ok[:, :, None], other=0.0)
        o += tl.sum(w[:, :, None] * a, axis=1)
    return o


@triton.jit(do_not_specialize=["n_rows", "num_splits"])
def _merge_splits_kernel(part_acc_ptr, part_ml_ptr, o_ptr, n_rows, num_splits,
                         BR: tl.constexpr, SC: tl.constexpr, CW: tl.constexpr, DACC: tl.constexpr,
                         PDL: tl.constexpr = False):
    # o [rows, DACC] = sum_s exp(m_s - m) acc_s / l, m = max_s m_s, l = sum_s exp(m_s - m) l_s, from
    # part_ml [rows * S, 2] = (m_s, l_s) and part_acc [rows * S, DACC].  A split that saw nothing
    # (m_s = -inf) weighs 0; a row with l = 0 gets NaN (as _merge_kernel).  One program: BR rows,
    # columns [c0, c0 + CW), the splits SC at a time.  Grid (cdiv(n_rows, BR), DACC // CW).  PDL: a
    # programmatic dependent launch (pdl.py): wait for the decode kernel, let the inverse rotation start.
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rm = rows < n_rows
    cols = tl.program_id(1) * CW + tl.arange(0, CW)
    prow = rows.to(tl.int64) * num_splits
    mu, inv = _split_weights(part_ml_ptr, prow, rm, num_splits, BR, SC)
    o = _merged_columns(part_acc_ptr, part_ml_ptr, prow, rm, num_splits, mu, inv, cols, BR, SC, CW, DACC)
    tl.store(o_ptr + rows[:, None].to(tl.int64) * DACC + cols[None, :], o, mask=rm[:, None])


def plan_merge_rotate(n_rows: int, num_splits: int, dacc: int, sms: int) -> tuple[int, int, int, int]:
    """(rows a program BR, splits a step SC, output columns a rotation step JC, warps) of _merge_rotate_kernel:
    BR halves from MERGE_ROTATE_ROWS while the grid has fewer than MERGE_WAVES programs an SM (every program
    holds all of its rows' columns, so the rows alone spread the work); at one or two rows a program (one long
    sequence: each program reads all its splits' accumulators) 8 warps, so twice the loads in flight; SC and
    JC keep a step's block (BR x SC x DACC, BR x DACC x JC) within MERGE_ELEMS a 4 warps."""
    br = MERGE_ROTATE_ROWS
    while br > 1 and triton.cdiv(n_rows, br) < MERGE_WAVES * sms:
        br //= 2
    warps = 8 if br <= 2 else 4
    elems = MERGE_ELEMS * warps // 4
    sc = max(1, min(triton.next_power_of_2(num_splits), elems // (br * dacc)))
    jc = max(1, min(dacc, elems // (br * dacc)))
    return br, sc, jc, warps


@triton.jit(do_not_specialize=["n_rows", "num_splits"])
def _merge_rotate_kernel(part_acc_ptr, part_ml_ptr, y_ptr, sy0, sy1, n_rows, heads, num_splits, rot_ptr, chan_ptr,
                         BR: tl.constexpr, SC: tl.constexpr, JC: tl.constexpr, DACC: tl.constexpr,
                         MPMAX: tl.constexpr, M0: tl.constexpr, IDCH0: tl.constexpr, OUT_BF16: tl.constexpr,
                         PDL: tl.constexpr = False):
    # AttnConfig.mma_output_rotation="fused": _merge_splits_kernel's merge of BR rows over all DACC columns
    # (= the one value instance's padded width MP0), then the inverse rotation of those rows in the same
    # program, y[r, chan[j]] = sum_c o[r, c] Pi[c, j] in fp32 (as _rotate_columns_kernel's "fma": products and
    # sums in float32, in another order).  Grid (cdiv(n_rows, BR),).  PDL: as _merge_splits_kernel's.
    if PDL:
        gdc_wait()
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rm = rows < n_rows
    cols = tl.arange(0, DACC)
    prow = rows.to(tl.int64) * num_splits
    mu, inv = _split_weights(part_ml_ptr, prow, rm, num_splits, BR, SC)
    o = _merged_columns(part_acc_ptr, part_ml_ptr, prow, rm, num_splits, mu, inv, cols, BR, SC, DACC, DACC)
    o = tl.where((cols < M0)[None, :], o, 0.0)  # the instance's padding columns take no part
    yrow = y_ptr + (rows // heads).to(tl.int64) * sy0 + (rows % heads).to(tl.int64) * sy1
    for j0 in tl.static_range(0, DACC, JC):
        j = j0 + tl.arange(0, JC)
        pi = tl.load(rot_ptr + cols[:, None] * MPMAX + j[None, :])  # Pi[c, j]
        y = tl.sum(o[:, :, None] * pi[None, :, :], axis=1)
        store_channels(yrow, y, j, rm, chan_ptr, M0, IDCH0, OUT_BF16)


def merge_rotate_applies(params: KernelParams) -> bool:
    """Whether _merge_rotate_kernel covers the layer's values: one instance (no group values), its padded width
    the accumulator's, at most 128 wide."""
    c = params.rotation_constexprs("value") if not params.meta["V_GROUP"] else None
    return c is not None and c["NI"] == 1 and c["MP0"] == acc_width(params) and c["MPMAX"] <= 128


def merge_splits(part_acc: torch.Tensor, part_ml: torch.Tensor, out: torch.Tensor, params: KernelParams, *,
                 num_q_heads: int, num_splits: int, rows_per_program: int | None = None,
                 output_rotation: str = "fma", pdl: bool = False) -> torch.Tensor:
    """out [T, Hq, D] from the splits' partial states of T * Hq rows (the layout _split_kernel and
    decode_mma write): merge (one fp32 workspace [T, Hq, DACC]), then the inverse rotation
    (output_rotation: its arithmetic for the few rows of a decode step, rotate.COLUMNS_PRECISIONS; "fused": in the
    merge's programs, one launch, where merge_rotate_applies, else "fma").
    rows_per_program: plan_merge's BR fixed (tests); default from the rows and the device.  pdl: programmatic
    dependent launches (AttnConfig.mma_pdl, pdl.py): the merge after the decode kernel, the inverse rotation
    after the merge (each waits for the one before it: the same bits)."""
    dacc = acc_width(params)
    n_rows = out.shape[0] * num_q_heads
    if output_rotation == "fused" and merge_rotate_applies(params) and rows_per_program is None:
        br, sc, jc, warps = plan_merge_rotate(n_rows, num_splits, dacc, sm_count(out.device))
        c = params.rotation_constexprs("value")
        _merge_rotate_kernel[(triton.cdiv(n_rows, br),)](
            part_acc, part_ml, out, out.stride(0), out.stride(1), n_rows, num_q_heads, num_splits, params.v_rot,
            params.v_chan, BR=br, SC=sc, JC=jc, DACC=dacc, MPMAX=c["MPMAX"], M0=c["M0"], IDCH0=c["IDCH0"],
            OUT_BF16=out.dtype == torch.bfloat16, PDL=bool(pdl), num_warps=warps, **launch_options(pdl))
        return out
    if output_rotation == "fused":  # a layout the fused kernel does not cover: the columns kernel's fp32 FMA
        output_rotation = "fma"
    cw = MERGE_COLS  # the widest power-of-two chunk that divides the width (a sum of powers of two >= 16)
    while dacc % cw:
        cw //= 2
    o = torch.empty((out.shape[0], num_q_heads, dacc), dtype=torch.float32, device=out.device)
    br, sc = plan_merge(n_rows, num_splits, dacc // cw, sm_count(out.device), rows_per_program)
    _merge_splits_kernel[(triton.cdiv(n_rows, br), dacc // cw)](
        part_acc, part_ml, o, n_rows, num_splits, BR=br, SC=sc, CW=cw, DACC=dacc, PDL=bool(pdl), num_warps=4,
        **launch_options(pdl))
    if params.meta["V_GROUP"]:  # group values: the accumulator is the output
        out.copy_(o[:, :, : params.head_size])
        return out
    return rotate_rows(o, params, out, inverse=True, few_rows=n_rows <= ROTATE_COLUMNS_ROWS,
                       columns_precision=output_rotation, pdl=pdl)

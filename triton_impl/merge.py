"""Merging the partial softmax states of a split decode in parallel, then one inverse rotation.

``attn_core._merge_kernel`` merges and rotates in one program per (token, 16 heads) and walks the
splits one at a time for every 16-column chunk: with a few rows and hundreds of splits (one long
sequence) it is a long serial chain.  Here the merge is spread over rows x column chunks and reads
the splits in blocks, and the rotation back runs as its own launch (rotate.rotate_rows).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attn_core import acc_width
from .params import KernelParams
from .rotate import rotate_rows

MERGE_ROWS = 16  # rows (token, query head) per program
MERGE_SPLITS = 16  # splits read per step
MERGE_COLS = 32  # accumulator columns per program


@triton.jit(do_not_specialize=["n_rows", "num_splits"])
def _merge_splits_kernel(part_acc_ptr, part_ml_ptr, o_ptr, n_rows, num_splits,
                         BR: tl.constexpr, SC: tl.constexpr, CW: tl.constexpr, DACC: tl.constexpr):
    # o [rows, DACC] = sum_s exp(m_s - m) acc_s / l, m = max_s m_s, l = sum_s exp(m_s - m) l_s, from
    # part_ml [rows * S, 2] = (m_s, l_s) and part_acc [rows * S, DACC].  A split that saw nothing
    # (m_s = -inf) weighs 0; a row with l = 0 gets NaN (as _merge_kernel).  One program: BR rows,
    # columns [c0, c0 + CW), the splits SC at a time.  Grid (cdiv(n_rows, BR), DACC // CW).
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rm = rows < n_rows
    cols = tl.program_id(1) * CW + tl.arange(0, CW)
    prow = rows.to(tl.int64) * num_splits
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
    o = tl.zeros((BR, CW), tl.float32)
    for s0 in range(0, num_splits, SC):
        s = s0 + tl.arange(0, SC)
        ok = rm[:, None] & (s < num_splits)[None, :]
        ms = tl.load(part_ml_ptr + (prow[:, None] + s[None, :]) * 2, mask=ok, other=float("-inf"))
        w = tl.where(ms == float("-inf"), 0.0, tl.exp(ms - mu[:, None]) * inv[:, None])
        a = tl.load(part_acc_ptr + (prow[:, None, None] + s[None, :, None]) * DACC + cols[None, None, :],
                    mask=ok[:, :, None], other=0.0)
        o += tl.sum(w[:, :, None] * a, axis=1)
    tl.store(o_ptr + rows[:, None].to(tl.int64) * DACC + cols[None, :], o, mask=rm[:, None])


def merge_splits(part_acc: torch.Tensor, part_ml: torch.Tensor, out: torch.Tensor, params: KernelParams, *,
                 num_q_heads: int, num_splits: int) -> torch.Tensor:
    """out [T, Hq, D] from the splits' partial states of T * Hq rows (the layout _split_kernel and
    decode_mma write): merge (one fp32 workspace [T, Hq, DACC]), then the inverse rotation."""
    dacc = acc_width(params)
    n_rows = out.shape[0] * num_q_heads
    cw = MERGE_COLS  # the widest power-of-two chunk that divides the width (a sum of powers of two >= 16)
    while dacc % cw:
        cw //= 2
    o = torch.empty((out.shape[0], num_q_heads, dacc), dtype=torch.float32, device=out.device)
    _merge_splits_kernel[(triton.cdiv(n_rows, MERGE_ROWS), dacc // cw)](
        part_acc, part_ml, o, n_rows, num_splits, BR=MERGE_ROWS, SC=MERGE_SPLITS, CW=cw, DACC=dacc, num_warps=4)
    if params.meta["V_GROUP"]:  # group values: the accumulator is the output
        out.copy_(o[:, :, : params.head_size])
        return out
    return rotate_rows(o, params, out, inverse=True)

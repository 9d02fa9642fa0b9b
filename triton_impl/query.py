"""Rotate each query row once per attention call: q_rot = Pi q (per key
instance) and, for prod keys, q_s = S q_rot.  Output: a float32 workspace
[num_tokens * num_q_heads, DQ] whose segments the attention kernels read."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents

from turboquant import format as tqf

from .device import sm_count
from .params import KC, KernelParams
from .rotate import _operand_parts, _product

QUERY_BR = 16
QUERY_JC = 32  # output columns a program (query_columns; every program of _rotate_query_tc_kernel)
QUERY_ROTATIONS = ("fma", "bf16x2")  # rotate_query(rotation=...)
MMA_QUERY_ROTATIONS = ("auto",) + QUERY_ROTATIONS  # AttnConfig.mma_query_rotation


def query_layout(params: KernelParams) -> dict:
    """Segment offsets of the rotated-query workspace: K0, K1, S0, S1."""
    m = params.meta
    off = m["K0_MP"]
    qo_k1 = off if m["K_NI"] == 2 else 0
    if m["K_NI"] == 2:
        off += m["K1_MP"]
    qo_s0 = off if m["K0_QJL"] else 0
    if m["K0_QJL"]:
        off += m["K0_MP"]
    qo_s1 = off if m["K1_QJL"] else 0
    if m["K1_QJL"]:
        off += m["K1_MP"]
    return {"DQ": off, "QO_K1": qo_k1, "QO_S0": qo_s0, "QO_S1": qo_s1}


@triton.jit
def _rotate_one(base, rows, rm, qbuf_ptr, rot_ptr, qjl_ptr, chan_ptr,
                DQ: tl.constexpr, QO: tl.constexpr, QOS: tl.constexpr, MPMAX: tl.constexpr,
                M: tl.constexpr, MP: tl.constexpr, QJL: tl.constexpr, IDCH: tl.constexpr, JC: tl.constexpr):
    # output columns [program_id(1) * JC, + JC) of this instance (JC = MP with QJL: S reads all of y)
    j = tl.program_id(1) * JC + tl.arange(0, JC)
    y = tl.zeros((rows.shape[0], JC), tl.float32)
    for k0 in range(0, MP, KC):
        kk = k0 + tl.arange(0, KC)
        if IDCH:
            ch = kk
        else:
            ch = tl.load(chan_ptr + kk)
        xc = tl.load(base[:, None] + ch[None, :], mask=rm[:, None] & (kk < M)[None, :], other=0.0).to(tl.float32)
        pc = tl.load(rot_ptr + j[None, :] * MPMAX + kk[:, None])  # Pi^T[kk, j]
        y = tl.dot(xc, pc, y, input_precision="ieee")
    out = qbuf_ptr + rows[:, None].to(tl.int64) * DQ + j[None, :]
    tl.store(out + QO, y, mask=rm[:, None])
    if QJL:
        tl.debug_barrier()  # the K chunks of y are read back from qbuf
        z = tl.zeros((rows.shape[0], JC), tl.float32)
        for k0 in range(0, MP, KC):
            kk = k0 + tl.arange(0, KC)
            yc = tl.load(qbuf_ptr + rows[:, None].to(tl.int64) * DQ + QO + kk[None, :], mask=rm[:, None], other=0.0)
            sc = tl.load(qjl_ptr + j[None, :] * MPMAX + kk[:, None])  # S^T[kk, j]
            z = tl.dot(yc, sc, z, input_precision="ieee")
        tl.store(out + QOS, z, mask=rm[:, None])


@triton.jit
def _rotate_query_kernel(
    q_ptr, stride_qt, stride_qh, qbuf_ptr, n_rows, num_q_heads, k_rot, k_qjl, k_chan,
    BR: tl.constexpr, DQ: tl.constexpr, QO_K1: tl.constexpr, QO_S0: tl.constexpr, QO_S1: tl.constexpr,
    K_NI: tl.constexpr, K_MPMAX: tl.constexpr, K_MAT_STRIDE: tl.constexpr,
    K0_M: tl.constexpr, K0_MP: tl.constexpr, K0_QJL: tl.constexpr, K0_IDCH: tl.constexpr,
    K1_M: tl.constexpr, K1_MP: tl.constexpr, K1_QJL: tl.constexpr, K1_IDCH: tl.constexpr, JC: tl.constexpr,
    LAUNCH_DEPENDENTS: tl.constexpr = False,
):
    # q [T, Hq, D] (fp16/bf16/fp32) -> qbuf [T*Hq, DQ] fp32: per key instance
    # y = q[C_i] @ Pi_i^T (fp32 IEEE) and, for QJL, y @ S_i^T.  Padded
    # columns come out exactly 0.  Grid: (cdiv(T*Hq, BR), K0_MP // JC), BR rows x JC output columns
    # each (JC < K0_MP only for one instance without QJL: query_columns).  LAUNCH_DEPENDENTS: the next
    # launch, if a programmatic dependent one, may start at once (AttnConfig.mma_pdl, pdl.py).
    if LAUNCH_DEPENDENTS:
        gdc_launch_dependents()
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rm = rows < n_rows
    t = (rows // num_q_heads).to(tl.int64)
    hh = (rows % num_q_heads).to(tl.int64)
    base = q_ptr + t * stride_qt + hh * stride_qh
    _rotate_one(base, rows, rm, qbuf_ptr, k_rot, k_qjl, k_chan, DQ, 0, QO_S0, K_MPMAX,
                K0_M, K0_MP, K0_QJL, K0_IDCH, JC)
    if K_NI == 2:
        _rotate_one(base, rows, rm, qbuf_ptr, k_rot + K_MAT_STRIDE, k_qjl + K_MAT_STRIDE,
                    k_chan + K_MPMAX, DQ, QO_K1, QO_S1, K_MPMAX, K1_M, K1_MP, K1_QJL, K1_IDCH, K1_MP)


@triton.jit
def _rotate_query_tc_kernel(q_ptr, stride_qt, stride_qh, qbuf_ptr, n_rows, num_q_heads, k_rot, k_chan,
                            BR: tl.constexpr, DQ: tl.constexpr, K_MPMAX: tl.constexpr, K0_M: tl.constexpr,
                            K0_MP: tl.constexpr, K0_IDCH: tl.constexpr, JC: tl.constexpr,
                            LAUNCH_DEPENDENTS: tl.constexpr = False):
    # bf16 q [T, Hq, D] -> qbuf [T*Hq, DQ] fp32 for ONE key instance without QJL (DQ = K0_MP): columns
    # [program_id(1) * JC, + JC) of y = q[C] @ Pi^T as one tensor-core product of bf16 parts (rotate._product
    # "bf16x2": q exact in bf16, Pi^T = hi + lo to ~2^-17 relative, fp32 accumulation) instead of
    # _rotate_query_kernel's chain of K-chunked fp32 FMA dots.  Grid (cdiv(T*Hq, BR), K0_MP // JC).
    # LAUNCH_DEPENDENTS: as _rotate_query_kernel's
    if LAUNCH_DEPENDENTS:
        gdc_launch_dependents()
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rm = rows < n_rows
    base = q_ptr + (rows // num_q_heads).to(tl.int64) * stride_qt + (rows % num_q_heads).to(tl.int64) * stride_qh
    k = tl.arange(0, K0_MP)
    if K0_IDCH:
        ch = k
    else:
        ch = tl.load(k_chan + k)
    x = tl.load(base[:, None] + ch[None, :], mask=rm[:, None] & (k < K0_M)[None, :], other=0.0).to(tl.float32)
    j = tl.program_id(1) * JC + tl.arange(0, JC)
    a = tl.load(k_rot + j[None, :] * K_MPMAX + k[:, None])  # Pi^T[k, j]
    a_hi, a_lo = _operand_parts(a, "bf16x2")
    y = _product(x, a_hi, a_lo, "bf16x2", False)
    tl.store(qbuf_ptr + rows[:, None].to(tl.int64) * DQ + j[None, :], y, mask=rm[:, None])


def query_tc_unsupported(params: KernelParams, dtype: torch.dtype) -> str | None:
    """Why _rotate_query_tc_kernel cannot rotate these queries (AttnConfig.mma_query_rotation =
    "bf16x2"), or None."""
    m = params.meta
    if dtype != torch.bfloat16:
        return f"query dtype {dtype} (bf16 only: its parts are exact bf16 operands)"
    if m["K_NI"] != 1 or m["K0_QJL"] or m["K0_MP"] > 128:
        return "one key instance without QJL, at most 128 wide, only"
    return None


def mma_query_rotation(choice: str, params: KernelParams, dtype: torch.dtype) -> str:
    """rotate_query's rotation for a decode step the mma kernel serves, from AttnConfig.mma_query_rotation:
    "auto" is "bf16x2" where _rotate_query_tc_kernel can rotate these queries, else "fma"."""
    tqf.check_choice("mma_query_rotation", choice, MMA_QUERY_ROTATIONS)
    if choice == "auto":
        return "fma" if query_tc_unsupported(params, dtype) is not None else "bf16x2"
    return choice


def query_columns(params: KernelParams, n_rows: int, sms: int) -> int:
    """Output columns a _rotate_query_kernel program computes: QUERY_JC where one key instance without
    QJL is wider than that and its row programs alone would not fill one wave of the card (the few
    rows of a decode step: the H200 took 11.5 us for 1 x 128k's 32 rows in two programs of all 128
    columns, 6.6 us in eight of 32; but 21.9 us, against 12.1, for 64 x 1k's 2,048 rows in 512
    programs), else the whole instance.  Each output is the same sum in the same order either way."""
    m = params.meta
    if m["K_NI"] == 1 and not m["K0_QJL"] and m["K0_MP"] > QUERY_JC \
            and triton.cdiv(n_rows, QUERY_BR) * (m["K0_MP"] // QUERY_JC) <= sms:
        return QUERY_JC
    return m["K0_MP"]


def rotate_query(query: torch.Tensor, params: KernelParams, *, few_rows: bool = False,
                 rotation: str = "fma", launch_dependents: bool = False) -> torch.Tensor:
    """query [T, Hq, D] -> float32 [T*Hq, DQ] (see query_layout).  few_rows: a decode step's default
    mode may spread the output columns over programs (query_columns); the other callers keep one
    program per row block, so the batch-invariant launches never depend on the row count.
    rotation: "fma" (fp32 FMA dots) or "bf16x2" (one tensor-core product a program, bf16 queries of
    one-instance presets without QJL: query_tc_unsupported; AttnConfig.mma_query_rotation).
    launch_dependents: every program lets the next launch, if a programmatic dependent one, start at once
    (AttnConfig.mma_pdl, pdl.py: the decode kernel then builds its tables while this one runs)."""
    tqf.check_choice("mma_query_rotation", rotation, QUERY_ROTATIONS)
    why = query_tc_unsupported(params, query.dtype) if rotation == "bf16x2" else None
    if why is not None:
        raise ValueError(f"mma_query_rotation='bf16x2' cannot rotate these queries: {why}; allowed values: 'fma'")
    lay = query_layout(params)
    t, hq, _ = query.shape
    n = t * hq
    qbuf = torch.empty((max(n, 1), lay["DQ"]), dtype=torch.float32, device=query.device)
    if n == 0:
        return qbuf
    if query.stride(2) != 1:
        query = query.contiguous()
    if rotation == "bf16x2":
        m = params.meta
        jc = min(QUERY_JC, m["K0_MP"])
        _rotate_query_tc_kernel[(triton.cdiv(n, QUERY_BR), m["K0_MP"] // jc)](
            query, query.stride(0), query.stride(1), qbuf, n, hq, params.k_rot, params.k_chan, BR=QUERY_BR,
            DQ=lay["DQ"], K_MPMAX=m["K_MPMAX"], K0_M=m["K0_M"], K0_MP=m["K0_MP"], K0_IDCH=m["K0_IDCH"], JC=jc,
            LAUNCH_DEPENDENTS=bool(launch_dependents), num_warps=4)
        return qbuf
    jc = query_columns(params, n, sm_count(query.device)) if few_rows else params.meta["K0_MP"]
    grid = (triton.cdiv(n, QUERY_BR), params.meta["K0_MP"] // jc)
    _rotate_query_kernel[grid](
        query, query.stride(0), query.stride(1), qbuf, n, hq, params.k_rot, params.k_qjl, params.k_chan,
        BR=QUERY_BR, **lay, **params.constexprs("query"), JC=jc, LAUNCH_DEPENDENTS=bool(launch_dependents),
        num_warps=4,
    )
    return qbuf

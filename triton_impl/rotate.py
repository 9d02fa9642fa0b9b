"""Rotating rows of query heads by the layer's rotations Π_i, forward (q' = Π q, the query side of the
dense prefill path) or inverse (out = Πᵀ o', values back from the rotated domain): one launch for
any number of rows, on tensor cores with an error-compensated split on a GPU (SPEC §10 tolerances).
Used by the prefill path (prefill.py) and the split merge (merge.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_wait

from turboquant import format as tqf

from .attn_core import round_bf16, store_channels
from .device import sm_count
from .params import INTERPRET, KC, KernelParams, next_pow2
from .pdl import launch_options

ROTATE_BR = 64  # rows per _rotate_kernel program (H200, 2026-12-03: 64 rows, 3xTF32 took 254 us for 8k x 32 rows)
ROTATE_BR_WIDE = 32  # rows per program where an instance is wider than 128 (shared memory)
ROTATE_PROGRAMS_PER_SM = 2  # _rotate_persistent_kernel: each holds its rotation's operand(s) once
ROTATE_PERSISTENT_BR, ROTATE_PERSISTENT_WARPS = 32, 4  # Triton 3.6 sm_90: 84 KB shared, 2 programs an SM
# rotate_rows(inverse=True, few_rows=True) (merge.merge_splits of at most ROTATE_COLUMNS_ROWS rows: a decode
# step) takes _rotate_columns_kernel: ROTATE_COLUMNS_BR rows x ROTATE_COLUMNS_JC output columns a program, no
# operand held per program (the persistent kernel spent 7-8 us on the H200 for the 32 to 2,048 rows of a
# decode step, mostly loading and splitting its operand)
ROTATE_COLUMNS_ROWS, ROTATE_COLUMNS_BR, ROTATE_COLUMNS_JC = 8192, 16, 32
# that kernel's arithmetic (AttnConfig.mma_output_rotation): "fma" (fp32 FMA dots over K chunks of KC) or
# "bf16x3" (o' and Pi each split into bf16 hi + lo, o_hi Pi_hi + o_hi Pi_lo + o_lo Pi_hi on tensor cores
# with fp32 accumulation: each part to ~2^-17 relative, the dropped o_lo Pi_lo ~2^-18, far below the bf16
# output's rounding)
COLUMNS_PRECISIONS = ("fma", "bf16x3")
# AttnConfig.mma_output_rotation: COLUMNS_PRECISIONS, or "fused": the inverse rotation inside the merge's own
# programs (merge._merge_rotate_kernel, fp32 FMA; one launch instead of two)
OUTPUT_ROTATIONS = COLUMNS_PRECISIONS + ("fused",)


@triton.jit
def _operand_parts(a, PREC: tl.constexpr):
    """The rotation's float32 MMA operand as (hi, lo) bf16 parts for "bf16x2" (a = hi + lo to ~2^-17
    relative), else (a, a) unchanged."""
    if PREC == "bf16x2":
        hi = a.to(tl.bfloat16)
        lo = (a - hi.to(tl.float32)).to(tl.bfloat16)
    else:
        hi = a
        lo = a
    return hi, lo


@triton.jit
def _product(x, a_hi, a_lo, PREC: tl.constexpr, OUT_BF16: tl.constexpr):
    """x [BR, K] float32 times the operand: "bf16x2" (x bf16-exact) x a_hi + x a_lo on bf16 tensor
    cores with fp32 accumulation; else tl.dot(x, a) at input_precision PREC.  OUT_BF16: rounded to
    bf16 values (round_bf16)."""
    if PREC == "bf16x2":
        xb = x.to(tl.bfloat16)
        y = tl.dot(xb, a_lo, tl.dot(xb, a_hi))
    else:
        y = tl.dot(x, a_hi, input_precision=PREC)
    if OUT_BF16:
        y = round_bf16(y)
    return y


@triton.jit
def _product_bf16x3(x, a, F32_PARTS: tl.constexpr):
    """x [BR, K] @ a [K, N], both float32, as three bf16 tensor-core products (COLUMNS_PRECISIONS), small
    terms first. F32_PARTS (the CPU interpreter, whose bf16 dots are not trustworthy): the same bf16 parts,
    multiplied as float32 (their products are exact either way)."""
    x_hi, x_lo = _operand_parts(x, "bf16x2")
    a_hi, a_lo = _operand_parts(a, "bf16x2")
    if F32_PARTS:
        y = tl.dot(x_hi.to(tl.float32), a_lo.to(tl.float32), input_precision="ieee")
        y = tl.dot(x_lo.to(tl.float32), a_hi.to(tl.float32), y, input_precision="ieee")
        return tl.dot(x_hi.to(tl.float32), a_hi.to(tl.float32), y, input_precision="ieee")
    y = tl.dot(x_hi, a_lo)
    y = tl.dot(x_lo, a_hi, y)
    return tl.dot(x_hi, a_hi, y)


@triton.jit
def _rotate_instance(xrow, yrow, rm, rot_ptr, chan_ptr, SEG: tl.constexpr, MPMAX: tl.constexpr, M: tl.constexpr,
                     MP: tl.constexpr, IDCH: tl.constexpr, INVERSE: tl.constexpr, PREC: tl.constexpr,
                     OUT_BF16: tl.constexpr):
    """Forward: y[SEG + j] = sum_c x[chan[c]] Pi[j, c] (q' = Pi q).  INVERSE: y[chan[j]] =
    sum_c x[SEG + c] Pi[c, j] (out = Pi^T o').  Rows xrow/yrow are [BR] pointers.  PREC "bf16x2"
    (x exact in bf16: bf16 queries, the dense kernel's bf16 output): Pi = Pi_hi + Pi_lo, both bf16,
    two bf16 MMAs into fp32 (Pi to ~2^-17); else tl.dot's input_precision."""
    j = tl.arange(0, MP)
    jm = j < M
    if INVERSE:
        x = tl.load(xrow[:, None] + SEG + j[None, :], mask=rm[:, None] & jm[None, :], other=0.0).to(tl.float32)
    else:
        if IDCH:
            ch = j
        else:
            ch = tl.load(chan_ptr + j)
        x = tl.load(xrow[:, None] + ch[None, :], mask=rm[:, None] & jm[None, :], other=0.0).to(tl.float32)
    # output columns in chunks of NCH (instances wider than 128: the operands must fit shared memory)
    NCH: tl.constexpr = MP if MP <= 128 else 32
    for n0 in tl.static_range(0, MP, NCH):
        jn = n0 + tl.arange(0, NCH)
        if INVERSE:
            a = tl.load(rot_ptr + j[:, None] * MPMAX + jn[None, :])  # Pi[c, jn]
        else:
            a = tl.load(rot_ptr + jn[None, :] * MPMAX + j[:, None])  # Pi^T[c, jn] = Pi[jn, c]
        a_hi, a_lo = _operand_parts(a, PREC)
        y = _product(x, a_hi, a_lo, PREC, OUT_BF16)
        if INVERSE:
            if IDCH:
                chn = jn
            else:
                chn = tl.load(chan_ptr + jn)
            tl.store(yrow[:, None] + chn[None, :], y.to(yrow.dtype.element_ty),
                     mask=rm[:, None] & (jn < M)[None, :])
        else:  # columns M..MP are exactly 0 (Pi is zero padded)
            tl.store(yrow[:, None] + SEG + jn[None, :], y.to(yrow.dtype.element_ty), mask=rm[:, None])


@triton.jit
def _row_tile(tile, BR: tl.constexpr, n_rows, heads, x_ptr, sx0, sx1, y_ptr, sy0, sy1):
    """Row pointers [BR] of tile ``tile`` (rows r = t * heads + h of x and y) and the valid-row mask."""
    rows = tile * BR + tl.arange(0, BR)
    t = (rows // heads).to(tl.int64)
    hh = (rows % heads).to(tl.int64)
    return x_ptr + t * sx0 + hh * sx1, y_ptr + t * sy0 + hh * sy1, rows < n_rows


@triton.jit
def zero_tail(yrow, rm, BR: tl.constexpr, TAIL0: tl.constexpr, TAIL: tl.constexpr, TAILP: tl.constexpr):
    """Rows yrow [BR] (mask rm): columns [TAIL0, TAIL0 + TAIL) past the instances are set to zero
    (the forward rotation's q', prefill's K' and V' workspace)."""
    if TAIL > 0:
        jt = tl.arange(0, TAILP)
        tl.store(yrow[:, None] + TAIL0 + jt[None, :], tl.zeros((BR, TAILP), yrow.dtype.element_ty),
                 mask=rm[:, None] & (jt < TAIL)[None, :])


@triton.jit
def _rotate_kernel(x_ptr, sx0, sx1, y_ptr, sy0, sy1, n_rows, heads, rot_ptr, chan_ptr,
                   BR: tl.constexpr, MPMAX: tl.constexpr, MAT_STRIDE: tl.constexpr, NI: tl.constexpr,
                   M0: tl.constexpr, MP0: tl.constexpr, IDCH0: tl.constexpr,
                   M1: tl.constexpr, MP1: tl.constexpr, IDCH1: tl.constexpr,
                   TAIL0: tl.constexpr, TAIL: tl.constexpr, TAILP: tl.constexpr,
                   INVERSE: tl.constexpr, PREC: tl.constexpr, OUT_BF16: tl.constexpr):
    # Rows r = t * heads + h of x [T, heads, *] (strides sx0, sx1, unit last) times each instance's
    # rotation into y [T, heads, *] (strides sy0, sy1).  Forward (q -> q'): channels gathered,
    # instance i written to columns [SEG_i, SEG_i + MP_i) (SEG_1 = MP0), columns
    # [TAIL0, TAIL0 + TAIL) zeroed.  INVERSE (o' -> out): columns read from the segments,
    # channels scattered.  Grid (cdiv(n_rows, BR),).
    xrow, yrow, rm = _row_tile(tl.program_id(0), BR, n_rows, heads, x_ptr, sx0, sx1, y_ptr, sy0, sy1)
    _rotate_instance(xrow, yrow, rm, rot_ptr, chan_ptr, 0, MPMAX, M0, MP0, IDCH0, INVERSE, PREC, OUT_BF16)
    if NI == 2:
        _rotate_instance(xrow, yrow, rm, rot_ptr + MAT_STRIDE, chan_ptr + MPMAX, MP0, MPMAX, M1, MP1, IDCH1,
                         INVERSE, PREC, OUT_BF16)
    zero_tail(yrow, rm, BR, TAIL0, TAIL, TAILP)


@triton.jit
def _rotate_persistent_kernel(x_ptr, sx0, sx1, y_ptr, sy0, sy1, n_rows, heads, rot_ptr, chan_ptr, BR: tl.constexpr,
                              MPMAX: tl.constexpr, M0: tl.constexpr, MP0: tl.constexpr, IDCH0: tl.constexpr,
                              TAIL0: tl.constexpr, TAIL: tl.constexpr, TAILP: tl.constexpr,
                              INVERSE: tl.constexpr, PREC: tl.constexpr, OUT_BF16: tl.constexpr):
    # _rotate_kernel's rows and layouts for ONE instance of width MP0 <= 128 (NI == 1; the presets
    # whose rotation covers the whole head), persistent: the rotation's MMA operand (Pi^T or Pi,
    # split hi/lo for "bf16x2") is loaded and split once per program, then program p rotates row
    # tiles p, p + programs, ...  Same products, same rounding as _rotate_instance.
    # Grid (min(tiles, ROTATE_PROGRAMS_PER_SM x SMs),).
    j = tl.arange(0, MP0)
    jm = j < M0
    if INVERSE:
        a = tl.load(rot_ptr + j[:, None] * MPMAX + j[None, :])  # Pi[c, j]
    else:
        a = tl.load(rot_ptr + j[None, :] * MPMAX + j[:, None])  # Pi^T[c, j] = Pi[j, c]
    a_hi, a_lo = _operand_parts(a, PREC)
    if IDCH0:
        ch = j
    else:
        ch = tl.load(chan_ptr + j)
    for tile in range(tl.program_id(0), tl.cdiv(n_rows, BR), tl.num_programs(0)):
        xrow, yrow, rm = _row_tile(tile, BR, n_rows, heads, x_ptr, sx0, sx1, y_ptr, sy0, sy1)
        if INVERSE:
            x = tl.load(xrow[:, None] + j[None, :], mask=rm[:, None] & jm[None, :], other=0.0).to(tl.float32)
        else:
            x = tl.load(xrow[:, None] + ch[None, :], mask=rm[:, None] & jm[None, :], other=0.0).to(tl.float32)
        y = _product(x, a_hi, a_lo, PREC, OUT_BF16)
        if INVERSE:
            tl.store(yrow[:, None] + ch[None, :], y.to(yrow.dtype.element_ty), mask=rm[:, None] & jm[None, :])
        else:  # columns M..MP are exactly 0 (Pi is zero padded)
            tl.store(yrow[:, None] + j[None, :], y.to(yrow.dtype.element_ty), mask=rm[:, None])
        zero_tail(yrow, rm, BR, TAIL0, TAIL, TAILP)


@triton.jit
def _rotate_columns_kernel(x_ptr, sx0, sx1, y_ptr, sy0, sy1, n_rows, heads, rot_ptr, chan_ptr, BR: tl.constexpr,
                           MPMAX: tl.constexpr, M0: tl.constexpr, MP0: tl.constexpr, IDCH0: tl.constexpr,
                           JC: tl.constexpr, OUT_BF16: tl.constexpr, PREC: tl.constexpr, F32_PARTS: tl.constexpr,
                           PDL: tl.constexpr = False):
    # The inverse rotation of ONE instance (NI == 1, MP0 <= 128), out = Pi^T o', for few rows:
    # y[r, chan[j]] = sum_c x[r, c] Pi[c, j] for the JC output columns j of program_id(1): PREC "fma", fp32
    # FMA (IEEE) over K chunks of KC; "bf16x3", one three-part tensor-core product over all of K
    # (_product_bf16x3).  Rows and layouts as _rotate_kernel's.  Grid (cdiv(n_rows, BR), MP0 // JC).  PDL: a
    # programmatic dependent launch after the merge (pdl.py): wait for it before reading x.
    if PDL:
        gdc_wait()
    xrow, yrow, rm = _row_tile(tl.program_id(0), BR, n_rows, heads, x_ptr, sx0, sx1, y_ptr, sy0, sy1)
    j = tl.program_id(1) * JC + tl.arange(0, JC)
    if PREC == "bf16x3":
        k = tl.arange(0, MP0)
        x = tl.load(xrow[:, None] + k[None, :], mask=rm[:, None] & (k < M0)[None, :], other=0.0).to(tl.float32)
        y = _product_bf16x3(x, tl.load(rot_ptr + k[:, None] * MPMAX + j[None, :]), F32_PARTS)  # Pi[k, j]
    else:
        y = tl.zeros((BR, JC), tl.float32)
        for k0 in range(0, MP0, KC):
            kk = k0 + tl.arange(0, KC)
            x = tl.load(xrow[:, None] + kk[None, :], mask=rm[:, None] & (kk < M0)[None, :], other=0.0).to(tl.float32)
            a = tl.load(rot_ptr + kk[:, None] * MPMAX + j[None, :])  # Pi[kk, j]
            y = tl.dot(x, a, y, input_precision="ieee")
    store_channels(yrow, y, j, rm, chan_ptr, M0, IDCH0, OUT_BF16)


def key_width(params: KernelParams) -> int:
    m = params.meta
    return m["K0_MP"] + (m["K1_MP"] if m["K_NI"] == 2 else 0)


def _tail(used: int, width: int) -> dict:
    t = width - used
    return {"TAIL0": used, "TAIL": t, "TAILP": max(1, next_pow2(t))}


def _precision(x: torch.Tensor) -> str:
    """bf16 inputs on a GPU: the bf16 hi/lo split; other GPU inputs: 3xTF32; CPU: fp32."""
    if x.device.type != "cuda":
        return "ieee"
    return "bf16x2" if x.dtype == torch.bfloat16 else "tf32x3"


def rotate_rows(x: torch.Tensor, params: KernelParams, y: torch.Tensor, *, inverse: bool,
                persistent: bool = True, tiling: tuple[int, int, int] | None = None,
                tensor: str | None = None, few_rows: bool = False, columns_precision: str = "fma",
                pdl: bool = False) -> torch.Tensor:
    """Forward: x = query [T, Hq, D] -> y = q' [T, Hq, W] (the key instances' rotations).  inverse:
    x = o' [T, Hq, W] -> y = out [T, Hq, D] (the value instances'; not for group values, whose o' is
    already the output); with tensor="key", x = K' [T, Hkv, W] -> K [T, Hkv, D] (the prefill
    workspace rotated back per key instance).  A rotation of one instance no wider than 128 runs on
    _rotate_persistent_kernel unless persistent=False (the one-tile-per-program _rotate_kernel: the
    tests' second implementation); with few_rows=True an inverse one on _rotate_columns_kernel (fp32 FMA,
    output columns spread over programs: the few rows of a decode step; the caller decides, so that a
    launch's kernel never depends on its row count where that must not change a row's bits;
    columns_precision: its arithmetic, COLUMNS_PRECISIONS).  tiling =
    (rows per tile, warps, programs per SM) of the persistent kernel (benchmarks); default the module's.
    pdl: _rotate_columns_kernel's launch a programmatic dependent one (AttnConfig.mma_pdl, pdl.py; the other
    kernels launch as usual)."""
    tensor = tensor or ("value" if inverse else "key")
    tqf.check_choice("mma_output_rotation", columns_precision, COLUMNS_PRECISIONS)
    if tensor not in ("key", "value") or (tensor == "value" and not inverse):
        raise ValueError(f"tensor={tensor!r} is not supported here; allowed values: 'key', and 'value' with "
                         "inverse=True")
    t, heads = x.shape[0], x.shape[1]
    n = t * heads
    if n == 0:
        return y
    rot, chan = (params.v_rot, params.v_chan) if tensor == "value" else (params.k_rot, params.k_chan)
    used = key_width(params)
    tail = _tail(used, y.shape[2]) if not inverse else {"TAIL0": 0, "TAIL": 0, "TAILP": 1}
    consts = params.rotation_constexprs(tensor)
    mpmax = consts["MPMAX"]
    br, warps = ROTATE_BR if mpmax <= 128 else ROTATE_BR_WIDE, 4
    if few_rows and consts["NI"] == 1 and mpmax <= 128 and inverse:
        jc = min(ROTATE_COLUMNS_JC, consts["MP0"])
        _rotate_columns_kernel[(triton.cdiv(n, ROTATE_COLUMNS_BR), consts["MP0"] // jc)](
            x, x.stride(0), x.stride(1), y, y.stride(0), y.stride(1), n, heads, rot, chan, BR=ROTATE_COLUMNS_BR,
            **{k: consts[k] for k in ("MPMAX", "M0", "MP0", "IDCH0")}, JC=jc,
            OUT_BF16=y.dtype == torch.bfloat16, PREC=columns_precision, F32_PARTS=INTERPRET, PDL=bool(pdl),
            num_warps=4, **launch_options(pdl))
        return y
    if consts["NI"] == 1 and mpmax <= 128 and persistent:
        br, warps, per_sm = tiling or (ROTATE_PERSISTENT_BR, ROTATE_PERSISTENT_WARPS, ROTATE_PROGRAMS_PER_SM)
        if br < 16 or br & (br - 1) or warps not in (1, 2, 4, 8, 16) or per_sm < 1:
            raise ValueError(f"tiling must be (rows: a power of two >= 16, warps: 1, 2, 4, 8 or 16, programs per "
                             f"SM >= 1), got {tiling}")
        programs = min(triton.cdiv(n, br), per_sm * sm_count(x.device))
        kernel, grid = _rotate_persistent_kernel, (programs,)
        consts = {k: consts[k] for k in ("MPMAX", "M0", "MP0", "IDCH0")}  # instance 0 only
    else:
        kernel, grid = _rotate_kernel, (triton.cdiv(n, br),)
    kernel[grid](
        x, x.stride(0), x.stride(1), y, y.stride(0), y.stride(1), n, heads, rot, chan,
        BR=br, **consts, **tail,
        INVERSE=inverse, PREC=_precision(x), OUT_BF16=y.dtype == torch.bfloat16, num_warps=warps,
    )
    return y

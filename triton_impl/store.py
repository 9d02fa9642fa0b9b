"""store_kv: encode K/V tokens into their packed cache slots in one fused pass."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from turboquant import format as tqf
from turboquant.torch_checks import check_store

from .bits import pack_store_codes, store_u16, store_u32
from .params import CENT_SLOTS, GROUP_NAN_BITS, INTERPRET, NORM_NAN_BITS, KernelParams
from .store_mse import store_mse, store_mse_applies
from .validate import check_params

# The rotation y = u Pi^T (and the QJL projection S r):
#   "tc"  on a GPU, tensor cores with the 3xTF32 split (each fp32 operand = a tf32 high part +
#         a tf32 low part, three MMAs, fp32 accumulation: errors ~1e-6 of |y|, far inside SPEC
#         §10's CODE_MARGIN): the whole tile as one dot up to 128 columns, K chunks of 64 beyond
#         (shared memory); exact fp32 under the interpreter;
#   "fma" K chunks of KCH = 16 columns in fp32 FMA (IEEE), u recomputed per chunk (the v1 kernel).
ROTATIONS = ("tc", "fma")
STORE_KERNELS = ("auto", "mse", "generic")
# Test hook: run the "fma" path under the interpreter by default too.
_FORCE_RELOAD = os.environ.get("TQ_STORE_FORCE_RELOAD") == "1"
DEFAULT_ROTATION = "fma" if _FORCE_RELOAD else "tc"
# Tokens per program: under the interpreter many (its cost is per op, not per element); on a GPU
# bounded by the registers of the fp32 tiles.
# (H200, 2026-12-03, benchmarks/micro/bench_prefill.py: 32 tokens x 8 warps the best "tc" tile at 8k
# tokens, within 5 % of the best at 2k and 32k)
STORE_BT = {"tc": 64 if INTERPRET else 32, "fma": 64 if INTERPRET else 16}
STORE_WARPS = {"tc": 8, "fma": 4}
TC_WHOLE_MAX = 128  # widest instance rotated as one tile (Pi^T in shared memory: 64 KiB fp32)


@triton.jit
def _isfinite(x):
    return tl.abs(x) < float("inf")


# ---------------------------------------------------------------------------
# Sums of squares (the norm and the QJL residual norm) are tree reductions over
# registers: SPEC §10 leaves their summation order free (stored norms within
# NORM_RTOL of the reference's).  v1 reproduced NumPy's orders bit for bit (a
# 128-step sequential loop of column reloads for the norm, NumPy's pairwise
# order for the residual norm), which dominated the store's time.
@triton.jit
def _norm_unit(x, BT: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, WHOLE: tl.constexpr):
    """reference.quantizer.l2_norm on rows of x [BT, MP] (the instance's M
    channels, zero beyond): m = max|x|, s = x/m, ss = sqrt(sum s^2),
    norm = m*ss, u = s/ss, with IEEE division / sqrt."""
    cm = tl.arange(0, MP) < M
    ax = tl.where(cm[None, :], tl.abs(x), 0.0)
    mx = tl.max(ax, axis=1)
    safe = tl.where(mx > 0, mx, 1.0)
    s = tl.where(cm[None, :], tl.math.div_rn(x, safe[:, None]), 0.0)
    ss = tl.sqrt_rn(tl.sum(s * s, axis=1))
    norm = mx * ss
    ssafe = tl.where(ss > 0, ss, 1.0)
    if WHOLE:
        u = tl.math.div_rn(s, ssafe[:, None])
    else:
        u = s  # unused: the "fma" rotation recomputes u per K chunk (fewer live registers)
    return norm, safe, ssafe, u


@triton.jit
def _load_rows(x_ptr, tok, tmask, stride_t, h_off, chan_ptr, M: tl.constexpr, MP: tl.constexpr,
               IDCH: tl.constexpr):
    j = tl.arange(0, MP)
    if IDCH:
        ch = j
    else:
        ch = tl.load(chan_ptr + j)
    cm = j < M
    rowptr = x_ptr + tok.to(tl.int64) * stride_t + h_off
    x = tl.load(rowptr[:, None] + ch[None, :], mask=tmask[:, None] & cm[None, :], other=0.0).to(tl.float32)
    fin = tl.sum(tl.where(cm[None, :] & ~_isfinite(x), 1, 0), axis=1) == 0
    return x, fin, rowptr


@triton.jit
def _encode_instance(bptr, tmask, norm, safe, ssafe, u, bad, rowptr, ch_ptr, rot_ptr, bnd_ptr, cent_ptr, qjl_ptr,
                     y_ptr, y_row, scr_ptr, BT: tl.constexpr, M: tl.constexpr, MP: tl.constexpr,
                     MPMAX: tl.constexpr, IDCH: tl.constexpr, BITS: tl.constexpr, QJL: tl.constexpr,
                     NORM: tl.constexpr, CODES: tl.constexpr, CBYTES: tl.constexpr, RNORM: tl.constexpr,
                     SIGNS: tl.constexpr, SBYTES: tl.constexpr, DEBUG_Y: tl.constexpr, WHOLE: tl.constexpr,
                     PREC: tl.constexpr, KCH: tl.constexpr):
    """Alg. 1 / Alg. 2 for one instance of a tile of tokens, written to the slots.
    y = u @ Pi^T: WHOLE, one dot of the tile at precision PREC ("tf32x3": the
    3xTF32 tensor-core split; "ieee"); else K chunks of KCH columns at precision
    PREC, each chunk's u = (x / m) / ss recomputed exactly as the reference."""
    j = tl.arange(0, MP)
    cm = j < M
    if WHOLE:
        pit = tl.load(rot_ptr + j[None, :] * MPMAX + j[:, None])  # Pi^T[c, r] = Pi[r, c]
        y = tl.dot(tl.where(bad[:, None], 0.0, u), pit, input_precision=PREC)
    else:
        y = tl.zeros((BT, MP), tl.float32)
        for k0 in range(0, MP, KCH):
            kk = k0 + tl.arange(0, KCH)
            if IDCH:
                ch = kk
            else:
                ch = tl.load(ch_ptr + kk)
            xc = tl.load(rowptr[:, None] + ch[None, :], mask=tmask[:, None] & (kk < M)[None, :],
                         other=0.0).to(tl.float32)
            uc = tl.math.div_rn(tl.math.div_rn(xc, safe[:, None]), ssafe[:, None])
            uc = tl.where(bad[:, None], 0.0, uc)
            pc = tl.load(rot_ptr + j[None, :] * MPMAX + kk[:, None])
            y = tl.dot(uc, pc, y, input_precision=PREC)
    if DEBUG_Y:
        tl.store(y_ptr + y_row[:, None] * MP + j[None, :], y, mask=tmask[:, None])
    codes = tl.zeros((BT, MP), tl.int32)
    if BITS > 0:
        for k in tl.static_range((1 << BITS) - 1):
            codes += (y > tl.load(bnd_ptr + k)).to(tl.int32)
        codes = tl.where(cm[None, :] & ~bad[:, None], codes, 0)
    nbits = tl.where(bad, NORM_NAN_BITS, norm.to(tl.int32, bitcast=True))
    store_u32(bptr, NORM, nbits, tmask)
    if BITS > 0:
        pack_store_codes(bptr, tmask, codes, BT, CODES, BITS, MP, CBYTES)
    if QJL:
        if BITS > 0:
            recon = tl.load(cent_ptr + codes)
        else:
            recon = tl.zeros((BT, MP), tl.float32)
        r = tl.where(cm[None, :], y - recon, 0.0)
        # r goes through a scratch row per token: its K chunks feed the S r product.
        rows = scr_ptr + y_row * MP
        tl.store(rows[:, None] + j[None, :], r, mask=tmask[:, None])
        tl.debug_barrier()
        if WHOLE:
            st = tl.load(qjl_ptr + j[None, :] * MPMAX + j[:, None])  # S^T[c, r'] = S[r', c]
            proj = tl.dot(r, st, input_precision=PREC)
        else:
            proj = tl.zeros((BT, MP), tl.float32)
            for k0 in range(0, MP, KCH):
                kk = k0 + tl.arange(0, KCH)
                rc = tl.load(rows[:, None] + kk[None, :], mask=tmask[:, None], other=0.0)
                sc = tl.load(qjl_ptr + j[None, :] * MPMAX + kk[:, None])
                proj = tl.dot(rc, sc, proj, input_precision=PREC)
        signs = tl.where((proj >= 0) & cm[None, :] & ~bad[:, None], 1, 0)
        rn = tl.sqrt_rn(tl.sum(r * r, axis=1))
        rbits = tl.where(bad, NORM_NAN_BITS, rn.to(tl.int32, bitcast=True))
        store_u32(bptr, RNORM, rbits, tmask)
        pack_store_codes(bptr, tmask, signs, BT, SIGNS, 1, MP, SBYTES)


@triton.jit
def _store_kernel(
    key_ptr, value_ptr, cache_ptr, slot_ptr, y_ptr, scr_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cb, stride_ch, stride_cs,
    num_tokens, block_size, num_heads,
    k_rot, k_bnd, k_cent, k_qjl, k_chan, v_rot, v_bnd, v_cent, v_chan,
    BT: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, SLOT_BYTES: tl.constexpr, SLOT_END: tl.constexpr,
    DEBUG_Y: tl.constexpr, WHOLE: tl.constexpr, PREC: tl.constexpr, KCH: tl.constexpr,
    K_NI: tl.constexpr, K_MPMAX: tl.constexpr, K_MAT_STRIDE: tl.constexpr,
    K0_M: tl.constexpr, K0_MP: tl.constexpr, K0_BITS: tl.constexpr, K0_QJL: tl.constexpr, K0_IDCH: tl.constexpr,
    K0_NORM: tl.constexpr, K0_CODES: tl.constexpr, K0_CBYTES: tl.constexpr, K0_RNORM: tl.constexpr,
    K0_SIGNS: tl.constexpr, K0_SBYTES: tl.constexpr,
    K1_M: tl.constexpr, K1_MP: tl.constexpr, K1_BITS: tl.constexpr, K1_QJL: tl.constexpr, K1_IDCH: tl.constexpr,
    K1_NORM: tl.constexpr, K1_CODES: tl.constexpr, K1_CBYTES: tl.constexpr, K1_RNORM: tl.constexpr,
    K1_SIGNS: tl.constexpr, K1_SBYTES: tl.constexpr,
    V_GROUP: tl.constexpr, V_NI: tl.constexpr, V_MPMAX: tl.constexpr, V_MAT_STRIDE: tl.constexpr,
    V0_M: tl.constexpr, V0_MP: tl.constexpr, V0_BITS: tl.constexpr, V0_IDCH: tl.constexpr,
    V0_NORM: tl.constexpr, V0_CODES: tl.constexpr, V0_CBYTES: tl.constexpr,
    V1_M: tl.constexpr, V1_MP: tl.constexpr, V1_BITS: tl.constexpr, V1_IDCH: tl.constexpr,
    V1_NORM: tl.constexpr, V1_CODES: tl.constexpr, V1_CBYTES: tl.constexpr,
    V_GS: tl.constexpr, V_NG: tl.constexpr, V_BITS: tl.constexpr, V_SCALE: tl.constexpr, V_ZERO: tl.constexpr,
    V_CODES: tl.constexpr, V_CBYTES: tl.constexpr,
):
    # store: K/V [num_tokens, H, D] (any float dtype) -> cache uint8 [NB, H, BS, SLOT_BYTES].
    # Grid (cdiv(num_tokens, BT), H): one program encodes BT tokens of one KV head:
    # norm (max-scaled), rotation (WHOLE/PREC, see ROTATIONS), boundary codes, QJL signs /
    # residual norm, value codes or min/max groups, non-finite tokens per the
    # reference, LSB-first packing, zero padding.  slot < 0: nothing written.
    pid = tl.program_id(0)
    h = tl.program_id(1)
    tok = pid * BT + tl.arange(0, BT)
    slot = tl.load(slot_ptr + tok, mask=tok < num_tokens, other=-1).to(tl.int64)
    tmask = slot >= 0
    blk = tl.where(tmask, slot // block_size, 0)
    off = tl.where(tmask, slot % block_size, 0)
    bptr = cache_ptr + blk * stride_cb + h * stride_ch + off * stride_cs  # [BT] uint8 pointers
    y_row = tok.to(tl.int64) * num_heads + h

    # ---------------- keys
    kx0, kf0, krow = _load_rows(key_ptr, tok, tmask, stride_kt, h * stride_kh, k_chan, K0_M, K0_MP, K0_IDCH)
    kn0, ks0, kd0, ku0 = _norm_unit(kx0, BT, K0_M, K0_MP, WHOLE)
    kbad = ~kf0 | ~_isfinite(kn0)
    if K_NI == 2:
        kx1, kf1, _ = _load_rows(key_ptr, tok, tmask, stride_kt, h * stride_kh, k_chan + K_MPMAX, K1_M, K1_MP,
                                 K1_IDCH)
        kn1, ks1, kd1, ku1 = _norm_unit(kx1, BT, K1_M, K1_MP, WHOLE)
        kbad = kbad | ~kf1 | ~_isfinite(kn1)
    kscr = scr_ptr
    _encode_instance(bptr, tmask, kn0, ks0, kd0, ku0, kbad, krow, k_chan, k_rot, k_bnd, k_cent, k_qjl, y_ptr, y_row,
                     kscr, BT, K0_M, K0_MP, K_MPMAX, K0_IDCH, K0_BITS, K0_QJL, K0_NORM, K0_CODES, K0_CBYTES,
                     K0_RNORM, K0_SIGNS, K0_SBYTES, DEBUG_Y, WHOLE, PREC, KCH)
    if K_NI == 2:
        _encode_instance(bptr, tmask, kn1, ks1, kd1, ku1, kbad, krow, k_chan + K_MPMAX, k_rot + K_MAT_STRIDE,
                         k_bnd + CENT_SLOTS, k_cent + CENT_SLOTS, k_qjl + K_MAT_STRIDE,
                         y_ptr + num_tokens * num_heads * K0_MP,
                         y_row, kscr + num_tokens * num_heads * K0_MP, BT, K1_M, K1_MP, K_MPMAX, K1_IDCH, K1_BITS,
                         K1_QJL, K1_NORM, K1_CODES, K1_CBYTES, K1_RNORM, K1_SIGNS, K1_SBYTES, DEBUG_Y, WHOLE, PREC, KCH)

    # ---------------- values
    vy_ptr = y_ptr + num_tokens * num_heads * (K0_MP + K1_MP)
    if V_GROUP:
        LEVELS: tl.constexpr = (1 << V_BITS) - 1
        d = tl.arange(0, DP)
        dm = d < D
        v = tl.load(value_ptr + tok[:, None].to(tl.int64) * stride_vt + h * stride_vh + d[None, :],
                    mask=tmask[:, None] & dm[None, :], other=0.0).to(tl.float32)
        vfin = tl.sum(tl.where(dm[None, :] & ~_isfinite(v), 1, 0), axis=1) == 0
        vg = tl.reshape(v, (BT, DP // V_GS, V_GS))
        mn = tl.min(vg, axis=2)
        mx = tl.max(vg, axis=2)
        zero16 = mn.to(tl.float16)
        scale16 = tl.math.div_rn(mx - mn, LEVELS * 1.0).to(tl.float16)
        mx16 = mx.to(tl.float16)
        gi = tl.arange(0, DP // V_GS)
        gbad = ~(_isfinite(zero16.to(tl.float32)) & _isfinite(scale16.to(tl.float32))
                 & _isfinite(mx16.to(tl.float32))) & (gi < V_NG)[None, :]
        vbad = ~vfin | (tl.sum(gbad.to(tl.int32), axis=1) > 0)
        zero = zero16.to(tl.float32)
        scale = scale16.to(tl.float32)
        t = tl.where(scale[:, :, None] > 0,
                     tl.math.div_rn(vg - zero[:, :, None], tl.where(scale > 0, scale, 1.0)[:, :, None]), 0.0)
        c = tl.minimum(tl.maximum(tl.floor(t + 0.5), 0.0), LEVELS * 1.0).to(tl.int32)
        c = tl.where(vbad[:, None, None], 0, c)
        codes = tl.where(dm[None, :], tl.reshape(c, (BT, DP)), 0)
        zb = tl.where(vbad[:, None], GROUP_NAN_BITS, zero16.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF)
        sb = tl.where(vbad[:, None], GROUP_NAN_BITS, scale16.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF)
        gm = tmask[:, None] & (gi < V_NG)[None, :]
        store_u16(bptr[:, None], V_ZERO + 2 * gi[None, :], zb, gm)
        store_u16(bptr[:, None], V_SCALE + 2 * gi[None, :], sb, gm)
        pack_store_codes(bptr, tmask, codes, BT, V_CODES, V_BITS, DP, V_CBYTES)
    else:
        vx0, vf0, vrow = _load_rows(value_ptr, tok, tmask, stride_vt, h * stride_vh, v_chan, V0_M, V0_MP, V0_IDCH)
        vn0, vs0, vd0, vu0 = _norm_unit(vx0, BT, V0_M, V0_MP, WHOLE)
        vbad = ~vf0 | ~_isfinite(vn0)
        if V_NI == 2:
            vx1, vf1, _ = _load_rows(value_ptr, tok, tmask, stride_vt, h * stride_vh, v_chan + V_MPMAX,
                                     V1_M, V1_MP, V1_IDCH)
            vn1, vs1, vd1, vu1 = _norm_unit(vx1, BT, V1_M, V1_MP, WHOLE)
            vbad = vbad | ~vf1 | ~_isfinite(vn1)
        _encode_instance(bptr, tmask, vn0, vs0, vd0, vu0, vbad, vrow, v_chan, v_rot, v_bnd, v_cent, v_cent, vy_ptr,
                         y_row, scr_ptr, BT, V0_M, V0_MP, V_MPMAX, V0_IDCH, V0_BITS, False, V0_NORM, V0_CODES,
                         V0_CBYTES, 0, 0, 0, DEBUG_Y, WHOLE, PREC, KCH)
        if V_NI == 2:
            _encode_instance(bptr, tmask, vn1, vs1, vd1, vu1, vbad, vrow, v_chan + V_MPMAX,
                             v_rot + V_MAT_STRIDE, v_bnd + CENT_SLOTS, v_cent + CENT_SLOTS, v_cent,
                             vy_ptr + num_tokens * num_heads * V0_MP, y_row, scr_ptr, BT, V1_M, V1_MP, V_MPMAX,
                             V1_IDCH, V1_BITS, False, V1_NORM, V1_CODES, V1_CBYTES, 0, 0, 0, DEBUG_Y, WHOLE, PREC, KCH)
    # zero padding bytes at the end of the slot
    for p in tl.static_range(SLOT_END, SLOT_BYTES):
        tl.store(bptr + p, tl.zeros((BT,), tl.uint8), mask=tmask)


def store_kv(key: torch.Tensor, value: torch.Tensor, cache: torch.Tensor, slot_mapping: torch.Tensor,
             params: KernelParams, *, debug_rotated: torch.Tensor | None = None, block_tokens: int | None = None,
             num_warps: int | None = None, rotation: str | None = None, kernel: str = "auto",
             variant: tuple[str, ...] | None = None, programs_per_sm: int | None = None,
             maxnreg: int | None = None, col_blocks: int | None = None, batch_invariant: bool = False) -> None:
    """Encode key/value [num_tokens, num_kv_heads, head_size] into ``cache``
    (uint8 [num_blocks, num_kv_heads, block_size, slot_bytes]) in place at
    ``slot_mapping`` [num_tokens] (negative: padding, nothing written).
    ``rotation``: "tc" (default) or "fma", see ROTATIONS.  ``kernel``: "auto" (store_mse.py where
    store_mse_applies and the rotation is "tc", else this module's kernel), "mse" (store_mse.py;
    block_tokens = its rows per tile) or "generic" (this module's kernel).  ``variant``,
    ``programs_per_sm``, ``maxnreg`` and ``col_blocks``: store_mse.py's options (None: its defaults; the
    bytes stored are the same), for the mse kernel only.  ``batch_invariant``: a row's stored bytes must not
    depend on the call's other rows (the batch-invariant mode): store_mse then takes one launch for every
    call size (its default picks by the number of rows, and store_wg's rounding differs from its Triton
    kernels' within SPEC §10); the generic kernel is invariant either way."""
    rotation = DEFAULT_ROTATION if rotation is None else rotation
    tqf.check_choice("rotation", rotation, ROTATIONS)
    tqf.check_choice("kernel", kernel, STORE_KERNELS)
    if kernel == "mse" and rotation != "tc":
        raise ValueError(f"rotation={rotation!r} applies to kernel='generic' only; kernel='mse' computes the "
                         "rotation on tensor cores (SPEC §4)")
    check_params(params)
    fmt = params.fmt
    check_store(key, value, cache, slot_mapping, fmt, params.device)
    n, h, d = key.shape
    if n == 0:
        return
    if key.stride(2) != 1 or value.stride(2) != 1:
        key, value = key.contiguous(), value.contiguous()
    if cache.stride(3) != 1:
        raise ValueError("cache must be contiguous in its last (slot byte) dimension")
    if debug_rotated is not None:
        m = params.meta
        need = n * h * (m["K0_MP"] + m["K1_MP"] + m["V0_MP"] + m["V1_MP"])  # rotated_debug's layout
        if debug_rotated.dtype != torch.float32 or debug_rotated.device != key.device \
                or not debug_rotated.is_contiguous() or debug_rotated.numel() < need:
            raise ValueError(f"debug_rotated must be a contiguous float32 tensor on {key.device} with at least {need} "
                             f"elements (tokens x heads x the key and value instances' padded widths), got "
                             f"{debug_rotated.dtype} {tuple(debug_rotated.shape)} on {debug_rotated.device}")
    if kernel == "mse" or (kernel == "auto" and rotation == "tc" and store_mse_applies(params)):
        store_mse(key, value, cache, slot_mapping, params, debug_rotated, block_rows=block_tokens,
                  num_warps=num_warps, variant=variant, programs_per_sm=programs_per_sm, maxnreg=maxnreg,
                  col_blocks=col_blocks, batch_invariant=batch_invariant)
        return
    if variant or programs_per_sm is not None or maxnreg is not None or col_blocks is not None:
        raise ValueError(f"variant={variant!r}, programs_per_sm={programs_per_sm!r}, maxnreg={maxnreg!r} and "
                         f"col_blocks={col_blocks!r} apply to store_mse.py only (kernel='mse', or 'auto' on a format "
                         "it covers)")
    block_tokens = block_tokens or STORE_BT[rotation]
    y = debug_rotated if debug_rotated is not None else torch.empty(1, device=params.device, dtype=torch.float32)
    m = params.meta
    nq = (m["K0_MP"] if m["K0_QJL"] else 0) + (m["K1_MP"] if m["K1_QJL"] else 0)
    # QJL residual rows (one per token and head and QJL instance)
    scr = torch.empty(max(1, n * h * nq), device=params.device, dtype=torch.float32)
    whole = rotation == "tc" and (INTERPRET or max(m["K_MPMAX"], m["V_MPMAX"]) <= TC_WHOLE_MAX)
    # K chunk of the chunked rotation: 64 on tensor cores where every instance is that wide, else 16
    widths = [m[f"{p}_MP"] for p in ("K0", "K1", "V0", "V1") if m[f"{p}_M"]]
    kch = 64 if rotation == "tc" and min(widths) >= 64 else 16
    grid = (triton.cdiv(n, block_tokens), h)
    _store_kernel[grid](
        key, value, cache, slot_mapping, y, scr,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        cache.stride(0), cache.stride(1), cache.stride(2),
        n, cache.shape[2], h,
        params.k_rot, params.k_bnd, params.k_cent, params.k_qjl, params.k_chan,
        params.v_rot, params.v_bnd, params.v_cent, params.v_chan,
        BT=block_tokens, DEBUG_Y=debug_rotated is not None, WHOLE=whole,
        PREC="tf32x3" if rotation == "tc" and not INTERPRET else "ieee", KCH=kch,
        num_warps=num_warps or STORE_WARPS[rotation], **params.constexprs("store"),
    )


def rotated_debug(x: torch.Tensor, params: KernelParams, tensor: str) -> list[torch.Tensor]:
    """The rotated unit coordinates y of each instance of ``tensor`` as the store
    kernel computes them (x [num_tokens, num_kv_heads, d]); for conformance."""
    tqf.check_choice("tensor", tensor, ("key", "value"))
    m = params.meta
    n, h, d = x.shape
    kmp = m["K0_MP"] + m["K1_MP"]
    vmp = m["V0_MP"] + m["V1_MP"]
    y = torch.zeros(n * h * (kmp + vmp), dtype=torch.float32, device=x.device)
    cache = torch.zeros(params.fmt.cache_shape(n, 1, h), dtype=torch.uint8, device=x.device)
    slots = torch.arange(n, device=x.device, dtype=torch.int64)
    store_kv(x, x, cache, slots, params, debug_rotated=y)
    out, base = [], 0 if tensor == "key" else n * h * kmp
    p = "K" if tensor == "key" else "V"
    for i in range(m[f"{p}_NI"]):
        mp, mi = m[f"{p}{i}_MP"], m[f"{p}{i}_M"]
        out.append(y[base: base + n * h * mp].view(n, h, mp)[..., :mi])
        base += n * h * mp
    return out

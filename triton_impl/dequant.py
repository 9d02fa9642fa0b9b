"""dequantize: packed slots -> float32 K~, V~ (tests, debugging, fallbacks).
Same arithmetic order as reference.quantizer.decode_instances."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .bits import load_f16_array, load_f32, unpack_codes
from .params import CENT_SLOTS, KernelParams
from .validate import INDEX_DTYPES, check_cache, check_params, check_tensor

DEQUANT_BT = 16


@triton.jit
def _dequant_instance(ptrs, tm, out_base, rot_ptr, qjl_ptr, cent_ptr, chan_ptr, BT: tl.constexpr,
                      MPMAX: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, BITS: tl.constexpr,
                      QJL: tl.constexpr, IDCH: tl.constexpr, NORM: tl.constexpr, CODES: tl.constexpr,
                      CFAST: tl.constexpr, RNORM: tl.constexpr, SIGNS: tl.constexpr, SFAST: tl.constexpr,
                      QJLSCALE: tl.constexpr):
    j = tl.arange(0, MP)
    norm = load_f32(ptrs, tm, NORM)
    if BITS > 0:
        codes = unpack_codes(ptrs, tm, BT, CODES * 8, BITS, M, MP, CFAST)
        y = tl.load(cent_ptr + codes)
    else:
        y = tl.zeros((BT, MP), tl.float32)
    if QJL:
        rn = load_f32(ptrs, tm, RNORM)
        sg = unpack_codes(ptrs, tm, BT, SIGNS * 8, 1, M, MP, SFAST)
        sgn = tl.where(j[None, :] < M, sg * 2 - 1, 0).to(tl.float32)
        s = tl.load(qjl_ptr + j[:, None] * MPMAX + j[None, :])  # S [m, m]
        y = y + (QJLSCALE * rn)[:, None] * tl.dot(sgn, s, input_precision="ieee")
    y = norm[:, None] * y
    pi = tl.load(rot_ptr + j[:, None] * MPMAX + j[None, :])  # x = y @ Pi  (= Pi^T y)
    x = tl.dot(y, pi, input_precision="ieee")
    if IDCH:
        ch = j
    else:
        ch = tl.load(chan_ptr + j)
    tl.store(out_base[:, None] + ch[None, :], x, mask=tm[:, None] & (j < M)[None, :])


@triton.jit
def group_values(ptrs, tm, BT: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, GS: tl.constexpr,
                 NG: tl.constexpr, BITS: tl.constexpr, SCALE: tl.constexpr, ZERO: tl.constexpr, CODES: tl.constexpr,
                 CFAST: tl.constexpr):
    """v^ = zero_g + scale_g * code of a tile of slots (mode `group`): [BT, DP] float32."""
    NP: tl.constexpr = DP // GS
    scale = load_f16_array(ptrs, tm, BT, SCALE, NG, NP)
    zero = load_f16_array(ptrs, tm, BT, ZERO, NG, NP)
    codes = unpack_codes(ptrs, tm, BT, CODES * 8, BITS, D, DP, CFAST)
    v = zero[:, :, None] + scale[:, :, None] * tl.reshape(codes, (BT, NP, GS)).to(tl.float32)
    return tl.reshape(v, (BT, DP))


@triton.jit
def _dequant_kernel(
    words, slots_ptr, n, block_size, stride_cb, stride_ch, stride_cs, k_out, v_out, num_heads,
    k_rot, k_qjl, k_cent, k_chan, v_rot, v_cent, v_chan,
    BT: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
    K_NI: tl.constexpr, K_MPMAX: tl.constexpr, K_MAT_STRIDE: tl.constexpr,
    K0_M: tl.constexpr, K0_MP: tl.constexpr, K0_BITS: tl.constexpr, K0_QJL: tl.constexpr, K0_IDCH: tl.constexpr,
    K0_NORM: tl.constexpr, K0_CODES: tl.constexpr, K0_CFAST: tl.constexpr, K0_RNORM: tl.constexpr,
    K0_SIGNS: tl.constexpr, K0_SFAST: tl.constexpr, K0_QJLSCALE: tl.constexpr,
    K1_M: tl.constexpr, K1_MP: tl.constexpr, K1_BITS: tl.constexpr, K1_QJL: tl.constexpr, K1_IDCH: tl.constexpr,
    K1_NORM: tl.constexpr, K1_CODES: tl.constexpr, K1_CFAST: tl.constexpr, K1_RNORM: tl.constexpr,
    K1_SIGNS: tl.constexpr, K1_SFAST: tl.constexpr, K1_QJLSCALE: tl.constexpr,
    V_GROUP: tl.constexpr, V_NI: tl.constexpr, V_MPMAX: tl.constexpr, V_MAT_STRIDE: tl.constexpr,
    V0_M: tl.constexpr, V0_MP: tl.constexpr, V0_BITS: tl.constexpr, V0_IDCH: tl.constexpr,
    V0_NORM: tl.constexpr, V0_CODES: tl.constexpr, V0_CFAST: tl.constexpr,
    V1_M: tl.constexpr, V1_MP: tl.constexpr, V1_BITS: tl.constexpr, V1_IDCH: tl.constexpr,
    V1_NORM: tl.constexpr, V1_CODES: tl.constexpr, V1_CFAST: tl.constexpr,
    V_GS: tl.constexpr, V_NG: tl.constexpr, V_BITS: tl.constexpr, V_SCALE: tl.constexpr, V_ZERO: tl.constexpr,
    V_CODES: tl.constexpr, V_CFAST: tl.constexpr,
):
    # slots [n] (flat slot index; < 0: skipped) of the cache (int32 words
    # [NB, H, BS, SLOT_BYTES/4]) -> k_out, v_out float32 [n, H, D].
    # Grid (cdiv(n, BT), H).  Keys/mse values: x = Pi^T ||x|| (c[idx] (+ QJL)).
    idx = tl.program_id(0) * BT + tl.arange(0, BT)
    h = tl.program_id(1)
    slot = tl.load(slots_ptr + idx, mask=idx < n, other=-1).to(tl.int64)
    tm = slot >= 0
    slot = tl.where(tm, slot, 0)
    ptrs = words + (slot // block_size) * stride_cb + h * stride_ch + (slot % block_size) * stride_cs
    row = (idx.to(tl.int64) * num_heads + h) * D
    _dequant_instance(ptrs, tm, k_out + row, k_rot, k_qjl, k_cent, k_chan, BT, K_MPMAX, K0_M, K0_MP, K0_BITS,
                      K0_QJL, K0_IDCH, K0_NORM, K0_CODES, K0_CFAST, K0_RNORM, K0_SIGNS, K0_SFAST, K0_QJLSCALE)
    if K_NI == 2:
        _dequant_instance(ptrs, tm, k_out + row, k_rot + K_MAT_STRIDE, k_qjl + K_MAT_STRIDE,
                          k_cent + CENT_SLOTS, k_chan + K_MPMAX, BT, K_MPMAX, K1_M, K1_MP, K1_BITS, K1_QJL, K1_IDCH,
                          K1_NORM, K1_CODES, K1_CFAST, K1_RNORM, K1_SIGNS, K1_SFAST, K1_QJLSCALE)
    if V_GROUP:
        d = tl.arange(0, DP)
        v = group_values(ptrs, tm, BT, D, DP, V_GS, V_NG, V_BITS, V_SCALE, V_ZERO, V_CODES, V_CFAST)
        tl.store(v_out + row[:, None] + d[None, :], v, mask=tm[:, None] & (d < D)[None, :])
    else:
        _dequant_instance(ptrs, tm, v_out + row, v_rot, v_cent, v_cent, v_chan, BT, V_MPMAX, V0_M, V0_MP,
                          V0_BITS, False, V0_IDCH, V0_NORM, V0_CODES, V0_CFAST, 0, 0, False, 0.0)
        if V_NI == 2:
            _dequant_instance(ptrs, tm, v_out + row, v_rot + V_MAT_STRIDE, v_cent, v_cent + CENT_SLOTS,
                              v_chan + V_MPMAX, BT, V_MPMAX, V1_M, V1_MP, V1_BITS, False, V1_IDCH, V1_NORM,
                              V1_CODES, V1_CFAST, 0, 0, False, 0.0)


def dequantize_slots(cache: torch.Tensor, slots: torch.Tensor, params: KernelParams):
    """Flat slot indices [n] (block * block_size + offset; < 0 gives zeros)
    -> (K~, V~) float32 [n, num_kv_heads, head_size]."""
    check_params(params)
    check_cache("cache", cache, params.fmt, params.device)
    check_tensor("slots", slots, INDEX_DTYPES, params.device)
    n, h, d = slots.shape[0], cache.shape[1], params.fmt.head_size
    k = torch.zeros((n, h, d), dtype=torch.float32, device=cache.device)
    v = torch.zeros((n, h, d), dtype=torch.float32, device=cache.device)
    if n == 0:
        return k, v
    words = cache.view(torch.int32)
    grid = (triton.cdiv(n, DEQUANT_BT), h)
    _dequant_kernel[grid](
        words, slots.contiguous(), n, cache.shape[2], words.stride(0), words.stride(1), words.stride(2), k, v, h,
        params.k_rot, params.k_qjl, params.k_cent, params.k_chan, params.v_rot, params.v_cent, params.v_chan,
        BT=DEQUANT_BT, **params.constexprs("dequant"), num_warps=4,
    )
    return k, v


def dequantize(cache: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor, params: KernelParams):
    """(K~, V~) float32 [num_seqs, max(seq_lens), num_kv_heads, head_size], zero
    beyond each sequence's length.  Reads max(seq_lens) on the host (debug path)."""
    check_tensor("block_table", block_table, INDEX_DTYPES, params.device)
    check_tensor("seq_lens", seq_lens, INDEX_DTYPES, params.device)
    nseq = block_table.shape[0]
    lmax = int(seq_lens.max()) if nseq else 0
    bs = cache.shape[2]
    pos = torch.arange(lmax, device=cache.device)
    blk = block_table[:, (pos // bs).clamp(max=max(block_table.shape[1] - 1, 0))].to(torch.int64)
    slots = blk * bs + (pos % bs)[None, :]
    slots = torch.where(pos[None, :] < seq_lens[:, None].to(torch.int64), slots, -1).reshape(-1)
    k, v = dequantize_slots(cache, slots, params)
    shape = (nseq, lmax, cache.shape[1], params.fmt.head_size)
    return k.view(shape), v.view(shape)

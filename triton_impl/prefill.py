"""prefill_attention: the prefill / extend rows of a step over the packed cache, on a dense
attention kernel.

Prefill is compute-bound: every cached token is used by many query rows.  So the packed slots of
the sequences being prefilled are decoded once per call into a dense workspace in the rotated
domain, the query rows are rotated once, and a FlashAttention kernel runs the causal varlen
attention (bottom-right aligned: a sequence's query rows are its last tokens):

    q'  = [Pi_0 q[C_0], Pi_1 q[C_1]]                    (per key instance, zero padded)
    K'_t = [||k_t,0|| c[idx_t,0], ||k_t,1|| c[idx_t,1]]  (mse keys: <q, k~_t> = <q', K'_t>)
    V'_t = [||v_t,0|| c[idx_t,0], ...]                   (TurboQuant values, rotated domain)
         | zero_g + scale_g * code                       (group values, original domain)
    out[C_i] = (softmax(scale q' K'^T) V')[seg_i] Pi_i   (back from the rotated domain)

which is SPEC §9's attention over the dequantized cache, up to the dense kernel's rounding of q',
K', V' to the query dtype (SPEC §10: ATTN_RTOL_HALF).  Rotations are orthogonal, so the same
attention can run in the original domain instead: K = Pi^T K' and V = Pi^T V' per instance, the query
rows as they are and no rotation of the output.  That rotates cached tokens x KV heads rows instead
of 2 x query rows x query heads: fewer for a whole prompt under GQA (AttnConfig.dense_rotation,
"auto", the default, picks per step).  Keys with a QJL sketch, fp16 / fp32 queries
on a GPU and batch-invariant mode keep the packed-tile kernel (extend.py).

Non-finite tokens give NaN exactly in the rows that see them (SPEC §8), as with the other kernels
(see _dense_kv_kernel).

Launches: _rotate_kernel (q -> q'; on a GPU tensor cores with Pi split into bf16 hi + lo parts,
~fp32-accurate), _dense_kv_kernel (packed slots -> K', V'), the dense attention (vLLM's
FlashAttention varlen when vLLM is importable, else torch SDPA per sequence on a GPU, a float32
masked attention on a CPU), _rotate_kernel again (o' -> out, Pi per value instance, channels
scattered); rotating the workspace instead: _dense_kv_kernel, _rotate_kernel for K' and for V'
(inverse, channels scattered), the dense attention.  Workspace: K', V' [sum of the sequences' cached tokens,
num_kv_heads, W] in the query dtype (float32 on CPU), at most MAX_WORKSPACE_BYTES at a time (the
plan's parts).  Host planning is PrefillPlan (plan.py), once per step.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .attn_core import acc_width
from .bits import load_f32, unpack_codes
from .dequant import group_values
from .launch import DENSE_ROTATIONS, AttnConfig
from .params import CENT_SLOTS, KernelParams
from .plan import PrefillPlan
from .rotate import _tail, key_width, rotate_rows, zero_tail

DENSE_BT = 32  # slots per _dense_kv_kernel program
MAX_DENSE_WIDTH = 256  # FlashAttention's largest head size
# K' + V' of one part of a step at most (a longer single sequence is a part of its own)
MAX_WORKSPACE_BYTES = 2 << 30


# ------------------------------------------------------------------ kernels
@triton.jit
def _dense_instance(ptrs, tm, cent_ptr, BT: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, BITS: tl.constexpr,
                    NORM: tl.constexpr, CODES: tl.constexpr, CFAST: tl.constexpr):
    """||x|| c[idx_j] (j < M; 0 up to MP) of one instance of a tile of slots, in the rotated domain:
    [BT, MP] float32; a NaN norm (a non-finite token) gives NaN in its M columns."""
    j = tl.arange(0, MP)
    norm = load_f32(ptrs, tm, NORM)
    codes = unpack_codes(ptrs, tm, BT, CODES * 8, BITS, M, MP, CFAST)
    return tl.where((j < M)[None, :], norm[:, None] * tl.load(cent_ptr + codes), 0.0)


@triton.jit
def _store_cols(rows, tm, y, SEG: tl.constexpr, MP: tl.constexpr):
    j = tl.arange(0, MP)
    tl.store(rows[:, None] + SEG + j[None, :], y.to(rows.dtype.element_ty), mask=tm[:, None])


@triton.jit
def _finite(x):
    return tl.abs(x) < float("inf")


@triton.jit
def _dense_kv_kernel(
    words, bt_ptr, stride_bt, seq_lens_ptr, cu_k_ptr, k_out, v_out, stride_ot, stride_oh,
    block_size, stride_cb, stride_ch, stride_cs, k_cent, v_cent,
    BT: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
    KTAIL0: tl.constexpr, KTAIL: tl.constexpr, KTAILP: tl.constexpr,
    VTAIL0: tl.constexpr, VTAIL: tl.constexpr, VTAILP: tl.constexpr,
    K_NI: tl.constexpr,
    K0_M: tl.constexpr, K0_MP: tl.constexpr, K0_BITS: tl.constexpr, K0_NORM: tl.constexpr, K0_CODES: tl.constexpr,
    K0_CFAST: tl.constexpr,
    K1_M: tl.constexpr, K1_MP: tl.constexpr, K1_BITS: tl.constexpr, K1_NORM: tl.constexpr, K1_CODES: tl.constexpr,
    K1_CFAST: tl.constexpr,
    V_GROUP: tl.constexpr, V_NI: tl.constexpr,
    V0_M: tl.constexpr, V0_MP: tl.constexpr, V0_BITS: tl.constexpr, V0_NORM: tl.constexpr, V0_CODES: tl.constexpr,
    V0_CFAST: tl.constexpr,
    V1_M: tl.constexpr, V1_MP: tl.constexpr, V1_BITS: tl.constexpr, V1_NORM: tl.constexpr, V1_CODES: tl.constexpr,
    V1_CFAST: tl.constexpr,
    V_GS: tl.constexpr, V_NG: tl.constexpr, V_BITS: tl.constexpr, V_SCALE: tl.constexpr, V_ZERO: tl.constexpr,
    V_CODES: tl.constexpr, V_CFAST: tl.constexpr,
):
    # Packed cache (int32 words [NB, H, BS, SLOT_BYTES/4]) -> K', V' rows of the workspace
    # ([rows, H, W], strides stride_ot, stride_oh, unit last) for the tokens of sequence b:
    # workspace row cu_k[b] + t holds token t of b (t < seq_lens[b]).
    # Grid (num_seqs, cdiv(max seq_len, BT), H): BT tokens of one sequence and KV head.
    b = tl.program_id(0)
    h = tl.program_id(2)
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    tm = t < tl.load(seq_lens_ptr + b)
    page = tl.load(bt_ptr + b * stride_bt + t // block_size, mask=tm, other=0).to(tl.int64)
    ptrs = words + page * stride_cb + h.to(tl.int64) * stride_ch + (t % block_size).to(tl.int64) * stride_cs
    row = (tl.load(cu_k_ptr + b) + t).to(tl.int64) * stride_ot + h.to(tl.int64) * stride_oh
    # Non-finite tokens (SPEC §8) must give NaN exactly in the rows that see them.  The dense kernel
    # masks scores by assignment (a NaN key at a masked position never reaches a row), but it
    # multiplies probabilities by V' even where they are 0: so a token whose values are non-finite
    # is written with V' = 0 and NaN keys instead, which poisons exactly the rows that see it.
    vrows = v_out + row
    if V_GROUP:
        d = tl.arange(0, DP)
        v = group_values(ptrs, tm, BT, D, DP, V_GS, V_NG, V_BITS, V_SCALE, V_ZERO, V_CODES, V_CFAST)
        vbad = tl.sum(tl.where((d < D)[None, :] & ~_finite(v), 1, 0), axis=1) > 0
        _store_cols(vrows, tm, tl.where((d < D)[None, :] & ~vbad[:, None], v, 0.0), 0, DP)
    else:
        v0 = _dense_instance(ptrs, tm, v_cent, BT, V0_M, V0_MP, V0_BITS, V0_NORM, V0_CODES, V0_CFAST)
        vbad = ~_finite(load_f32(ptrs, tm, V0_NORM))
        if V_NI == 2:
            v1 = _dense_instance(ptrs, tm, v_cent + CENT_SLOTS, BT, V1_M, V1_MP, V1_BITS, V1_NORM, V1_CODES,
                                 V1_CFAST)
            vbad = vbad | ~_finite(load_f32(ptrs, tm, V1_NORM))
            _store_cols(vrows, tm, tl.where(vbad[:, None], 0.0, v1), V0_MP, V1_MP)
        _store_cols(vrows, tm, tl.where(vbad[:, None], 0.0, v0), 0, V0_MP)
    krows = k_out + row
    k0 = _dense_instance(ptrs, tm, k_cent, BT, K0_M, K0_MP, K0_BITS, K0_NORM, K0_CODES, K0_CFAST)
    _store_cols(krows, tm, tl.where(vbad[:, None], float("nan"), k0), 0, K0_MP)
    if K_NI == 2:
        k1 = _dense_instance(ptrs, tm, k_cent + CENT_SLOTS, BT, K1_M, K1_MP, K1_BITS, K1_NORM, K1_CODES, K1_CFAST)
        _store_cols(krows, tm, tl.where(vbad[:, None], float("nan"), k1), K0_MP, K1_MP)
    zero_tail(krows, tm, BT, KTAIL0, KTAIL, KTAILP)
    zero_tail(vrows, tm, BT, VTAIL0, VTAIL, VTAILP)


# ------------------------------------------------------------------ host side
def dense_width(params: KernelParams) -> int:
    """W: the workspace's head size (q', K' and V' share it; a multiple of 16)."""
    return max(key_width(params), acc_width(params))


def dense_prefill_supported(params: KernelParams, query_dtype: torch.dtype, device: torch.device,
                            config: AttnConfig) -> bool:
    """Whether prefill rows may take this path (else the packed-tile kernel, extend.py)."""
    m = params.meta
    if config.batch_invariant or not config.dense_prefill:
        return False
    if m["K0_QJL"] or m["K1_QJL"] or dense_width(params) > MAX_DENSE_WIDTH:
        return False
    if device.type == "cuda":
        return query_dtype == torch.bfloat16  # fp16 K' could overflow where fp16 K did not
    return True


def _dense_dtype(query: torch.Tensor) -> torch.dtype:
    return query.dtype if query.device.type == "cuda" else torch.float32


def dense_kv(cache: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor, params: KernelParams,
             plan: PrefillPlan, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """K', V' [plan.total_k, num_kv_heads, W] of the plan's sequences (block_table / seq_lens rows
    of those sequences only)."""
    h = cache.shape[1]
    w = dense_width(params)
    k = torch.empty((max(plan.total_k, 1), h, w), dtype=dtype, device=cache.device)
    v = torch.empty_like(k)
    if plan.total_k == 0:
        return k, v
    words = cache.view(torch.int32)
    kt, vt = _tail(key_width(params), w), _tail(acc_width(params), w)
    grid = (plan.num_seqs, triton.cdiv(plan.max_k, DENSE_BT), h)
    _dense_kv_kernel[grid](
        words, block_table, block_table.stride(0), seq_lens, plan.cu_k, k, v, k.stride(0), k.stride(1),
        cache.shape[2], words.stride(0), words.stride(1), words.stride(2), params.k_cent, params.v_cent,
        BT=DENSE_BT, KTAIL0=kt["TAIL0"], KTAIL=kt["TAIL"], KTAILP=kt["TAILP"],
        VTAIL0=vt["TAIL0"], VTAIL=vt["TAIL"], VTAILP=vt["TAILP"], **params.constexprs("dense_kv"), num_warps=4,
    )
    return k, v


@functools.cache
def _flash_varlen():
    """(vLLM's flash_attn_varlen_func, fa_version) when vLLM's FlashAttention is importable, else None."""
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func
    except Exception:  # no vLLM, or a build without its FlashAttention
        return None
    version = None
    for mod in ("vllm.v1.attention.backends.fa_utils", "vllm.attention.utils.fa_utils"):
        try:
            version = __import__(mod, fromlist=["get_flash_attn_version"]).get_flash_attn_version()
            break
        except Exception:
            continue
    if version is None:
        return None
    return flash_attn_varlen_func, version


def dense_attention(qd: torch.Tensor, kd: torch.Tensor, vd: torch.Tensor, plan: PrefillPlan, scale: float,
                    backend: str = "auto") -> torch.Tensor:
    """Causal (bottom-right) varlen attention of q' [rows, Hq, W] over K', V' [total_k, Hkv, W].
    backend: "flash" (vLLM's FlashAttention), "sdpa" (per sequence: torch SDPA on a GPU, a
    float32 masked attention on a CPU) or "auto" (flash on a GPU where vLLM has it, else sdpa)."""
    fa = _flash_varlen() if qd.device.type == "cuda" and backend in ("auto", "flash") else None
    if backend == "flash" and fa is None:
        raise RuntimeError("backend='flash' needs vLLM's FlashAttention (vllm.vllm_flash_attn) on a GPU")
    if fa is not None:
        fn, version = fa
        return fn(q=qd, k=kd, v=vd, max_seqlen_q=plan.max_q, cu_seqlens_q=plan.cu_q, max_seqlen_k=plan.max_k,
                  cu_seqlens_k=plan.cu_k, softmax_scale=scale, causal=True, fa_version=version)
    od = torch.empty_like(qd)
    q0 = k0 = 0
    for lq, lk in zip(plan.q_lens, plan.k_lens):
        if lq:
            q = qd[q0:q0 + lq].transpose(0, 1)
            k = kd[k0:k0 + lk].transpose(0, 1)
            v = vd[k0:k0 + lk].transpose(0, 1)
            attend = _masked_attention if qd.device.type == "cpu" else _sdpa_attention
            od[q0:q0 + lq] = attend(q, k, v, scale).transpose(0, 1)
        q0 += lq
        k0 += lk
    return od


def _sdpa_attention(q, k, v, scale):
    """torch SDPA, causal bottom-right ([H, rows, W] over [Hkv, keys, W]): a GPU without vLLM."""
    from torch.nn.attention.bias import causal_lower_right
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    lq, lk = q.shape[1], k.shape[1]
    mask = None if lq == lk else causal_lower_right(lq, lk)
    return sdpa(q[None], k[None], v[None], attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True)[0]


MASKED_ROWS = 256  # query rows per block of _masked_attention (bounds its score matrix)


def _masked_attention(q, k, v, scale):
    """Causal bottom-right attention in float32 with the mask applied by assignment (CPU): a NaN
    score at a masked position never reaches a row, as in FlashAttention (torch SDPA's CPU paths add
    an additive -inf mask, which turns such a NaN into the row's output)."""
    lq, lk = q.shape[1], k.shape[1]
    g = q.shape[0] // k.shape[0]
    k = k.float().repeat_interleave(g, 0)
    v = v.float().repeat_interleave(g, 0)
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    cols = torch.arange(lk, device=q.device)
    for r0 in range(0, lq, MASKED_ROWS):
        r1 = min(lq, r0 + MASKED_ROWS)
        s = torch.matmul(q[:, r0:r1].float(), k.transpose(1, 2)) * scale
        seen = cols[None, :] <= (lk - lq + torch.arange(r0, r1, device=q.device))[:, None]
        p = torch.softmax(torch.where(seen, s, float("-inf")), dim=-1)
        out[:, r0:r1] = torch.matmul(p, v)
    return out.to(q.dtype)


def rotates_kv(rotation: str, query_rows: int, cached_tokens: int, num_q_heads: int, num_kv_heads: int) -> bool:
    """Whether a step rotates its workspace back (K = Pi^T K', V = Pi^T V') instead of its
    query rows and outputs (AttnConfig.dense_rotation): "auto" picks the side with fewer rows."""
    if rotation not in DENSE_ROTATIONS:
        raise ValueError(f"rotation={rotation!r} is not supported; allowed values: {list(DENSE_ROTATIONS)}")
    if rotation == "auto":
        return cached_tokens * num_kv_heads < query_rows * num_q_heads
    return rotation == "kv"


def prefill_attention(query: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
                      params: KernelParams, plan: PrefillPlan, softmax_scale: float, out: torch.Tensor, *,
                      rotation: str, backend: str = "auto") -> torch.Tensor:
    """query [plan rows, Hq, D] / out (same shape): the rows of the plan's sequences; block_table,
    seq_lens: those sequences' rows.  Checked by the caller (dispatch.attention).  rotation: where
    the rotations run (AttnConfig.dense_rotation; rotates_kv)."""
    m = params.meta
    dtype = _dense_dtype(query)
    w = dense_width(params)
    hq, hkv, d = query.shape[1], cache.shape[1], m["D"]
    row_bytes = cache.shape[1] * w * torch.finfo(dtype).bits // 8 * 2
    # one side for the whole step, so that splitting it into workspace parts changes no row
    kv_side = rotates_kv(rotation, sum(plan.q_lens), plan.total_k, hq, hkv)
    for part in plan.parts(max(1, MAX_WORKSPACE_BYTES // row_bytes)):
        s0 = part.first_seq - plan.first_seq
        t0 = part.first_token - plan.first_token
        rows = sum(part.q_lens)
        q = query[t0:t0 + rows]
        o = out[t0:t0 + rows]
        bt = block_table[s0:s0 + part.num_seqs]
        sl = seq_lens[s0:s0 + part.num_seqs]
        kd, vd = dense_kv(cache, bt, sl, params, part, dtype)
        if kv_side:
            # the workspace back in the original domain: attention of the plain query rows, no output rotation
            n = kd.shape[0]
            k = rotate_rows(kd, params, torch.empty((n, hkv, d), dtype=dtype, device=query.device), inverse=True,
                            tensor="key")
            if m["V_GROUP"]:
                v = vd[:, :, :d].contiguous() if w != d else vd
            else:
                v = rotate_rows(vd, params, torch.empty((n, hkv, d), dtype=dtype, device=query.device),
                                inverse=True)
            o.copy_(dense_attention(q.to(dtype), k, v, part, softmax_scale, backend))
            continue
        qd = rotate_rows(q, params, torch.empty((rows, hq, w), dtype=dtype, device=query.device), inverse=False)
        od = dense_attention(qd, kd, vd, part, softmax_scale, backend)
        if m["V_GROUP"]:
            o.copy_(od[:, :, :d])
        else:
            rotate_rows(od, params, o, inverse=True)
    return out

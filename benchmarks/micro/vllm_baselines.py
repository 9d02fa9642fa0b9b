"""vLLM decode baselines, measured in the same process as our kernels.

Needs vLLM on the GPU machine (../shared/tools/gpu-vllm brings 0.26.0). For each
(batch, context) at Llama-3-8B geometry it times, with the caller's timer:

* ``vllm-fa3-bf16``: vLLM's FlashAttention 3 paged decode over a bf16 cache
  (``vllm.vllm_flash_attn.flash_attn_varlen_func``, the call vLLM's FLASH_ATTN
  backend makes for decode: cu_seqlens_q = arange, seqused_k, block_table);
* ``vllm-fa3-fp8``: the same with an e4m3 cache and e4m3 query (descales 1);
* ``vllm-tq-4bit_nc`` / ``vllm-tq-3bit_nc``: vLLM's built-in TurboQuant decode
  (``triton_turboquant_decode_attention``) over a cache filled by its own
  store kernel from random normal K/V, with the layout constants of its
  ``TurboQuantConfig`` presets and its default 32 KV splits.

Rows carry bytes actually stored per token and head (512, 256, and vLLM's
aligned TurboQuant slot), the same keys as bench_decode.py's rows.
"""

from __future__ import annotations

import torch

BLOCK_SIZE_FA = 16
BLOCK_SIZE_TQ = 32  # vLLM's TurboQuant backend forces block size 32


def _block_tables(num_blocks: int, batch: int, ctx: int, copies: int, bs: int, gen, device="cuda"):
    per = -(-ctx // bs)
    return [torch.randperm(num_blocks, generator=gen, device=device)[: batch * per].view(batch, per).to(torch.int32)
            for _ in range(copies)]


def fa3_rows(shapes, gen, copy_bw, time_graph, n_rotate, hq, hkv, d):
    from vllm.vllm_flash_attn import flash_attn_varlen_func

    rows = []
    for dtype_name, cache_dtype, nbytes_el in (("bf16", torch.bfloat16, 2), ("fp8", torch.float8_e4m3fn, 1)):
        for b, c in shapes:
            nbytes = b * c * hkv * d * 2 * nbytes_el
            r = n_rotate(nbytes)
            nb = b * (-(-c // BLOCK_SIZE_FA)) * r
            k = torch.randn((nb, BLOCK_SIZE_FA, hkv, d), generator=gen, device="cuda").to(cache_dtype)
            v = torch.randn((nb, BLOCK_SIZE_FA, hkv, d), generator=gen, device="cuda").to(cache_dtype)
            bts = _block_tables(nb, b, c, r, BLOCK_SIZE_FA, gen)
            q = torch.randn((b, hq, d), generator=gen, device="cuda").to(torch.bfloat16)
            if cache_dtype != torch.bfloat16:
                q = q.to(cache_dtype)
            cu_q = torch.arange(b + 1, dtype=torch.int32, device="cuda")
            sl = torch.full((b,), c, dtype=torch.int32, device="cuda")
            outs = [torch.empty((b, hq, d), dtype=torch.bfloat16, device="cuda") for _ in range(r)]
            extra = {}
            if cache_dtype != torch.bfloat16:
                one = torch.ones((b, hkv), dtype=torch.float32, device="cuda")
                extra = {"q_descale": one, "k_descale": one, "v_descale": one}

            def call(bt, o):
                flash_attn_varlen_func(q, k, v, max_seqlen_q=1, cu_seqlens_q=cu_q, max_seqlen_k=c, seqused_k=sl,
                                       softmax_scale=d**-0.5, causal=True, block_table=bt, out=o, fa_version=3,
                                       **extra)

            t = time_graph([lambda bt=bt, o=o: call(bt, o) for bt, o in zip(bts, outs)])
            rows.append({"kind": "vllm", "preset": f"vllm-fa3-{dtype_name}", "slot_bytes": 2 * d * nbytes_el,
                         "batch": b, "context": c, "seconds": t, "bytes": nbytes, "gbps": nbytes / t / 1e9,
                         "copy_fraction": nbytes / t / copy_bw, "rotate": r})
            del k, v
            torch.cuda.empty_cache()
    return rows


def tq_rows(shapes, gen, copy_bw, time_graph, n_rotate, hq, hkv, d):
    from vllm.model_executor.layers.quantization.turboquant.centroids import get_centroids
    from vllm.model_executor.layers.quantization.turboquant.config import TQ_PRESETS, TurboQuantConfig
    from vllm.v1.attention.ops.triton_turboquant_decode import triton_turboquant_decode_attention
    from vllm.v1.attention.ops.triton_turboquant_store import triton_turboquant_store

    rows = []
    for name in ("turboquant_4bit_nc", "turboquant_3bit_nc"):
        p = TQ_PRESETS[name]
        cfg = TurboQuantConfig(head_dim=d, key_quant_bits=p["key_quant_bits"],
                               value_quant_bits=p["value_quant_bits"], norm_correction=p.get("norm_correction", False))
        slot = cfg.slot_size_aligned
        h = torch.tensor([[1.0]])
        while h.shape[0] < d:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        pi = (h / d**0.5).to("cuda")
        cent = get_centroids(d, cfg.centroid_bits).to("cuda", torch.float32)
        cs, _ = cent.sort()
        mid = (cs[:-1] + cs[1:]) / 2
        for b, c in shapes:
            nbytes = b * c * hkv * slot
            r = n_rotate(nbytes)
            nb = b * (-(-c // BLOCK_SIZE_TQ)) * r
            cache = torch.zeros((nb, BLOCK_SIZE_TQ, hkv, slot), dtype=torch.uint8, device="cuda")
            chunk = 1 << 16
            for s0 in range(0, nb * BLOCK_SIZE_TQ, chunk):
                n = min(chunk, nb * BLOCK_SIZE_TQ - s0)
                kk = torch.randn((n, hkv, d), generator=gen, device="cuda", dtype=torch.bfloat16)
                vv = torch.randn((n, hkv, d), generator=gen, device="cuda", dtype=torch.bfloat16)
                sm = torch.arange(s0, s0 + n, dtype=torch.int32, device="cuda")
                triton_turboquant_store(kk, vv, cache, sm, pi, mid, cfg.key_mse_bits, cfg.key_packed_size,
                                        cfg.effective_value_quant_bits, key_fp8=cfg.key_fp8)
            bts = _block_tables(nb, b, c, r, BLOCK_SIZE_TQ, gen)
            q = torch.randn((b, hq, d), generator=gen, device="cuda").to(torch.bfloat16)
            sl = torch.full((b,), c, dtype=torch.int32, device="cuda")

            def call(bt):
                triton_turboquant_decode_attention(q, cache, bt, sl, pi, cent, d**-0.5, cfg.key_mse_bits,
                                                   cfg.key_packed_size, cfg.effective_value_quant_bits,
                                                   key_fp8=cfg.key_fp8, norm_correction=cfg.norm_correction,
                                                   PiT=pi, max_num_kv_splits=32)

            t = time_graph([lambda bt=bt: call(bt) for bt in bts])
            rows.append({"kind": "vllm", "preset": f"vllm-tq-{name.removeprefix('turboquant_')}", "slot_bytes": slot,
                         "batch": b, "context": c, "seconds": t, "bytes": nbytes, "gbps": nbytes / t / 1e9,
                         "copy_fraction": nbytes / t / copy_bw, "rotate": r})
            del cache
            torch.cuda.empty_cache()
    return rows


def vllm_rows(shapes, gen, copy_bw, time_graph, n_rotate, hq=32, hkv=8, d=128) -> list[dict]:
    import vllm

    rows = fa3_rows(shapes, gen, copy_bw, time_graph, n_rotate, hq, hkv, d)
    rows += tq_rows(shapes, gen, copy_bw, time_graph, n_rotate, hq, hkv, d)
    for r in rows:
        r["version"] = f"vllm {vllm.__version__}"
    return rows

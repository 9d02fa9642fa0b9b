"""The entry points: registration, the CPU platform, the opt-out."""

from __future__ import annotations

import importlib.metadata as md

import pytest

pytest.importorskip("vllm")
from tq_helpers import ON_CUDA  # noqa: E402

from turboquant.vllm_integration import plugin  # noqa: E402


def test_entry_points_installed():
    general = {e.name: e.value for e in md.entry_points(group="vllm.general_plugins")}
    platform = {e.name: e.value for e in md.entry_points(group="vllm.platform_plugins")}
    assert general.get("turboquant") == "turboquant.vllm_integration.plugin:register"
    assert platform.get("turboquant_cpu") == "turboquant.vllm_integration.plugin:cpu_platform_plugin"


def test_register_makes_custom_ours():
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    plugin.register()
    plugin.register()  # idempotent
    assert AttentionBackendEnum.CUSTOM.get_path() == plugin.BACKEND_PATH
    from turboquant.vllm_integration.backend import TurboQuantAttentionBackend

    assert AttentionBackendEnum.CUSTOM.get_class() is TurboQuantAttentionBackend
    assert TurboQuantAttentionBackend.get_name() == "CUSTOM"


@pytest.mark.skipif(ON_CUDA, reason="CPU platform only")
def test_cpu_platform_is_ours_and_neutral(monkeypatch):
    import torch
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.selector import AttentionSelectorConfig

    from turboquant.vllm_integration.platform import TurboQuantCpuPlatform

    assert isinstance(current_platform, TurboQuantCpuPlatform)
    cfg = AttentionSelectorConfig(head_size=64, dtype=torch.bfloat16, kv_cache_dtype="auto", block_size=None)
    # any other choice is CpuPlatform's
    assert TurboQuantCpuPlatform.get_attn_backend_cls(None, cfg) == AttentionBackendEnum.CPU_ATTN.get_path()
    plugin.register()
    assert TurboQuantCpuPlatform.get_attn_backend_cls(AttentionBackendEnum.CUSTOM, cfg) == plugin.BACKEND_PATH
    bad = cfg._replace(head_size=48)
    with pytest.raises(ValueError, match=r"head_size not supported; this layer: head_size=48.*head_size in \[64"):
        TurboQuantCpuPlatform.get_attn_backend_cls(AttentionBackendEnum.CUSTOM, bad)

    assert plugin.cpu_platform_plugin() == plugin.PLATFORM_PATH
    monkeypatch.setenv("TURBOQUANT_VLLM_CPU_PLATFORM", "0")
    assert plugin.cpu_platform_plugin() is None


@pytest.mark.skipif(ON_CUDA, reason="CPU only")
def test_cpu_without_triton_interpret_fails_clearly(tiny_model, engines, monkeypatch):
    from tq_helpers import error_text, llm_kwargs, shutdown_llm
    from vllm import LLM

    engines.close()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(Exception) as ei:
        shutdown_llm(LLM(**llm_kwargs(tiny_model)))
    shutdown_llm(None)
    msg = error_text(ei.value)
    assert "set TRITON_INTERPRET=1" in msg and "'reference'" in msg

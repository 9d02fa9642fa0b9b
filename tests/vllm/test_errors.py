"""Unsupported configurations fail at engine start with one message that names the option and
what is supported: vLLM's own reasons (through the backend's supports_* hooks) as vLLM words them,
the layer's values, and the backend's supported configuration.  vLLM passes no layer name to
backend selection or to the Impl, so these messages name none (bind() and the 0.26 spec hook do)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")
from tiny_model import build_tiny_llama  # noqa: E402
from tq_helpers import KV_BYTES, ON_CUDA, error_text, llm_kwargs, shutdown_llm  # noqa: E402

from turboquant import format as tqf  # noqa: E402
from turboquant.vllm_integration.engine_configs import memory_kwargs  # noqa: E402


def _start_fails(engines, **kw) -> str:
    from vllm import LLM

    engines.close()
    with pytest.raises(Exception) as ei:
        llm = LLM(**kw)
        shutdown_llm(llm)  # pragma: no cover - reached only when the test fails
    shutdown_llm(None)  # reset vLLM's in-process distributed state after the failed start
    return error_text(ei.value)


def test_bad_preset_name(tiny_model, engines):
    kw = llm_kwargs(tiny_model, preset="tq9", store="reference", attention="reference")
    msg = _start_fails(engines, **kw)
    assert "additional_config['turboquant']['preset']='tq9' is not supported" in msg
    assert str(list(tqf.PRESETS)) in msg


def test_unknown_option(tiny_model, engines):
    kw = llm_kwargs(tiny_model, store="reference", attention="reference")
    kw["additional_config"]["turboquant"]["presett"] = "tq3"
    msg = _start_fails(engines, **kw)
    assert "unknown option(s) ['presett']" in msg and "'preset'" in msg


def test_bad_impl_value(tiny_model, engines):
    kw = llm_kwargs(tiny_model, store="cuda", attention="reference")
    msg = _start_fails(engines, **kw)
    assert "additional_config['turboquant']['store_impl']='cuda' is not supported" in msg
    assert "['auto', 'triton', 'cpp', 'torch', 'reference']" in msg


def test_unsupported_head_size(tmp_path, engines):
    model = build_tiny_llama(str(tmp_path / "d32"), head_dim=32)
    msg = _start_fails(engines, **llm_kwargs(model, store="reference", attention="reference"))
    assert "TurboQuant attention backend cannot run an attention layer: head_size not supported" in msg
    assert "this layer: head_size=32" in msg and f"head_size in {list(tqf.SUPPORTED_HEAD_SIZES)}" in msg


def test_sliding_window_layer(tmp_path, engines):
    model = build_tiny_llama(str(tmp_path / "swa"), sliding_window=16,
                             layer_types=["full_attention", "sliding_attention"])
    msg = _start_fails(engines, **llm_kwargs(model, store="reference", attention="reference"))
    assert "TurboQuant attention backend cannot run an attention layer: sliding window not supported" in msg
    assert "full (no sliding window)" in msg


def test_quantized_kv_cache_dtype(tiny_model, engines):
    msg = _start_fails(engines, **llm_kwargs(tiny_model, store="reference", attention="reference",
                                             kv_cache_dtype="fp8"))
    assert "kv_cache_dtype not supported" in msg and "kv_cache_dtype='fp8'" in msg
    assert "kv_cache_dtype in ['auto']" in msg


@pytest.mark.skipif(ON_CUDA, reason="the guard lives in the CPU platform")
def test_turboquant_options_without_backend(tiny_model, engines):
    kw = llm_kwargs(tiny_model, store="reference", attention="reference")
    del kw["attention_backend"]
    msg = _start_fails(engines, **kw)
    assert "TurboQuant runs only with attention_backend='CUSTOM'" in msg


_LAYER = dict(head_size=64, dtype="bfloat16", kv_cache_dtype="auto", block_size=None, use_mla=False, has_sink=False,
              use_sparse=False, use_mm_prefix=False, use_per_head_quant_scales=False, device_capability=None,
              attn_type="decoder")


def _validate(**kw) -> list[str]:
    import torch

    from turboquant.vllm_integration.backend import TurboQuantAttentionBackend

    args = {**_LAYER, **kw}
    args["dtype"] = getattr(torch, args["dtype"])
    return TurboQuantAttentionBackend.validate_configuration(**args)


@pytest.mark.parametrize("kw,needles", [
    (dict(use_mla=True), ["MLA not supported", "without MLA"]),
    (dict(attn_type="encoder_decoder"), ["attention type encoder_decoder not supported", "attn_type 'decoder'"]),
    (dict(attn_type="encoder_only"), ["attention type encoder_only not supported", "attn_type 'decoder'"]),
    (dict(has_sink=True), ["attention sinks not supported", "without MLA, attention sinks"]),
    (dict(has_sliding_window=True), ["sliding window not supported", "full (no sliding window)"]),
    # every model dtype vLLM offers (float16, bfloat16, float32) is supported; anything else is named
    (dict(dtype="float64"), ["dtype not supported", "dtype=float64", "dtype in ['float16', 'bfloat16', 'float32']"]),
    (dict(head_size=48), ["head_size not supported", "head_size=48", "head_size in [64, 80, 96, 112, 128, 192, 256]"]),
    (dict(kv_cache_dtype="fp8"),
     ["kv_cache_dtype not supported", "kv_cache_dtype='fp8'", "kv_cache_dtype in ['auto']"]),
])
def test_validate_configuration_names_option(kw, needles):
    """vLLM's reason as it words it, once, in one message with the layer's values and what is supported."""
    reasons = _validate(**kw)
    assert len(reasons) == 1 and all(n in reasons[0] for n in needles), reasons
    assert reasons[0].count(" not supported") == 1, reasons  # no second, TurboQuant-worded reason
    assert _validate() == []


def _current(**turboquant):
    """vLLM's current-config context with a stand-in config (the fields the backend reads)."""
    from types import SimpleNamespace

    import torch
    from vllm.config import set_current_vllm_config

    cfg = SimpleNamespace(model_config=SimpleNamespace(dtype=torch.bfloat16),
                          additional_config={"turboquant": turboquant})
    return set_current_vllm_config(cfg)


def test_validate_configuration_preset_reason_from_config():
    """The preset's own limits (vLLM's supports_combination hook) come from the current config."""
    with _current(preset="tq3_hadamard"):
        reasons = _validate(head_size=80)
        assert len(reasons) == 1 and "preset='tq3_hadamard' with head_size=80" in reasons[0], reasons
        assert _validate(head_size=128) == []
    with _current(preset="tq9"):  # a bad option: its own message
        reasons = _validate()
        assert len(reasons) == 1 and "additional_config['turboquant']['preset']='tq9' is not supported" in reasons[0]
    assert _validate(head_size=80) == []  # no config: the Impl checks the preset (it always has the config)


def test_boundary_marker_dtype_is_accepted():
    """SPEC 7.1: vLLM gives the main-preset layers the marker kv_cache_dtype; with the boundary options
    current the backend accepts it (and only it), without a current config it is an unsupported dtype."""
    from turboquant.vllm_integration.config import kv_cache_marker

    marker = kv_cache_marker("bfloat16", "tq4")
    with _current(preset="tq3", boundary_layers=1, boundary_preset="tq4"):
        assert _validate(kv_cache_dtype=marker) == []
        assert "kv_cache_dtype not supported" in _validate(kv_cache_dtype="fp8")[0]
    with _current(preset="tq3"):
        assert "kv_cache_dtype not supported" in _validate(kv_cache_dtype=marker)[0]


def test_customize_spec_config_sources():
    """customize_spec takes the config vLLM passes (compat.py's hook) or the current one, returns a packed
    spec as it is, and raises where vLLM gives neither instead of guessing the preset."""
    import torch
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    from turboquant.vllm_integration.backend import TurboQuantAttentionBackend as B

    spec = FullAttentionSpec(block_size=16, num_kv_heads=2, head_size=64, dtype=torch.bfloat16)
    with _current(preset="tq3"):
        packed = B.customize_spec(spec)
    slot = tqf.LayerFormat(tqf.get_preset("tq3"), 64).slot_bytes
    assert packed.page_size_bytes == 16 * 2 * slot
    assert B.customize_spec(packed) is packed
    with pytest.raises(RuntimeError, match="without a vLLM config"):
        B.customize_spec(spec)
    with pytest.raises(RuntimeError, match="without a vLLM config"):
        B.get_kv_cache_shape(4, 16, 2, 64)


def test_encoder_model_is_refused(tmp_path, engines):
    """An encoder (BERT, pooling runner): vLLM's own backend serves it; TurboQuant refuses at
    engine start, with vLLM's reason and the attention type it supports."""
    from tiny_model import build_tiny_bert

    model = build_tiny_bert(str(tmp_path / "bert"))
    kw = dict(model=model, runner="pooling", max_model_len=128, enforce_eager=True)
    kw.update(memory_kwargs(0.3, KV_BYTES, fixed_gpu_pool=True))
    msg = _start_fails(engines, attention_backend="CUSTOM", additional_config={"turboquant": {"preset": "tq3"}}, **kw)
    assert "TurboQuant attention backend cannot run an attention layer: attention type" in msg
    assert "encoder_only not supported" in msg.lower()  # vLLM words it with the enum (0.32) or its value
    assert "attn_type 'decoder'" in msg

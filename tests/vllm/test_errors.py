"""Unsupported configurations fail at engine start, naming the layer, the option
and what is supported."""

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
    assert "['auto', 'triton', 'torch', 'reference']" in msg


def test_unsupported_head_size(tmp_path, engines):
    model = build_tiny_llama(str(tmp_path / "d32"), head_dim=32)
    msg = _start_fails(engines, **llm_kwargs(model, store="reference", attention="reference"))
    assert "layer 'model.layers.0.self_attn.attn'" in msg
    assert f"head_size=32 is not supported; supported: {list(tqf.SUPPORTED_HEAD_SIZES)}" in msg


def test_sliding_window_layer(tmp_path, engines):
    model = build_tiny_llama(str(tmp_path / "swa"), sliding_window=16,
                             layer_types=["full_attention", "sliding_attention"])
    msg = _start_fails(engines, **llm_kwargs(model, store="reference", attention="reference"))
    assert "sliding_window is not supported" in msg
    assert "layer 'model.layers.1.self_attn.attn'" in msg


def test_quantized_kv_cache_dtype(tiny_model, engines):
    msg = _start_fails(engines, **llm_kwargs(tiny_model, store="reference", attention="reference",
                                             kv_cache_dtype="fp8"))
    assert "kv_cache_dtype='fp8' is not supported" in msg and "supported: ['auto']" in msg


@pytest.mark.skipif(ON_CUDA, reason="the guard lives in the CPU platform")
def test_turboquant_options_without_backend(tiny_model, engines):
    kw = llm_kwargs(tiny_model, store="reference", attention="reference")
    del kw["attention_backend"]
    msg = _start_fails(engines, **kw)
    assert "TurboQuant runs only with attention_backend='CUSTOM'" in msg


@pytest.mark.parametrize("kw,needle", [
    (dict(use_mla=True), "use_mla=True (multi-head latent attention) is not supported"),
    (dict(attn_type="encoder_decoder"), "attn_type='encoder_decoder' (encoder / cross attention) is not supported"),
    (dict(attn_type="encoder_only"), "attn_type='encoder_only'"),
    (dict(has_sink=True), "attention sinks are not supported"),
    # every model dtype vLLM offers (float16, bfloat16, float32) is supported; anything else is named
    (dict(dtype="float64"), "dtype=float64 is not supported; supported: ['float16', 'bfloat16', 'float32']"),
    (dict(head_size=48), "head_size=48 is not supported; supported: [64, 80, 96, 112, 128, 192, 256]"),
])
def test_validate_configuration_names_option(kw, needle):
    import torch

    from turboquant.vllm_integration.backend import TurboQuantAttentionBackend

    args = dict(head_size=64, dtype=torch.bfloat16, kv_cache_dtype="auto", block_size=None, use_mla=False,
                has_sink=False, use_sparse=False, use_mm_prefix=False, use_per_head_quant_scales=False,
                device_capability=None, attn_type="decoder")
    args.update(kw)
    if isinstance(args["dtype"], str):
        args["dtype"] = getattr(torch, args["dtype"])
    reasons = TurboQuantAttentionBackend.validate_configuration(**args)
    assert len(reasons) == 1 and needle in reasons[0], reasons
    args.update(use_mla=False, attn_type="decoder", has_sink=False, dtype=torch.bfloat16, head_size=64)
    assert TurboQuantAttentionBackend.validate_configuration(**args) == []


def test_encoder_model_is_refused(tmp_path, engines):
    """An encoder (BERT, pooling runner): vLLM's own backend serves it; TurboQuant refuses at
    engine start, naming the layer and the attention type it supports."""
    from tiny_model import build_tiny_bert

    model = build_tiny_bert(str(tmp_path / "bert"))
    kw = dict(model=model, runner="pooling", max_model_len=128, enforce_eager=True)
    kw.update(memory_kwargs(0.3, KV_BYTES, fixed_gpu_pool=True))
    msg = _start_fails(engines, attention_backend="CUSTOM", additional_config={"turboquant": {"preset": "tq3"}}, **kw)
    assert "TurboQuant attention backend cannot run layer 'model.encoder.layer.0.attention.output.attn'" in msg
    assert "attn_type='encoder_only' (encoder / cross attention) is not supported; supported: ['decoder']" in msg

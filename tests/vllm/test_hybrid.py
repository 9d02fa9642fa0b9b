"""A hybrid model: TurboQuant compresses the full-attention layers, vLLM's own backend keeps the
linear-attention (gated delta-net) layers, and the pool still grows by the byte ratio.

vLLM sizes hybrid pages so that an attention block and a linear-attention state share one page
size (it raises the attention block size), so the check is on tokens: blocks x block_size.
"""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("vllm")
pytest.importorskip("transformers", minversion="4.57")  # Qwen3-Next
from tq_helpers import KV_BYTES, store_snapshot  # noqa: E402

from turboquant import format as tqf  # noqa: E402
from turboquant.conformance.compare import compare_slots  # noqa: E402
from turboquant.vllm_integration import debug  # noqa: E402
from turboquant.vllm_integration.compat import (  # noqa: E402
    HAS_CUSTOMIZE_SPEC,
    hybrid_page_conflict,
    packed_spec,
    shutdown_llm,
)
from turboquant.vllm_integration.engine_configs import memory_kwargs  # noqa: E402

# vLLM 0.26 (no AttentionBackend.customize_spec) pads the linear-attention pages to the *unpacked*
# attention page; only a preset whose slot divides it (k4v3 at head size 64) can share the pool there
PRESET = "tq3" if HAS_CUSTOMIZE_SPEC else "k4v3"
PROMPTS = [[1] + list(range(5, 5 + n)) for n in (6, 40)]


@pytest.fixture(scope="module")
def hybrid_model(tmp_path_factory):
    from tiny_model import build_tiny_hybrid

    return build_tiny_hybrid(str(tmp_path_factory.mktemp("tiny_hybrid")))


def _kwargs(model, turboquant: bool, preset: str = PRESET) -> dict:
    kw = dict(model=model, dtype="bfloat16", max_model_len=256, max_num_seqs=2, enforce_eager=True, seed=0)
    kw.update(memory_kwargs(0.3, KV_BYTES, fixed_gpu_pool=True))
    extra = {}
    if importlib.util.find_spec("flashinfer") is None:
        # vLLM picks FlashInfer's gated-delta-net prefill on Hopper by default (0.26); without the
        # package, its own option selects the Triton kernel (ignored on CPU, which always uses it)
        extra["gdn_prefill_backend"] = "triton"
    if turboquant:
        kw.update(attention_backend="CUSTOM")
        extra["turboquant"] = {"preset": preset}
    if extra:
        kw.update(additional_config=extra)
    return kw


def _attention_block_size(llm) -> int:
    """Tokens per block of the full-attention layers' KV-cache group (vLLM may scale it above
    cache_config.block_size to share one page size with the linear-attention states)."""
    from tq_helpers import scheduler
    from vllm.v1.kv_cache_interface import AttentionSpec

    sizes = {g.kv_cache_spec.block_size for g in scheduler(llm).kv_cache_manager.kv_cache_config.kv_cache_groups
             if isinstance(g.kv_cache_spec, AttentionSpec)}
    assert len(sizes) == 1, sizes
    return sizes.pop()


def _run(model, engines, turboquant: bool):
    from vllm import LLM, SamplingParams

    engines.close()
    kw = _kwargs(model, turboquant)
    try:
        llm = LLM(**kw)
    except Exception as e:  # a platform without a linear-attention backend for this model
        if not turboquant and "head dim" in str(e).lower():
            pytest.skip(f"vLLM cannot serve the tiny hybrid model here: {e}")
        raise
    try:
        cc = llm.llm_engine.vllm_config.cache_config
        events = []

        def record(ev, d):
            events.append((ev, d["layer_name"], d.get("fmt"), store_snapshot(d) if ev == "store" else None))

        with debug.recording(record):
            outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                                SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True), use_tqdm=False)
        return dict(tokens=int(cc.num_gpu_blocks) * _attention_block_size(llm), events=events,
                    outs=[list(o.outputs[0].token_ids) for o in outs])
    finally:
        shutdown_llm(llm)


@pytest.fixture(scope="module")
def runs(hybrid_model, engines):
    return _run(hybrid_model, engines, False), _run(hybrid_model, engines, True)


def test_only_full_attention_layers_are_compressed(runs):
    base, tq = runs
    assert not base["events"]
    layers = {name for _, name, _, _ in tq["events"]}
    assert layers == {"model.layers.1.self_attn.attn", "model.layers.3.self_attn.attn"}, layers


def test_stored_bytes_match_reference(runs):
    _, tq = runs
    stores = [(fmt, s) for ev, _, fmt, s in tq["events"] if ev == "store"]
    assert stores
    for fmt, s in stores:
        assert fmt.preset.name == PRESET and fmt.head_size == 64
        rep = compare_slots(s["slots"], s["key"], s["value"], fmt)
        assert rep.ok, rep


def test_capacity_grows_by_the_byte_ratio(runs):
    base, tq = runs
    want = tqf.bf16_slot_bytes(64) / tqf.LayerFormat(tqf.get_preset(PRESET), 64).slot_bytes
    assert abs(tq["tokens"] / base["tokens"] / want - 1) <= 0.02, (tq["tokens"], base["tokens"], want)


def test_generates(runs):
    _, tq = runs
    assert all(len(t) == 8 for t in tq["outs"])


def test_page_conflict_check():
    """The check behind the clear error on vLLM 0.26 (below), on vLLM's own spec objects: a
    hybrid model needs the packed page to divide the unpacked one; other models never conflict."""
    from types import SimpleNamespace

    import torch
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    spec = FullAttentionSpec(block_size=16, num_kv_heads=2, head_size=64, dtype=torch.bfloat16)
    hybrid, plain = (SimpleNamespace(model_config=SimpleNamespace(is_hybrid=h)) for h in (True, False))
    slot = {p: tqf.LayerFormat(tqf.get_preset(p), 64).slot_bytes for p in ("tq3", "k4v3")}
    assert tqf.bf16_slot_bytes(64) % slot["tq3"] and tqf.bf16_slot_bytes(64) % slot["k4v3"] == 0
    msg = hybrid_page_conflict(hybrid, spec, packed_spec(spec, slot["tq3"]))
    assert f"packed page ({16 * 2 * slot['tq3']} B per block)" in msg and "presets that do: ['k4v3']" in msg
    assert hybrid_page_conflict(hybrid, spec, packed_spec(spec, slot["k4v3"])) is None
    assert hybrid_page_conflict(plain, spec, packed_spec(spec, slot["tq3"])) is None


@pytest.mark.skipif(HAS_CUSTOMIZE_SPEC, reason="vLLM with customize_spec sizes hybrid pages from the packed spec")
def test_unfitting_preset_fails_clearly_at_start(hybrid_model, engines):
    """vLLM 0.26: tq3's page does not divide the unpacked page; the engine does not start, and says
    why and what works, instead of vLLM's NotImplementedError about block strides."""
    from tq_helpers import error_text
    from vllm import LLM

    engines.close()
    with pytest.raises(Exception) as ei:
        shutdown_llm(LLM(**_kwargs(hybrid_model, True, preset="tq3")))
    shutdown_llm(None)
    msg = error_text(ei.value)
    assert "TurboQuant attention backend cannot run layer 'model.layers.1.self_attn.attn'" in msg, msg
    assert "presets that do: ['k4v3']" in msg, msg

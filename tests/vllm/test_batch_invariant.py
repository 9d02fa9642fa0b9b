"""The ``batch_invariant`` option through vLLM: the batch-invariant kernel mode
(turboquant.triton_impl.batch_invariant_config; bit-level checks in
triton_impl/tests/test_batch_invariance.py) runs inside the engine, with chunked
prefill and mixed prefill/decode batches, and each prompt's greedy tokens are the
same alone and in the batch.  float32 model, Triton attention (the interpreter on
a CPU)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")
from test_engine import PROMPTS, SHORT_TOKENS, _generate, _tokens  # noqa: E402
from tq_helpers import kernels_available, llm_kwargs  # noqa: E402

from turboquant.vllm_integration import debug  # noqa: E402


def test_backend_accepts_vllm_batch_invariant_switch():
    from vllm.v1.attention.backend import AttentionBackend

    from turboquant.vllm_integration.backend import TurboQuantAttentionBackend

    assert not AttentionBackend.supports_batch_invariance()  # vLLM's default: refused under the switch
    assert TurboQuantAttentionBackend.supports_batch_invariance()


class Configs:
    def __init__(self):
        self.modes = []

    def __call__(self, event, d):
        if event == "attention":
            self.modes.append(getattr(d["attn_config"], "batch_invariant", False))


def test_batch_invariant_mode_in_the_engine(tiny_model, engines):
    ok, why = kernels_available()
    if not ok:
        pytest.skip(why)
    kw = llm_kwargs(tiny_model, dtype="float32")
    kw["additional_config"]["turboquant"]["batch_invariant"] = True
    llm = engines.get(**kw)
    llm.reset_prefix_cache()
    rec = Configs()
    with debug.recording(rec):
        batch = _tokens(_generate(llm, PROMPTS, SHORT_TOKENS))
    assert rec.modes and all(rec.modes), "a layer attended outside batch-invariant mode"
    for p, want in zip(PROMPTS, batch):
        llm.reset_prefix_cache()
        assert _tokens(_generate(llm, [p], SHORT_TOKENS)) == [want]

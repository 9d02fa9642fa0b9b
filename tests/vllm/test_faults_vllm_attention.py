"""The fault of test_faults.py (one request's activations NaN from one token on) with vLLM's own
attention backend instead of TurboQuant: what vLLM itself does with a request whose logits are NaN.

On an H200 with vLLM 0.26 the TurboQuant run of test_faults.py ended in a CUDA device-side assert
in the first decode step after the poisoned prefill (tests/vllm/results-gpu-2026-12-03.md). If this
test fails the same way, the crash is vLLM's handling of NaN logits, not the KV-cache backend. It
runs in a pytest process of its own on the GPU (run_gpu.sh), like test_faults.py.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")
import torch  # noqa: E402
from test_faults import CLEAN, POISON, POISONED, _generate, _set_embedding_row  # noqa: E402
from tq_helpers import llm_kwargs  # noqa: E402


def test_nan_request_with_vllm_attention(tiny_model, engines):
    llm = engines.get(**llm_kwargs(tiny_model, backend="default"))
    llm.reset_prefix_cache()
    clean_before = [list(o.outputs[0].token_ids) for o in _generate(llm, CLEAN)]
    llm.reset_prefix_cache()
    saved = _set_embedding_row(llm, POISON, None)
    try:
        _set_embedding_row(llm, POISON, torch.full_like(saved, float("nan")))
        outs = _generate(llm, CLEAN + [POISONED])
    finally:
        _set_embedding_row(llm, POISON, saved)
    assert [list(o.outputs[0].token_ids) for o in outs[: len(CLEAN)]] == clean_before
    assert outs[-1].finished

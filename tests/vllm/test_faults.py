"""Non-finite activations inside a running vLLM engine stay inside their request.

The embedding row of one token id (``POISON``) is set to NaN in the running
model (``LLM.apply_model``): that token's key, value and query are NaN at
every layer, and from the second layer on so are those of every later token
of its request (they attended to it in the layer before).  A batch of clean
requests runs with and without a poisoned request beside it.  SPEC §8: the
poisoned tokens are stored with the non-finite encoding, and attention gives
NaN only to rows whose causal window holds them, i.e. only inside the poisoned
request.  Checked through vLLM:

* the clean requests' greedy tokens are the same with and without the
  poisoned neighbour;
* every stored slot, poisoned or clean, equals the reference encoding of the
  captured K/V (NaN-norm signature for the poisoned tokens, byte-identical
  otherwise) and the poisoned request's tokens are the ones stored non-finite;
* attention outputs of clean requests are finite;
* the poisoned request still finishes (no crash), and after the weight is
  restored the engine serves the clean batch exactly as before.

Two variants. ``prefill_only``: the poisoned request asks for one token, so
the token sampled from its NaN logits is returned but never fed back into the
model; this isolates the KV cache and attention from vLLM's sampler.
``decode``: it asks for MAX_TOKENS, so the sampled token is the next step's
input.  On an H200 with vLLM 0.26 the ``decode`` variant ends the engine with
a device-side assert in that next step, and so does the same fault with vLLM's
own attention (``test_faults_vllm_attention.py``; results/2026-12-03-h200-vllm-tests/results-gpu-2026-12-03b.md):
vLLM's handling of NaN logits, not the KV cache.  So on CUDA the ``decode``
variant is an xfail that is not run
(`pytest --runxfail` runs it, to check a newer vLLM).  Module-scoped parametrization runs every
``prefill_only`` test before the first ``decode`` one.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("vllm")
import torch  # noqa: E402
from tq_helpers import ON_CUDA, free_blocks, llm_kwargs, store_snapshot  # noqa: E402

from turboquant.conformance.compare import compare_slots  # noqa: E402
from turboquant.vllm_integration import debug  # noqa: E402

POISON = 250
POISON_AT = 12
MAX_TOKENS = 8
_rng = np.random.default_rng(99)


def _prompt(n: int) -> list[int]:
    ids = _rng.integers(4, 256, n - 1)
    ids[ids == POISON] = POISON - 1
    return [1] + ids.tolist()


CLEAN = [_prompt(n) for n in (9, 30, 70)]
POISONED = _prompt(40)
POISONED[POISON_AT] = POISON


def _generate(llm, prompts, last_max_tokens: int = MAX_TOKENS):
    """Greedy, MAX_TOKENS per prompt, the last prompt ``last_max_tokens``; no detokenization
    (the tests compare token ids, and a NaN row may not sample a token the tokenizer knows)."""
    from vllm import SamplingParams

    sps = [SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, detokenize=False)
           for _ in prompts]
    sps[-1] = SamplingParams(temperature=0.0, max_tokens=last_max_tokens, ignore_eos=True, detokenize=False)
    return llm.generate([{"prompt_token_ids": p} for p in prompts], sps, use_tqdm=False)


def _set_embedding_row(llm, row: int, values):
    """Set (values: tensor) or read (values=None) one embedding row of the running model."""

    def fn(model):
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model.model.embed_tokens
        w = emb.weight
        old = w.data[row].clone().cpu()
        if values is not None:
            w.data[row] = values.to(w.device, w.dtype)
        return old

    return llm.apply_model(fn)[0]


class Stores:
    def __init__(self):
        self.stores, self.attn_rows = [], []

    def __call__(self, event, d):
        if event == "store":
            self.stores.append(store_snapshot(d))
        elif event == "attention":
            qsl = d["query_start_loc"].cpu().numpy()
            out = d["output"][: int(qsl[-1])].float().cpu().numpy()
            self.attn_rows.append((qsl, out))


# vLLM 0.26 on CUDA (H200, 2026-12-03): the token sampled from the all-NaN logits row is out of the
# vocabulary and the next step's embedding lookup fails a device-side assert that ends the engine,
# with this backend and with vLLM's own attention alike (test_faults_vllm_attention.py, decode). Not
# run there: the assert poisons the process's CUDA context.
VLLM_NAN_LOGITS_CRASH = pytest.mark.xfail(
    ON_CUDA, run=False, reason="vLLM's GPU sampler turns all-NaN logits into an out-of-vocabulary token id "
                               "and the next step crashes (measured with vLLM's own attention too)")


@pytest.fixture(scope="module", params=[1, pytest.param(MAX_TOKENS, marks=VLLM_NAN_LOGITS_CRASH)],
                ids=["prefill_only", "decode"])
def fault_run(request, tiny_model, engines):
    poisoned_tokens = request.param
    llm = engines.get(**llm_kwargs(tiny_model, dtype="float32"))
    llm.reset_prefix_cache()
    initial_free = free_blocks(llm)
    clean_before = [list(o.outputs[0].token_ids) for o in _generate(llm, CLEAN)]
    llm.reset_prefix_cache()
    saved = _set_embedding_row(llm, POISON, None)
    rec = Stores()
    try:
        _set_embedding_row(llm, POISON, torch.full_like(saved, float("nan")))
        with debug.recording(rec):
            outs = _generate(llm, CLEAN + [POISONED], poisoned_tokens)
    finally:
        _set_embedding_row(llm, POISON, saved)
    llm.reset_prefix_cache()
    clean_after = [list(o.outputs[0].token_ids) for o in _generate(llm, CLEAN)]
    return dict(llm=llm, clean_before=clean_before, outs=outs, rec=rec, clean_after=clean_after,
                initial_free=initial_free, poisoned_tokens=poisoned_tokens)


def test_clean_neighbours_unchanged(fault_run):
    got = [list(o.outputs[0].token_ids) for o in fault_run["outs"][: len(CLEAN)]]
    assert got == fault_run["clean_before"]


def test_poisoned_request_finishes(fault_run):
    o = fault_run["outs"][-1]
    assert o.finished and len(o.outputs[0].token_ids) == fault_run["poisoned_tokens"]


def test_stored_bytes_follow_spec(fault_run):
    """Reference encoding of every captured token, NaN tokens included; the
    non-finite keys are exactly: the poisoned token in layer 0, and in every later layer the
    poisoned request's tokens from POISON_AT on (prompt, and the generated tokens that were stored)."""
    nonfinite_keys = 0
    for e in fault_run["rec"].stores:
        rep = compare_slots(e["slots"], e["key"], e["value"], e["fmt"])
        assert rep.ok, rep
        nonfinite_keys += int((~np.isfinite(e["key"])).any(axis=-1).all(axis=-1).sum())
    n_layers = len({e["fmt"].layer for e in fault_run["rec"].stores})
    assert n_layers >= 2
    stored_generated = fault_run["poisoned_tokens"] - 1  # the last sampled token is never stored
    assert nonfinite_keys == 1 + (n_layers - 1) * (len(POISONED) - POISON_AT + stored_generated)


def test_freed_poisoned_blocks_reused(fault_run):
    """prefill_only: the poisoned request's blocks go back to the pool after its one step, and a
    clean request's later tokens are stored into a block whose other slots still hold the poisoned
    tokens' non-finite encoding -- so test_clean_neighbours_unchanged also checks attention over a
    reused block with stale NaN slots (vLLM's own CPU attention fails that case: see
    test_faults_vllm_attention.py)."""
    if fault_run["poisoned_tokens"] != 1:
        pytest.skip("the poisoned request holds its blocks until every request has finished")
    poisoned_blocks: dict[str, set] = {}
    reused = 0
    for e in fault_run["rec"].stores:
        blocks = e["slot_ids"] // e["block_size"]
        bad = (~np.isfinite(e["key"])).any(axis=(1, 2))
        seen = poisoned_blocks.setdefault(e["layer"], set())
        reused += int(sum(b in seen for b in blocks[~bad].tolist()))
        seen.update(blocks[bad].tolist())
    assert reused > 0, "no clean token was stored into a block freed by the poisoned request"


def test_clean_attention_rows_finite(fault_run):
    """Rows of clean requests are finite; the poisoned request has NaN rows."""
    clean_lens = {len(p) for p in CLEAN}
    saw_nan = False
    for qsl, out in fault_run["rec"].attn_rows:
        finite = np.isfinite(out).all(axis=(1, 2)) if out.ndim == 3 else np.isfinite(out).all(axis=1)
        saw_nan |= not finite.all()
        # prefill steps: a row range whose length is a clean prompt's length belongs to that prompt
        for b in range(len(qsl) - 1):
            if int(qsl[b + 1] - qsl[b]) in clean_lens:
                assert finite[qsl[b]:qsl[b + 1]].all()
    assert saw_nan, "the poisoned request never produced a NaN row: the fault was not injected"


def test_engine_recovers(fault_run):
    assert fault_run["clean_after"] == fault_run["clean_before"]
    llm = fault_run["llm"]
    assert llm.reset_prefix_cache() and free_blocks(llm) == fault_run["initial_free"]

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
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("vllm")
import torch  # noqa: E402
from tq_helpers import free_blocks, llm_kwargs, store_snapshot  # noqa: E402

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


def _generate(llm, prompts):
    from vllm import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)


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


@pytest.fixture(scope="module")
def fault_run(tiny_model, engines):
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
            outs = _generate(llm, CLEAN + [POISONED])
    finally:
        _set_embedding_row(llm, POISON, saved)
    llm.reset_prefix_cache()
    clean_after = [list(o.outputs[0].token_ids) for o in _generate(llm, CLEAN)]
    return dict(llm=llm, clean_before=clean_before, outs=outs, rec=rec, clean_after=clean_after,
                initial_free=initial_free)


def test_clean_neighbours_unchanged(fault_run):
    got = [list(o.outputs[0].token_ids) for o in fault_run["outs"][: len(CLEAN)]]
    assert got == fault_run["clean_before"]


def test_poisoned_request_finishes(fault_run):
    o = fault_run["outs"][-1]
    assert o.finished and len(o.outputs[0].token_ids) == MAX_TOKENS


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
    assert nonfinite_keys == 1 + (n_layers - 1) * (len(POISONED) - POISON_AT + MAX_TOKENS - 1)


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

"""Per-layer precision (SPEC 7.1): boundary layers in a wider format, each layer with its own pages.

A 4-layer tiny Llama (float32: vLLM's own CPU attention serves the "native" layers) with ``tq3`` in
the middle and boundary layers in ``tq4``, ``k4v3`` or the model's own format.  Checked through vLLM:

* capacity: the pool holds exactly KV bytes / (block_size x the sum of the layers' own slot bytes)
  blocks (+-1), i.e. no layer is padded to another's page;
* every layer's cache tensor has its own slot size, and every byte a TurboQuant layer stored equals
  the reference packing of that layer's format (the boundary layers' format for boundary layers);
* the native layers never reach this backend, and with every layer native the tokens are plain vLLM's;
* models where per-layer pages would be padded (hybrid, sliding window) and conflicting user settings
  fail at engine start with a message naming the option.

The load test with preemption runs a boundary configuration too (``test_load.py``).
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")
from tiny_model import build_tiny_llama  # noqa: E402
from tq_helpers import BLOCK_SIZE, KV_BYTES, error_text, llm_kwargs, num_blocks, store_snapshot  # noqa: E402

from turboquant import format as tqf  # noqa: E402
from turboquant.conformance.compare import compare_slots  # noqa: E402
from turboquant.vllm_integration import debug  # noqa: E402
from turboquant.vllm_integration.compat import HAS_CUSTOMIZE_SPEC, shutdown_llm  # noqa: E402
from turboquant.vllm_integration.config import parse_layer_index  # noqa: E402

pytestmark = pytest.mark.skipif(not HAS_CUSTOMIZE_SPEC, reason="boundary layers need vLLM 0.32+ (engine-start "
                                "error tested in test_config.py)")

NUM_LAYERS, NUM_KV_HEADS, HEAD_SIZE, MAIN = 4, 2, 64, "tq3"
MAX_TOKENS = 6
PROMPTS = [[1] + list(range(5, 5 + n)) for n in (5, 37)]
# (boundary_layers, boundary_preset, store_impl): one run with the Triton store kernel (interpreter on a CPU)
CONFIGS = [(1, "tq4", "triton"), ([0, 2], "k4v3", "reference"), (1, "native", "reference")]


@pytest.fixture(scope="module")
def model4(tmp_path_factory):
    return build_tiny_llama(str(tmp_path_factory.mktemp("tiny_llama4")), num_layers=NUM_LAYERS)


def _kwargs(model, boundary_layers, boundary_preset, store="reference", **extra):
    kw = llm_kwargs(model, preset=MAIN, store=store, attention="reference", dtype="float32", **extra)
    kw["additional_config"]["turboquant"].update(boundary_layers=boundary_layers, boundary_preset=boundary_preset)
    return kw


def _generate(llm):
    from vllm import SamplingParams

    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _expected_preset(layer: int, boundary_layers, boundary_preset) -> str:
    return boundary_preset if layer in tqf.boundary_layer_indices(NUM_LAYERS, boundary_layers) else MAIN


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"{c[0]}-{c[1]}")
def run(request, model4, engines):
    boundary_layers, boundary_preset, store = request.param
    llm = engines.get(**_kwargs(model4, boundary_layers, boundary_preset, store))
    events = []

    def record(ev, d):
        if ev == "store":
            events.append(store_snapshot(d) | {"shape": tuple(d["kv_cache"].shape)})

    with debug.recording(record):
        tokens = _generate(llm)
    return dict(boundary_layers=boundary_layers, boundary_preset=boundary_preset, blocks=num_blocks(llm),
                tokens=tokens, stores=events, cache=llm.llm_engine.vllm_config.cache_config)


def test_capacity_is_pool_over_sum_of_pages(run):
    per_token = tqf.mixed_bytes_per_token(NUM_LAYERS, HEAD_SIZE, NUM_KV_HEADS, MAIN, run["boundary_layers"],
                                          run["boundary_preset"], model_bytes_per_element=4)
    want = KV_BYTES // (BLOCK_SIZE * per_token)
    assert abs(run["blocks"] - want) <= 1, (run["blocks"], want, per_token)
    all_main = KV_BYTES // (BLOCK_SIZE * tqf.mixed_bytes_per_token(NUM_LAYERS, HEAD_SIZE, NUM_KV_HEADS, MAIN))
    assert run["blocks"] < all_main  # the wider boundary layers cost what they should, no more


def test_every_layer_stores_its_own_format(run):
    seen = {}
    for s in run["stores"]:
        layer = parse_layer_index(s["layer"])
        preset = _expected_preset(layer, run["boundary_layers"], run["boundary_preset"])
        assert preset != tqf.NATIVE, f"native layer {layer} reached the TurboQuant backend"
        want = tqf.LayerFormat(tqf.get_preset(preset), HEAD_SIZE, layer=layer)
        assert s["fmt"] == want, (layer, s["fmt"].preset.name, preset)
        assert s["shape"][1:] == (NUM_KV_HEADS, BLOCK_SIZE, want.slot_bytes)
        rep = compare_slots(s["slots"], s["key"], s["value"], want)
        assert rep.ok, (layer, rep)
        seen[layer] = seen.get(layer, 0) + rep.tokens
    tq_layers = {i for i in range(NUM_LAYERS)
                 if _expected_preset(i, run["boundary_layers"], run["boundary_preset"]) != tqf.NATIVE}
    assert set(seen) == tq_layers
    n_tok = sum(map(len, PROMPTS)) + len(PROMPTS) * (MAX_TOKENS - 1)
    assert all(n == n_tok * NUM_KV_HEADS for n in seen.values()), seen  # tokens x KV heads, every layer


def test_vllm_carries_the_per_layer_dtype(run):
    cc = run["cache"]
    assert cc.cache_dtype == ("bfloat16" if run["boundary_preset"] == "native" else "float16")  # float32 model
    assert cc.kv_cache_dtype_skip_layers == [str(i) for i in tqf.boundary_layer_indices(NUM_LAYERS,
                                                                                       run["boundary_layers"])]


def test_tokens_generated(run):
    assert [len(t) for t in run["tokens"]] == [MAX_TOKENS] * len(PROMPTS)


def test_all_native_layers_give_plain_vllm_tokens(model4, engines):
    llm = engines.get(**_kwargs(model4, list(range(NUM_LAYERS)), "native"))
    seen = []
    with debug.recording(lambda ev, d: seen.append(ev)):
        ours = _generate(llm)
    assert not seen
    plain = _generate(engines.get(**llm_kwargs(model4, backend="default", dtype="float32")))
    assert ours == plain


def _start_fails(engines, **kw) -> str:
    from vllm import LLM

    engines.close()
    with pytest.raises(Exception) as ei:
        shutdown_llm(LLM(**kw))  # pragma: no cover - reached only when the test fails
    shutdown_llm(None)
    return error_text(ei.value)


def test_sliding_window_model_is_refused(tmp_path, engines):
    model = build_tiny_llama(str(tmp_path / "swa"), num_layers=NUM_LAYERS, sliding_window=16,
                             layer_types=["full_attention", "sliding_attention"] * 2)
    msg = _start_fails(engines, **_kwargs(model, 1, "tq4"))
    assert "additional_config['turboquant']['boundary_layers']=1" in msg
    assert "sliding-window layers are not supported" in msg and "supported: models whose layers are all full" in msg


def test_hybrid_model_is_refused(tmp_path, engines):
    pytest.importorskip("transformers", minversion="4.57")  # Qwen3-Next
    from tiny_model import build_tiny_hybrid

    model = build_tiny_hybrid(str(tmp_path / "hybrid"))
    kw = dict(model=model, dtype="bfloat16", max_model_len=256, max_num_seqs=2, enforce_eager=True,
              kv_cache_memory_bytes=KV_BYTES, attention_backend="CUSTOM",
              additional_config={"turboquant": {"preset": MAIN, "boundary_layers": [1], "boundary_preset": "tq4"}})
    msg = _start_fails(engines, **kw)
    assert "['boundary_layers']=[1]: boundary layers on a hybrid model" in msg and "erases the savings" in msg


def test_conflicting_vllm_cache_dtype_is_refused(model4, engines):
    msg = _start_fails(engines, **_kwargs(model4, 1, "tq4", kv_cache_dtype="fp8"))
    assert "sets vLLM's kv_cache_dtype and kv_cache_dtype_skip_layers itself" in msg
    assert "kv_cache_dtype='fp8'" in msg


def test_too_many_boundary_layers_are_refused(model4, engines):
    msg = _start_fails(engines, **_kwargs(model4, 2, "tq4"))
    assert "boundary_layers=2 is not supported for 4 layers" in msg and "0 <= 2n < 4" in msg

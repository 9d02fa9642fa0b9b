"""Calibrated outlier channels (tq3.5 / tq2.5) through vLLM: the plugin's ``outlier_channels`` file
reaches every layer's format, and the Triton store writes exactly the reference's bytes for it."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm")
from tq_helpers import llm_kwargs, store_snapshot  # noqa: E402

from turboquant import format as tqf  # noqa: E402
from turboquant.conformance.compare import compare_slots  # noqa: E402
from turboquant.vllm_integration import debug  # noqa: E402

PRESET = "tq3.5"


def test_calibrated_channels_in_vllm(tiny_model, engines, tmp_path):
    n = tqf.LayerFormat(tqf.get_preset(PRESET), 64).key_instances[0].dim
    want = {layer: (tuple(range(2 * layer, 2 * layer + n)), tuple(range(64 - n - layer, 64 - layer)))
            for layer in (0, 1)}
    path = tmp_path / "calib.json"
    path.write_text(json.dumps({"preset": PRESET, "layers": {str(k): {"key": list(c[0]), "value": list(c[1])}
                                                             for k, c in want.items()}}))
    kw = llm_kwargs(tiny_model, preset=PRESET, store="triton", attention="reference", dtype="float32")
    kw["additional_config"]["turboquant"]["outlier_channels"] = str(path)
    llm = engines.get(**kw)
    stores = []

    def record(ev, d):
        if ev == "store":
            stores.append(store_snapshot(d))

    from vllm import SamplingParams

    with debug.recording(record):
        llm.generate([{"prompt_token_ids": [1] + list(range(5, 45))}], SamplingParams(max_tokens=4), use_tqdm=False)
    assert {e["fmt"].layer for e in stores} == {0, 1}
    for e in stores:
        fmt = e["fmt"]
        assert (fmt.key_outlier_channels, fmt.value_outlier_channels) == want[fmt.layer]
        rep = compare_slots(e["slots"], e["key"], e["value"], fmt)
        assert rep.ok, rep

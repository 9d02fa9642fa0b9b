"""Calibrated outlier channels (tq3.5 / tq2.5) through vLLM: the plugin's ``outlier_channels`` file
reaches every layer's format, and the Triton store writes exactly the reference's bytes for it."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm")
import torch  # noqa: E402
from tq_helpers import llm_kwargs  # noqa: E402

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
            cache, sm = d["kv_cache"], d["slot_mapping"].to(torch.int64)
            keep = sm >= 0
            idx, bs = sm[keep], cache.shape[2]
            stores.append((d["fmt"], cache[idx // bs, :, idx % bs].cpu().numpy(),
                           d["key"][keep].float().cpu().numpy(), d["value"][keep].float().cpu().numpy()))

    from vllm import SamplingParams

    with debug.recording(record):
        llm.generate([{"prompt_token_ids": [1] + list(range(5, 45))}], SamplingParams(max_tokens=4), use_tqdm=False)
    assert {fmt.layer for fmt, *_ in stores} == {0, 1}
    for fmt, slots, key, value in stores:
        assert (fmt.key_outlier_channels, fmt.value_outlier_channels) == want[fmt.layer]
        rep = compare_slots(slots, key, value, fmt)
        assert rep.ok, rep

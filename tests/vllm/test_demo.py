"""The main job (``turboquant demo``) end to end on the test-built tiny model, small sizes."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm")
from tq_helpers import KV_BYTES  # noqa: E402

from turboquant import format as tqf  # noqa: E402
from turboquant.vllm_integration.demo import DemoSettings, run_demo  # noqa: E402


def test_demo_table(tiny_model, tmp_path, capfd):
    # capfd, not capsys: vLLM (0.26, CUDA) calls sys.stdout.fileno() while it builds its process groups
    s = DemoSettings(model=tiny_model, configs=("bf16", "tq3"), prompts=2, prompt_chars=200, max_tokens=4,
                     max_model_len=256, kv_mib=KV_BYTES >> 20, gpu_fixed_pool=True)
    out = tmp_path / "demo.json"
    rows = run_demo(s, out_json=str(out), log=lambda *_: None)
    table = capfd.readouterr().out
    assert "| config | bytes/token/KV head | KV capacity (tokens)" in table and "| tq3 |" in table
    bf16, tq3 = rows
    # same memory, pages sized by the packed slot: capacity ratio = byte ratio (within 2 %)
    want = tqf.bf16_slot_bytes(64) / tqf.LayerFormat(tqf.get_preset("tq3"), 64).slot_bytes
    assert abs(tq3.capacity_x / want - 1) <= 0.02, (tq3.capacity_x, want)
    assert bf16.agreement == 1.0 and bf16.identical == 2 and bf16.next_token_agreement == 1.0
    assert 0.0 <= tq3.agreement <= 1.0 and 0.0 <= tq3.next_token_agreement <= 1.0
    assert all(len(t) == 4 for t in tq3.tokens) and tq3.ppl > 1.0
    saved = json.loads(out.read_text())
    assert [r["config"] for r in saved["rows"]] == ["bf16", "tq3"]

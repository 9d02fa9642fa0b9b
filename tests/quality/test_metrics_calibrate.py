"""Fidelity metrics, key/value statistics, calibration, perplexity helpers, retrieval scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from turboquant import format as tqf  # noqa: E402
from turboquant.quality import calibrate, codecs, metrics, ppl, retrieval  # noqa: E402
from turboquant.quality.activations import LayerActivations  # noqa: E402
from turboquant.quality.needles import Task  # noqa: E402


def fake_acts(layer=0, b=1, hq=4, hkv=2, t=40, d=128, seed=0, outlier=None):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, hq, t, d)).astype(np.float32) * 2
    k = rng.standard_normal((b, hkv, t, d)).astype(np.float32)
    v = rng.standard_normal((b, hkv, t, d)).astype(np.float32)
    if outlier is not None:
        k[..., outlier] *= 8
        v[..., outlier] *= 8
    return LayerActivations(layer, q, k, v, d ** -0.5)


def test_identity_codec_is_perfect():
    for row in metrics.attention_fidelity(fake_acts(), codecs.IdentityCodec()):
        assert row["out_rel_err"] < 1e-6 and abs(row["kl"]) < 1e-9 and row["topk_overlap"] == 1.0


class Dequantized:
    """A TurboQuant codec seen through its dequantized K/V only (no layer_format)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, layer, key, value):
        return self.inner(layer, key, value)


@pytest.mark.parametrize("preset", ["tq3", "tq3_qjl", "k4g4"])
def test_reference_scores_match_dequantized_attention(preset):
    """metrics' packed-code path (key_scores / value_rows) equals attention over decode_slots' K/V."""
    acts = fake_acts(layer=2)
    c = codecs.TurboQuantCodec(preset, 128)
    a = metrics.attention_fidelity(acts, c)
    b = metrics.attention_fidelity(acts, Dequantized(c))
    for x, y in zip(a, b):
        assert x["out_rel_err"] == pytest.approx(y["out_rel_err"], rel=1e-4)
        assert x["kl"] == pytest.approx(y["kl"], rel=1e-3, abs=1e-7)
    assert 0.05 < a[0]["out_rel_err"] < 1.0


def test_more_bits_better_fidelity():
    acts = fake_acts(b=2)
    err = {p: np.mean([r["out_rel_err"] for r in metrics.attention_fidelity(acts, codecs.make_codec(p, 128))])
           for p in ("tq2", "tq3", "tq4")}
    assert err["tq2"] > err["tq3"] > err["tq4"]
    with pytest.raises(ValueError, match="topk"):
        metrics.attention_fidelity(acts, codecs.IdentityCodec(), topk=0)


def test_kv_stats_find_outliers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 128))
    s = metrics.kv_stats(x)
    assert abs(s["kurtosis_median"]) < 0.3 and s["channels_rms_over_3x_median"] == 0
    x[:, 17] *= 10
    x[::50, 99] = 40  # a heavy-tailed channel
    s = metrics.kv_stats(x)
    assert s["top_rms_channels"][0] == 17 and s["top_kurtosis_channels"][0] == 99
    assert s["rms_max_over_median"] > 5 and s["channels_rms_over_3x_median"] == 2
    with pytest.raises(ValueError, match="tokens"):
        metrics.kv_stats(np.zeros((1, 8)))
    rows = metrics.layer_stats(fake_acts())
    assert len(rows) == 2 and set(rows[0]) == {"layer", "kv_head", "key", "value"}


def test_top_channels_and_rope_pairs():
    e = np.ones(16)
    e[[3, 12]] = 10  # 3 pairs with 11, 12 with 4
    assert calibrate.top_channels(e, 2, rope_pairs=False) == (3, 12)
    assert calibrate.top_channels(e, 4, rope_pairs=True) == (3, 4, 11, 12)
    with pytest.raises(ValueError, match="n="):
        calibrate.top_channels(e, 0, False)
    with pytest.raises(ValueError, match="even"):
        calibrate.top_channels(e, 3, True)


def test_calibrate_finds_planted_channels_and_builds_formats(tmp_path):
    planted = [5, 69]  # a RoPE pair (5, 5 + 64)
    acts = [fake_acts(layer=i, outlier=planted) for i in range(2)]
    cal = calibrate.calibrate(acts, "tq2.5")
    k, v = cal[0]
    assert len(k) == len(v) == 32 and set(planted) <= set(k) and set(planted) <= set(v)
    assert all((c + 64) % 128 in k for c in k)  # whole pairs
    codec = codecs.TurboQuantCodec("tq2.5", 128, cal)
    fmt = codec.layer_format(1)
    assert fmt.key_outlier_channels == k and fmt.slot_bytes == 88
    assert calibrate.outlier_count("tq3.5", 128) == 64
    with pytest.raises(ValueError, match="outlier split"):
        calibrate.calibrate(acts, "tq3")
    path = tmp_path / "cal.json"
    calibrate.save(cal, str(path), "tq2.5")
    assert calibrate.load(str(path)) == ("tq2.5", cal)
    # calibrated channels help when they are the outliers
    err = lambda c: np.mean([r["out_rel_err"] for r in metrics.attention_fidelity(acts[1], c)])  # noqa: E731
    assert err(codec) < err(codecs.TurboQuantCodec("tq2.5", 128))
    assert tqf.LayerFormat(tqf.get_preset("tq2.5"), 128, key_outlier_channels=k)


def test_ppl_summary_and_delta():
    s = ppl.summarize(np.array([math.log(4.0)] * 3))
    assert s["ppl"] == pytest.approx(4.0) and s["bits_per_byte"] == pytest.approx(2.0)
    a = {"ppl": 4.2, "window_nll": [1.0, 1.2, 1.1]}
    b = {"ppl": 4.0, "window_nll": [0.9, 1.0, 1.1]}
    d = ppl.delta(a, b)
    assert d["delta_ppl"] == pytest.approx(0.2) and d["delta_nll"] == pytest.approx(0.1) and d["delta_nll_se"] > 0
    with pytest.raises(ValueError, match="windows"):
        ppl.delta(a, {"ppl": 1, "window_nll": [1.0]})


def test_perplexity_and_retrieval_run(tiny_llama):
    w = np.random.default_rng(0).integers(0, 256, (3, 32))
    r = ppl.perplexity(tiny_llama, w, batch_size=2)
    assert r["windows"] == 3 and len(r["window_nll"]) == 3 and 1 < r["ppl"] < 1e4
    with pytest.raises(ValueError, match="windows"):
        ppl.perplexity(tiny_llama, w[0])
    text = np.frombuffer(b"x = 1\n" * 500, np.uint8).astype(np.int16)
    res = retrieval.evaluate(tiny_llama, text, [128], [0.0, 1.0], trials=2, batch_size=3,
                             codec=codecs.make_codec("tq3", 64))
    assert res["contexts"] == [128] and res["trials"] == 2 and 0 <= res["overall"] <= 1


def test_accuracy_table():
    mk = lambda c, d: Task(np.zeros(c, np.int64), c, d, np.zeros(5, np.int64))  # noqa: E731
    tasks = [mk(128, 0.0), mk(128, 0.0), mk(128, 1.0), mk(256, 0.0)]
    t = retrieval.accuracy_table(tasks, np.array([True, False, True, True]))
    assert t["accuracy"]["128"] == {"0.0": 0.5, "1.0": 1.0} and t["by_context"]["256"] == 1.0
    assert t["by_depth"]["0.0"] == pytest.approx(2 / 3) and t["overall"] == 0.75


def test_calibration_file_is_spec_section_1_3(tmp_path):
    """The file `turboquant calibrate` writes has the shape SPEC.md section 1.3 states."""
    import json

    cal = {3: ((1, 2), (5, 4)), 0: ((7, 8), (9, 0))}
    path = tmp_path / "cal.json"
    calibrate.save(cal, str(path), "tq2.5")
    data = json.loads(path.read_text())
    assert set(data) == {"preset", "layers"} and data["preset"] == "tq2.5"
    assert list(data["layers"]) == ["0", "3"]  # decimal strings, ascending
    assert data["layers"]["3"] == {"key": [1, 2], "value": [5, 4]}

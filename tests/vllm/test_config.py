"""The integration's options and layer-name parsing (no vLLM needed)."""

from __future__ import annotations

import pytest

from turboquant import format as tqf
from turboquant.vllm_integration.config import (
    OPTION_DEFAULTS,
    TurboQuantOptions,
    parse_layer_index,
    unsupported_reasons,
)


def test_defaults_and_roundtrip():
    o = TurboQuantOptions.from_additional_config(None)
    assert o == TurboQuantOptions.from_additional_config({}) == TurboQuantOptions()
    assert {k: getattr(o, k) for k in OPTION_DEFAULTS} == OPTION_DEFAULTS
    o = TurboQuantOptions.from_additional_config({"turboquant": {"preset": "k4g4", "base_seed": 7}})
    fmt = o.layer_format(128, layer=5)
    assert fmt == tqf.LayerFormat(tqf.get_preset("k4g4"), 128, layer=5, base_seed=7)


@pytest.mark.parametrize("cfg,needle", [
    ({"turboquant": {"preset": "tq9"}}, "['preset']='tq9' is not supported; allowed values: ["),
    ({"turboquant": {"base_seed": -1}}, "['base_seed']=-1 is not supported; allowed values: integers >= 0"),
    ({"turboquant": {"base_seed": True}}, "['base_seed']=True"),
    ({"turboquant": {"store_impl": "cuda"}},
     "['store_impl']='cuda' is not supported; allowed values: ['auto', 'triton', 'torch', 'reference']"),
    ({"turboquant": {"attention_impl": None}}, "['attention_impl']=None"),
    ({"turboquant": {"bits": 3}}, "unknown option(s) ['bits']; allowed options: ['preset', 'base_seed'"),
    ({"turboquant": "tq3"}, "must be a dict with keys"),
    ({"turboquant": {"batch_invariant": "yes"}},
     "['batch_invariant']='yes' is not supported; allowed values: true, false, or null"),
    ({"turboquant": {"batch_invariant": 1}}, "['batch_invariant']=1 is not supported"),
    ("tq3", "additional_config must be a dict"),
])
def test_bad_options_name_parameter_and_allowed_values(cfg, needle):
    with pytest.raises(ValueError) as ei:
        TurboQuantOptions.from_additional_config(cfg)
    assert needle in str(ei.value)


def test_parse_layer_index():
    assert parse_layer_index("model.layers.7.self_attn.attn") == 7
    assert parse_layer_index("language_model.model.layers.31.self_attn.attn") == 31
    for bad in ("model.attn", "model.layers.1.experts.2.attn"):
        with pytest.raises(ValueError, match="exactly one"):
            parse_layer_index(bad)


def test_unsupported_reasons():
    assert unsupported_reasons(head_size=128, preset="tq3") == []
    r = unsupported_reasons(head_size=80, preset="tq3_hadamard")
    assert len(r) == 1 and "power-of-two head_size" in r[0]
    r = unsupported_reasons(alibi=True, logits_soft_cap=30.0, attn_type="encoder", has_sliding_window=True)
    assert len(r) == 4
    assert any("alibi_slopes" in x for x in r) and any("logits_soft_cap=30.0" in x for x in r)


def test_auto_impl_resolves_by_device():
    opts = TurboQuantOptions()
    assert (opts.store_impl, opts.attention_impl) == ("auto", "auto")
    assert opts.impl("store_impl", "cuda") == "triton" and opts.impl("attention_impl", "cuda") == "triton"
    assert opts.impl("store_impl", "cpu") == "torch" and opts.impl("attention_impl", "cpu") == "torch"
    pinned = TurboQuantOptions(store_impl="triton", attention_impl="reference")
    assert pinned.impl("store_impl", "cpu") == "triton" and pinned.impl("attention_impl", "cuda") == "reference"
    pinned = TurboQuantOptions(store_impl="torch", attention_impl="torch")
    assert pinned.impl("store_impl", "cuda") == "torch" and pinned.impl("attention_impl", "cpu") == "torch"


def _calib_file(tmp_path, preset="tq3.5", layers=(0, 1), head_size=64, n=None):
    import json

    fmt = tqf.LayerFormat(tqf.get_preset(preset), head_size)
    n = fmt.key_instances[0].dim if n is None else n
    data = {"preset": preset, "layers": {str(layer): {"key": list(range(layer, layer + n)),
                                                      "value": list(range(head_size - n, head_size))}
                                         for layer in layers}}
    path = tmp_path / f"calib-{preset}-{n}.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_outlier_channels_reach_the_layer_format(tmp_path):
    path = _calib_file(tmp_path)
    opts = TurboQuantOptions(preset="tq3.5", outlier_channels=path)
    fmt = opts.layer_format(64, layer=1)
    n = fmt.key_instances[0].dim
    assert fmt.key_outlier_channels == tuple(range(1, 1 + n))
    assert fmt.value_outlier_channels == tuple(range(64 - n, 64))
    assert TurboQuantOptions(preset="tq3.5").layer_format(64, 1).key_outlier_channels is None


@pytest.mark.parametrize("kind,needle", [
    ("no_split", "preset 'tq3' has no outlier split; allowed presets: ['tq3.5', 'tq2.5']"),
    ("other_preset", "was calibrated for preset 'tq2.5', not 'tq3.5'"),
    ("unreadable", "cannot be read as a `turboquant calibrate` file"),
    ("missing_layer", "has no channels for layer 5; it covers layers [0, 1]"),
    ("bad_count", "layer 0: key_outlier_channels must be"),
    ("not_a_path", "['outlier_channels']=7 is not supported"),
])
def test_outlier_channels_errors(tmp_path, kind, needle):
    path = _calib_file(tmp_path)
    with pytest.raises(ValueError) as e:
        if kind == "no_split":
            TurboQuantOptions(preset="tq3", outlier_channels=path)
        elif kind == "other_preset":
            TurboQuantOptions(preset="tq3.5", outlier_channels=_calib_file(tmp_path, preset="tq2.5"))
        elif kind == "unreadable":
            bad = tmp_path / "bad.json"
            bad.write_text("{not json")
            TurboQuantOptions(preset="tq3.5", outlier_channels=str(bad))
        elif kind == "missing_layer":
            TurboQuantOptions(preset="tq3.5", outlier_channels=path).layer_format(64, layer=5)
        elif kind == "bad_count":
            TurboQuantOptions(preset="tq3.5", outlier_channels=_calib_file(tmp_path, n=3)).layer_format(64, 0)
        else:
            TurboQuantOptions(preset="tq3.5", outlier_channels=7)
    assert "additional_config['turboquant']['outlier_channels']" in str(e.value) and needle in str(e.value)


@pytest.mark.parametrize("option,env,want", [
    (None, None, False), (None, "0", False), (None, "1", True), (True, "0", True), (False, "1", False)])
def test_batch_invariant_follows_vllm_switch_unless_set(monkeypatch, option, env, want):
    if env is None:
        monkeypatch.delenv("VLLM_BATCH_INVARIANT", raising=False)
    else:
        monkeypatch.setenv("VLLM_BATCH_INVARIANT", env)
    assert TurboQuantOptions(batch_invariant=option).batch_invariant_enabled() is want


def test_bad_vllm_batch_invariant_fails_at_engine_start(monkeypatch):
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "on")
    with pytest.raises(ValueError, match=r"VLLM_BATCH_INVARIANT='on' is not supported; allowed values: integers"):
        TurboQuantOptions()
    assert TurboQuantOptions(batch_invariant=False).batch_invariant_enabled() is False


@pytest.mark.parametrize("option,env,warns", [
    (False, "1", True), (False, "0", False), (None, "1", False), (True, "1", False), (False, None, False),
    (False, "on", False)])
def test_batch_invariant_off_under_vllm_switch_warns(monkeypatch, option, env, warns):
    if env is None:
        monkeypatch.delenv("VLLM_BATCH_INVARIANT", raising=False)
    else:
        monkeypatch.setenv("VLLM_BATCH_INVARIANT", env)
    warning = TurboQuantOptions(batch_invariant=option).batch_invariant_warning()
    if warns:
        assert "['batch_invariant']=false while VLLM_BATCH_INVARIANT=1" in warning
        assert "NOT batch-invariant" in warning
    else:
        assert warning is None

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
     "['store_impl']='cuda' is not supported; allowed values: ['auto', 'triton', 'cpp', 'torch', 'reference']"),
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
    assert opts.impl("store_impl", "cpu") == "cpp" and opts.impl("attention_impl", "cpu") == "cpp"
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


# ---------------------------------------------------------------- boundary layers (SPEC 7.1)
@pytest.mark.parametrize("opts,needle", [
    ({"boundary_layers": 1}, "['boundary_layers']=1 needs additional_config['turboquant']['boundary_preset']; "
                             "allowed values: ['tq4'"),
    ({"boundary_layers": -1, "boundary_preset": "tq4"}, "['boundary_layers']=-1 is not supported; allowed values: "
                                                         "an integer n >= 0"),
    ({"boundary_layers": "2", "boundary_preset": "tq4"}, "['boundary_layers']='2' is not supported"),
    ({"boundary_layers": True, "boundary_preset": "tq4"}, "['boundary_layers']=True is not supported"),
    ({"boundary_layers": [0, 0], "boundary_preset": "tq4"}, "['boundary_layers']=[0, 0] is not supported"),
    ({"boundary_layers": [0, -3], "boundary_preset": "tq4"}, "['boundary_layers']=[0, -3] is not supported"),
    ({"boundary_layers": 1, "boundary_preset": "fp8"},
     "['boundary_preset']='fp8' is not supported; allowed values: ['tq4', 'tq3'"),
    ({"boundary_layers": 1, "boundary_preset": 4}, "['boundary_preset']=4 is not supported"),
])
def test_bad_boundary_options(opts, needle):
    with pytest.raises(ValueError) as ei:
        TurboQuantOptions.from_additional_config({"turboquant": {"preset": "tq3", **opts}})
    assert needle in str(ei.value)
    if "boundary_preset" in needle:
        assert "'native'" in str(ei.value)


def test_boundary_layers_choose_each_layers_format():
    opts = TurboQuantOptions.from_additional_config(
        {"turboquant": {"preset": "tq3", "boundary_layers": [0, 5], "boundary_preset": "k4v3", "base_seed": 3}})
    assert opts.has_boundary and opts.boundary_layers == (0, 5) and opts.boundary_indices(6) == (0, 5)
    assert [opts.layer_preset(i, 6) for i in range(6)] == ["k4v3", "tq3", "tq3", "tq3", "tq3", "k4v3"]
    assert opts.layer_format(128, 5, preset="k4v3") == tqf.LayerFormat(tqf.get_preset("k4v3"), 128, layer=5,
                                                                        base_seed=3)
    with pytest.raises(ValueError, match="native .* no TurboQuant format"):
        opts.layer_format(128, 0, preset="native")
    with pytest.raises(ValueError, match=r"\['boundary_layers'\]: boundary_layers=3 is not supported for 6 layers"):
        TurboQuantOptions(boundary_layers=3, boundary_preset="tq4").boundary_indices(6)
    assert not TurboQuantOptions(boundary_layers=[]).has_boundary


def test_kv_cache_marker_differs_from_the_model_dtype_and_between_kinds():
    from turboquant.vllm_integration.config import kv_cache_marker

    for model in ("bfloat16", "float16", "float32", "torch.bfloat16"):
        preset_marker, native_marker = kv_cache_marker(model, "tq4"), kv_cache_marker(model, "native")
        assert preset_marker != model.removeprefix("torch.")  # boundary and main specs differ in dtype
        assert preset_marker != native_marker  # vLLM's backend choice is cached per run dtype
        assert {preset_marker, native_marker} == {"float16", "bfloat16"}


def _engine(model_dtype="bfloat16", num_layers=6, cache_dtype="auto", skip=(), hybrid=False, sliding=None):
    from types import SimpleNamespace

    mc = SimpleNamespace(dtype=model_dtype, is_hybrid=hybrid, get_total_num_hidden_layers=lambda: num_layers,
                         get_sliding_window=lambda: sliding, hf_text_config=SimpleNamespace(layer_types=None))
    return SimpleNamespace(model_config=mc, cache_config=SimpleNamespace(cache_dtype=cache_dtype,
                                                                         kv_cache_dtype_skip_layers=list(skip)))


def test_engine_problems_name_the_fix():
    from turboquant.vllm_integration import layers

    opts = TurboQuantOptions(preset="tq3", boundary_layers=1, boundary_preset="tq4")
    check = dict(has_customize_spec=True, vllm_version="0.32.0", layer_kv_cache_dtype="float16")
    assert layers.engine_problem(_engine(), TurboQuantOptions(), **check) is None  # no boundary layers
    msg = layers.engine_problem(_engine(), opts, **{**check, "has_customize_spec": False, "vllm_version": "0.26.0"})
    assert "needs vLLM 0.32 or later" in msg and "this is vLLM 0.26.0" in msg
    # a platform that does not set vLLM's fields itself (CUDA): the message gives the flags
    msg = layers.engine_problem(_engine(), opts, **check)
    assert "pass kv_cache_dtype='float16' and kv_cache_dtype_skip_layers=['0', '5']" in msg
    assert "--kv-cache-dtype float16 --kv-cache-dtype-skip-layers 0 5" in msg
    ready = _engine(cache_dtype="float16", skip=("5", "0"))
    assert layers.engine_problem(ready, opts, **check) is None
    assert layers.engine_problem(ready, opts, **{**check, "layer_kv_cache_dtype": "auto"}) is None
    native = TurboQuantOptions(preset="tq3", boundary_layers=1, boundary_preset="native")
    msg = layers.engine_problem(_engine(cache_dtype="bfloat16", skip=("0", "5")), native,
                                **{**check, "layer_kv_cache_dtype": "auto"})
    assert "boundary_preset']='native' needs vLLM's own attention backend" in msg and "'k4v3'" in msg
    for model, needle in ((_engine(hybrid=True), "hybrid model"), (_engine(sliding=128), "sliding-window layers")):
        msg = layers.engine_problem(model, opts, **check)
        assert needle in msg and "erases the savings" in msg


def test_configure_sets_vllms_fields_or_refuses():
    from turboquant.vllm_integration import layers

    opts = TurboQuantOptions(preset="tq3", boundary_layers=2, boundary_preset="k4v3")
    eng = _engine(model_dtype="float16")
    layers.configure(eng, opts)
    assert eng.cache_config.cache_dtype == "bfloat16"
    assert eng.cache_config.kv_cache_dtype_skip_layers == ["0", "1", "4", "5"]
    layers.configure(eng, opts)  # idempotent (the config passes the platform hook more than once)
    with pytest.raises(ValueError, match=r"sets vLLM's kv_cache_dtype .*got kv_cache_dtype='fp8'"):
        layers.configure(_engine(cache_dtype="fp8"), opts)
    with pytest.raises(ValueError, match=r"kv_cache_dtype_skip_layers=\['3'\]"):
        layers.configure(_engine(skip=("3",)), opts)
    with pytest.raises(ValueError, match="hybrid model"):
        layers.configure(_engine(hybrid=True), opts)
    untouched = _engine()
    layers.configure(untouched, TurboQuantOptions())
    assert untouched.cache_config.cache_dtype == "auto"


def test_boundary_engine_configs():
    from turboquant.vllm_integration import engine_configs as ec

    assert ec.parse_boundary("tq3") is None and ec.parse_boundary("tq3.5+cal") is None
    assert ec.parse_boundary("tq3+k4v3@2") == ("tq3", "k4v3", 2)
    assert ec.config_kwargs("tq3+native@1")["additional_config"] == {
        "turboquant": {"preset": "tq3", "boundary_layers": 1, "boundary_preset": "native"}}
    assert ec.bytes_per_token("tq3+k4v3@1", 128, num_layers=6) == (2 * 120 + 4 * 104) / 6
    assert ec.bytes_per_token("tq3+native@2", 128, num_layers=6) == (4 * 512 + 2 * 104) / 6
    with pytest.raises(ValueError, match="needs num_layers"):
        ec.bytes_per_token("tq3+k4v3@1", 128)
    for bad in ("tq3+fp8@1", "tq9+k4v3@1", "tq3+k4v3@0", "tq3+k4v3@x", "tq3@1"):
        with pytest.raises(ValueError, match=r"MAIN\+BOUNDARY@N with MAIN in .* N >= 1"):
            ec.check_config(bad)

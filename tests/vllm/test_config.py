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
     "['store_impl']='cuda' is not supported; allowed values: ['auto', 'triton', 'reference']"),
    ({"turboquant": {"attention_impl": None}}, "['attention_impl']=None"),
    ({"turboquant": {"bits": 3}}, "unknown option(s) ['bits']; allowed options: ['preset', 'base_seed'"),
    ({"turboquant": "tq3"}, "must be a dict with keys"),
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
    assert opts.impl("store_impl", "cpu") == "reference" and opts.impl("attention_impl", "cpu") == "reference"
    pinned = TurboQuantOptions(store_impl="triton", attention_impl="reference")
    assert pinned.impl("store_impl", "cpu") == "triton" and pinned.impl("attention_impl", "cuda") == "reference"

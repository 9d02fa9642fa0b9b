"""turboquant.format: presets, slot layout, seeds, parameter checks."""

import numpy as np
import pytest

from turboquant import format as tqf


def all_formats():
    for p in tqf.PRESETS.values():
        for d in tqf.SUPPORTED_HEAD_SIZES:
            try:
                yield tqf.LayerFormat(p, d)
            except ValueError:
                continue


def test_equal_byte_presets_exist():
    sizes = {n: tqf.LayerFormat(p, 128).slot_bytes for n, p in tqf.PRESETS.items()}
    assert any(s <= 104 for s in sizes.values()) and sizes["tq3"] <= 104
    assert sizes["tq4"] <= 136
    assert any(s < 90 for s in sizes.values())


@pytest.mark.parametrize("fmt", list(all_formats()), ids=lambda f: f"{f.preset.name}-d{f.head_size}")
def test_layout_is_tight_aligned_and_ordered(fmt):
    end = 0
    order = {"f4": 0, "f2": 1, "u8": 2}
    last = 0
    for f in fmt.fields:
        assert f.offset == end, "fields are contiguous"
        assert order[f.dtype] >= last, "f4, then f2, then packed streams"
        last = order[f.dtype]
        if f.dtype == "f4":
            assert f.offset % 4 == 0 and f.nbytes == 4
        if f.dtype == "u8":
            assert f.nbytes == (f.count * f.bits + 7) // 8
        end += f.nbytes
    assert fmt.slot_bytes % tqf.SLOT_ALIGN == 0 and 0 <= fmt.slot_bytes - end < tqf.SLOT_ALIGN
    assert fmt.page_bytes(16, 8) == 16 * 8 * fmt.slot_bytes


def test_bits_per_coordinate_of_three_bit_preset():
    fmt = tqf.LayerFormat(tqf.get_preset("tq3"), 128)
    fm = fmt.field_map
    assert fm["k_codes.0"].nbytes == 48 and fm["v_codes.0"].nbytes == 48  # 3 bits, not a nibble


def test_outlier_split_instances():
    fmt = tqf.LayerFormat(tqf.get_preset("tq2.5"), 128)
    assert [(i.dim, i.mse_bits) for i in fmt.key_instances] == [(32, 3), (96, 2)]
    out, rest = fmt.channel_split("key")
    assert out.tolist() == list(range(32)) and rest.tolist() == list(range(32, 128))
    chans = tuple(range(0, 128, 4))
    fmt2 = tqf.LayerFormat(tqf.get_preset("tq2.5"), 128, key_outlier_channels=chans)
    out2, rest2 = fmt2.channel_split("key")
    assert out2.tolist() == list(chans) and sorted(out2.tolist() + rest2.tolist()) == list(range(128))
    with pytest.raises(ValueError, match="key_outlier_channels must be 32 distinct"):
        tqf.LayerFormat(tqf.get_preset("tq2.5"), 128, key_outlier_channels=(1, 2, 3))
    with pytest.raises(ValueError, match="has no outlier split"):
        tqf.LayerFormat(tqf.get_preset("tq3"), 128, key_outlier_channels=tuple(range(32)))


def test_derive_seed_is_sha256_of_the_stated_string():
    import hashlib

    want = int.from_bytes(hashlib.sha256(b"turboquant/v1/7/3/qjl/1").digest()[:8], "little")
    assert tqf.derive_seed(7, 3, "qjl", 1) == want
    assert tqf.derive_seed(7, 3, "qjl", 1) != tqf.derive_seed(7, 4, "qjl", 1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(head_size=100), r"head_size=100 is not supported; allowed values: \[64, 80"),
        (dict(head_size=96, preset="tq3_hadamard"), "power-of-two head_size"),
        (dict(head_size=80, preset="k4g4"), "group_size=32 must divide head_size=80"),
    ],
)
def test_bad_layer_format(kwargs, match):
    preset = tqf.get_preset(kwargs.pop("preset", "tq3"))
    with pytest.raises(ValueError, match=match):
        tqf.LayerFormat(preset, **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(key_bits=5), r"key_bits=5 is not supported; allowed values: \[1, 2, 3, 4\]"),
        (dict(value_bits=0), "value_bits=0"),
        (dict(key_mode="fp8"), "key_mode='fp8'"),
        (dict(value_mode="int4"), "value_mode='int4'"),
        (dict(rotation="dct"), "rotation='dct'"),
        (dict(outlier_fraction=0.3), "outlier_fraction=0.3"),
        (dict(value_mode="group", group_size=24), "group_size=24"),
        (dict(rotation="hadamard", outlier_fraction=0.25, key_outlier_bits=3, value_outlier_bits=3), "hadamard"),
    ],
)
def test_bad_preset(kwargs, match):
    base = dict(name="x", key_mode="mse", key_bits=3, value_mode="mse", value_bits=3)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tqf.Preset(**base)


def test_unknown_preset_name():
    with pytest.raises(ValueError, match=r"preset='tq9' is not supported; allowed values: \['tq4'"):
        tqf.get_preset("tq9")


def test_qjl_scale():
    assert tqf.qjl_scale(128) == pytest.approx(np.sqrt(np.pi / 2) / 128)


def test_boundary_layer_indices():
    assert tqf.boundary_layer_indices(6, 0) == ()
    assert tqf.boundary_layer_indices(6, 1) == (0, 5)
    assert tqf.boundary_layer_indices(6, 2) == (0, 1, 4, 5)
    assert tqf.boundary_layer_indices(6, [5, 0, 3]) == (0, 3, 5)
    assert tqf.boundary_layer_indices(4, (0, 1, 2, 3)) == (0, 1, 2, 3)  # a list may name every layer


@pytest.mark.parametrize("num_layers,value,match", [
    (6, 3, r"boundary_layers=3 is not supported for 6 layers; allowed values: an integer n with 0 <= 2n < 6"),
    (6, -1, r"boundary_layers=-1 is not supported"),
    (6, True, r"boundary_layers=True is not supported"),
    (6, [0, 6], r"boundary_layers=\[0, 6\] is not supported for 6 layers; .*distinct layer indices in \[0, 5\]"),
    (6, [1, 1], r"boundary_layers=\[1, 1\] is not supported"),
    (6, ["0"], r"boundary_layers=\['0'\] is not supported"),
    (6, 1.5, r"boundary_layers=1.5 is not supported"),
    (0, 1, r"num_layers=0 is not supported; allowed values: integers >= 1"),
])
def test_bad_boundary_layers(num_layers, value, match):
    with pytest.raises(ValueError, match=match):
        tqf.boundary_layer_indices(num_layers, value)


def test_mixed_bytes_per_token_sums_the_layers_slots():
    # Llama-3-8B geometry: 32 layers, 8 KV heads, head size 128
    tq3, k4v3 = (tqf.LayerFormat(tqf.get_preset(p), 128).slot_bytes for p in ("tq3", "k4v3"))
    assert tqf.mixed_bytes_per_token(32, 128, 8, "tq3") == 32 * 8 * tq3
    assert tqf.mixed_bytes_per_token(32, 128, 8, "tq3", 2, tqf.NATIVE) == 8 * (4 * 512 + 28 * tq3)
    assert tqf.mixed_bytes_per_token(32, 128, 8, "tq3", 2, "k4v3") == 8 * (4 * k4v3 + 28 * tq3)
    assert tqf.mixed_bytes_per_token(4, 64, 2, "tq3", [0], tqf.NATIVE, model_bytes_per_element=4) == 2 * (512 + 3 * 56)
    with pytest.raises(ValueError, match="preset 'tq9' not found|'tq9'"):
        tqf.mixed_bytes_per_token(4, 64, 2, "tq3", 1, "tq9")

"""SPEC.md "Edge cases": zero vectors, NaN/Inf, huge and denormal norms, fp16
overflow of value groups — defined results, and never contamination of neighbours."""

import numpy as np
import pytest

from turboquant import format as tqf
from turboquant import reference as ref
from turboquant.reference.slot import unpack_fields

PRESETS = list(tqf.PRESETS)


def fmt_of(name, d=128):
    return tqf.LayerFormat(tqf.get_preset(name), d)


def rand_kv(n, h=2, d=128, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, h, d)).astype(np.float32), rng.standard_normal((n, h, d)).astype(np.float32)


@pytest.mark.parametrize("name", PRESETS)
def test_zero_vector_decodes_to_zero(name):
    fmt = fmt_of(name)
    k, v = rand_kv(3)
    k[1] = 0
    v[1] = 0
    slots = ref.encode_slots(k, v, fmt)
    f = unpack_fields(slots, fmt)
    for fd in fmt.fields:
        if fd.name.startswith(("k_norm", "v_norm")):
            assert np.all(f[fd.name][1] == 0)
    kh, vh = ref.decode_slots(slots, fmt)
    assert np.all(kh[1] == 0) and np.all(vh[1] == 0)
    assert np.all(np.isfinite(kh)) and np.all(np.isfinite(vh))


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_token_is_nan_and_isolated(name, bad):
    fmt = fmt_of(name)
    k, v = rand_kv(4, seed=1)
    alone = ref.encode_slots(k, v, fmt)
    k2 = k.copy()
    k2[2, 1, 17] = bad
    slots = ref.encode_slots(k2, v, fmt)
    # neighbours (other tokens, the other head) are byte-identical to their encoding alone
    assert np.array_equal(np.delete(slots.reshape(8, -1), 5, axis=0), np.delete(alone.reshape(8, -1), 5, axis=0))
    f = unpack_fields(slots, fmt)
    raw = slots[2, 1]
    for fd in fmt.fields:
        if fd.name.startswith("k_norm") or fd.name.startswith("k_rnorm"):
            assert raw[fd.offset:fd.offset + 4].view("<u4")[0] == tqf.NORM_NAN_BITS
        if fd.name.startswith("k_codes") or fd.name.startswith("k_signs"):
            assert np.all(f[fd.name][2, 1] == 0)
    kh, _ = ref.decode_slots(slots, fmt)
    assert np.all(np.isnan(kh[2, 1])) and np.all(np.isfinite(np.delete(kh.reshape(8, -1), 5, axis=0)))


@pytest.mark.parametrize("name", PRESETS)
def test_non_finite_value_is_nan(name):
    fmt = fmt_of(name)
    k, v = rand_kv(2, seed=2)
    v[0, 0, 3] = np.nan
    _, vh = ref.decode_slots(ref.encode_slots(k, v, fmt), fmt)
    assert np.all(np.isnan(vh[0, 0])) and np.all(np.isfinite(vh[1])) and np.all(np.isfinite(vh[0, 1]))


@pytest.mark.parametrize("name", ["tq3", "tq4_qjl", "tq3.5", "k4g4"])
@pytest.mark.parametrize("scale", [2.0**100, 2.0**-140, 2.0**-149 * 3])
def test_huge_and_denormal_norms(name, scale):
    """Scaled copies keep their direction: the same codes (up to denormal rounding) and a finite norm."""
    fmt = fmt_of(name)
    k, v = rand_kv(1, seed=3)
    ks = (k * np.float32(scale)).astype(np.float32)
    f1 = unpack_fields(ref.encode_slots(k, v, fmt), fmt)
    f2 = unpack_fields(ref.encode_slots(ks, v, fmt), fmt)
    assert np.isfinite(f2["k_norm.0"]).all() and (f2["k_norm.0"] > 0).all()
    if scale > 1e-40:  # exact power-of-two scaling of normal floats keeps the direction bit-exactly
        assert np.array_equal(f1["k_codes.0"] if "k_codes.0" in f1 else 0, f2["k_codes.0"] if "k_codes.0" in f2 else 0)
        np.testing.assert_allclose(f2["k_norm.0"], f1["k_norm.0"] * scale, rtol=1e-6)
    kh, _ = ref.decode_slots(ref.encode_slots(ks, v, fmt), fmt)
    assert np.all(np.isfinite(kh))


def test_norm_overflowing_float32_is_non_finite():
    fmt = fmt_of("tq3")
    k, v = rand_kv(1, seed=4)
    k[0, 0] = 3e38  # every element finite, the norm is not representable in float32
    f = unpack_fields(ref.encode_slots(k, v, fmt), fmt)
    assert np.isnan(f["k_norm.0"][0, 0]) and np.isfinite(f["k_norm.0"][0, 1])


def test_group_values_beyond_fp16_are_non_finite():
    fmt = fmt_of("k4g4")
    k, v = rand_kv(1, seed=5)
    v[0, 0, 40] = 70000.0  # group 1 of head 0 leaves the fp16 range
    f = unpack_fields(ref.encode_slots(k, v, fmt), fmt)
    assert np.all(f["v_scale"][0, 0].view(np.uint16) == tqf.GROUP_NAN_BITS)
    assert np.all(np.isfinite(f["v_scale"][0, 1]))


@pytest.mark.parametrize("extreme,finite", [(65504.0, True), (65519.0, True), (65520.0, False),
                                            (-65519.0, True), (-65520.0, False)])
def test_group_fp16_rule_is_rounding_to_infinity(extreme, finite):
    """SPEC 4.4: a group is non-finite when min, max or scale rounds to infinity in fp16;
    65519 rounds to 65504 (finite), 65520 rounds to infinity."""
    fmt = fmt_of("k4g4")
    k, v = rand_kv(1, seed=7)
    v[0, 0, 40] = extreme
    f = unpack_fields(ref.encode_slots(k, v, fmt), fmt)
    assert np.all(np.isfinite(f["v_scale"][0, 0])) == finite
    assert np.all(f["v_scale"][0, 0].view(np.uint16) == tqf.GROUP_NAN_BITS) == (not finite)


def test_constant_group_has_zero_scale():
    fmt = fmt_of("k4g4")
    k, v = rand_kv(1, seed=6)
    v[0, 0, :32] = 1.25
    f = unpack_fields(ref.encode_slots(k, v, fmt), fmt)
    assert f["v_scale"][0, 0, 0] == 0 and np.all(f["v_codes"][0, 0, :32] == 0)
    _, vh = ref.decode_slots(ref.encode_slots(k, v, fmt), fmt)
    assert np.all(vh[0, 0, :32] == 1.25)


@pytest.mark.parametrize("name", ["tq3", "tq4_qjl", "k4g4"])
def test_nan_token_contaminates_only_its_sequence(name):
    fmt = fmt_of(name)
    rng = np.random.default_rng(7)
    k, v = rand_kv(20, seed=8)
    k[13, 0, 2] = np.nan  # token 3 of sequence 1, KV head 0
    cache = ref.new_cache(fmt, 6, 4, 2)
    bt = np.array([[0, 1, 2], [3, 4, 5]], np.int32)
    sm = np.concatenate([np.arange(10), 12 + np.arange(10)])
    ref.store(cache, k, v, sm, fmt)
    q = rng.standard_normal((2, 4, 128)).astype(np.float32)
    out = ref.decode_attention(q, cache, bt, np.array([10, 10]), fmt)
    assert np.all(np.isfinite(out[0]))
    assert np.all(np.isnan(out[1, :2])) and np.all(np.isfinite(out[1, 2:]))  # heads 0,1 read KV head 0
    # a query whose causal window ends before the NaN token is unaffected
    out2 = ref.paged_attention(q[[1, 1]], cache, bt[1:], np.array([10]), fmt, query_start_loc=np.array([0, 2]))
    assert np.all(np.isnan(out2[1, :2]))
    out3 = ref.paged_attention(q[[1]], cache, bt[1:], np.array([3]), fmt)
    assert np.all(np.isfinite(out3))


@pytest.mark.parametrize("name", ["tq3", "k4g4", "tq3.5"])
def test_nan_value_poisons_only_rows_that_see_it(name):
    """A non-finite value must not reach causally masked rows (0 * NaN)."""
    fmt = fmt_of(name)
    rng = np.random.default_rng(9)
    k, v = rand_kv(8, seed=10)
    v[5, 1, 3] = np.inf  # token 5, KV head 1
    cache = ref.new_cache(fmt, 2, 4, 2)
    ref.store(cache, k, v, np.arange(8), fmt)
    q = rng.standard_normal((8, 4, 128)).astype(np.float32)  # extend over all 8 positions
    out = ref.paged_attention(q, cache, np.array([[0, 1]], np.int32), np.array([8]), fmt,
                              query_start_loc=np.array([0, 8]))
    assert np.all(np.isfinite(out[:5])), "rows before the bad token must stay finite"
    assert np.all(np.isnan(out[5:, 2:])) and np.all(np.isfinite(out[5:, :2]))  # q heads 2,3 read KV head 1
    kd, vd = ref.decode_slots(cache.transpose(0, 2, 1, 3).reshape(8, 2, -1), fmt)
    dense = ref.dense_attention(q, kd, vd)
    assert np.array_equal(np.isnan(dense), np.isnan(out))

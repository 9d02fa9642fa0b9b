"""Property-based tests (hypothesis) over shapes, seeds, presets, block tables and slot
mappings, for every available implementation: packing round trips, stores that never touch
bytes outside their slots, and store bytes / decode outputs against the reference."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from turboquant import format as tqf  # noqa: E402
from turboquant import reference as ref  # noqa: E402
from turboquant.conformance.compare import compare_slots, rel_err  # noqa: E402
from turboquant.conformance.impls import available  # noqa: E402
from turboquant.reference.pack import pack_bits, unpack_bits  # noqa: E402

IMPLS = available()
# The Triton interpreter is slow: fewer, smaller examples for it.
EXAMPLES = {"reference": 25}
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                derandomize=True)


@settings(max_examples=200, **SETTINGS)
@given(bits=st.integers(1, 8), n=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip(bits, n, seed):
    codes = np.random.default_rng(seed).integers(0, 1 << bits, (3, n)).astype(np.uint8)
    packed = pack_bits(codes, bits)
    assert packed.shape[-1] == (n * bits + 7) // 8
    assert np.array_equal(unpack_bits(packed, bits, n), codes)
    tail = n * bits % 8
    if tail:  # unused high bits of the last byte are zero
        assert np.all(packed[:, -1] >> tail == 0)


@st.composite
def store_case(draw, small: bool):
    preset = draw(st.sampled_from(list(tqf.PRESETS)))
    d = draw(st.sampled_from([64, 128] if small else [64, 96, 128, 256]))
    try:
        fmt = tqf.LayerFormat(tqf.get_preset(preset), d, layer=draw(st.integers(0, 40)),
                              base_seed=draw(st.integers(0, 2**31)))
    except ValueError:
        fmt = tqf.LayerFormat(tqf.get_preset("tq3"), d)
    h = draw(st.integers(1, 2 if small else 4))
    bs = draw(st.sampled_from([1, 4, 16]))
    nb = draw(st.integers(1, 4 if small else 8))
    n = draw(st.integers(1, min(nb * bs, 12 if small else 48)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    slots = rng.permutation(nb * bs)[:n].astype(np.int64)
    pad = rng.random(n) < 0.2
    slots[pad] = -rng.integers(1, 5, pad.sum())
    scale = draw(st.sampled_from([1e-3, 1.0, 300.0]))
    k = (rng.standard_normal((n, h, d)) * scale).astype(np.float32)
    v = (rng.standard_normal((n, h, d)) * scale).astype(np.float32)
    k = k.astype(np.float16).astype(np.float32)  # exact in fp16: every implementation sees the same input
    v = v.astype(np.float16).astype(np.float32)
    # bad numerics in one (token, head) of K or V: SPEC §8 encodes that tensor of that token alone
    poison = draw(st.sampled_from([None, "nan", "inf", "-inf", "huge", "zero", "denormal"]))
    if poison is not None:
        t, hh, ch = rng.integers(n), rng.integers(h), rng.integers(d)
        x = k if draw(st.booleans()) else v
        if poison == "zero":
            x[t, hh] = 0.0
        elif poison == "denormal":
            x[t, hh] = 1e-40
        else:
            x[t, hh, ch] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 3e38}[poison]
    return fmt, nb, bs, h, k, v, slots, seed


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_store_touches_only_its_slots_and_matches_reference(impl):
    small = impl.name != "reference" and impl.scale == "small"

    @settings(max_examples=EXAMPLES.get(impl.name, 8 if small else 25), **SETTINGS)
    @given(case=store_case(small))
    def check(case):
        fmt, nb, bs, h, k, v, slots, seed = case
        garbage = np.random.default_rng(seed ^ 0x5A5A).integers(0, 256, fmt.cache_shape(nb, bs, h), np.uint8)
        after = impl.store(garbage, k, v, slots, fmt)
        keep = slots >= 0
        written = np.zeros(garbage.shape[:3], bool)
        written[slots[keep] // bs, :, slots[keep] % bs] = True
        assert np.array_equal(after[~written], garbage[~written])
        if keep.any():  # every written slot (the poisoned one and its neighbours) as the reference
            rep = compare_slots(after[slots[keep] // bs, :, slots[keep] % bs], k[keep], v[keep], fmt)
            assert rep.ok, rep

    check()


@pytest.mark.parametrize("impl", [i for i in IMPLS if i.name != "reference"], ids=lambda i: i.name)
def test_decode_matches_reference_on_random_tables(impl):
    small = impl.scale == "small"

    @settings(max_examples=6 if small else 20, **SETTINGS)
    @given(preset=st.sampled_from(list(tqf.PRESETS)), g=st.integers(1, 8), seed=st.integers(0, 2**32 - 1),
           lens=st.lists(st.integers(1, 40 if small else 600), min_size=1, max_size=3))
    def check(preset, g, seed, lens):
        fmt = tqf.LayerFormat(tqf.get_preset(preset), 64)
        rng = np.random.default_rng(seed)
        bs, h = 8, 2
        per = [-(-L // bs) for L in lens]
        nb = sum(per) + 2
        perm = rng.permutation(nb)
        bt = np.zeros((len(lens), max(per)), np.int32)
        cache = ref.new_cache(fmt, nb, bs, h)
        start = 0
        for b, (L, p) in enumerate(zip(lens, per)):
            bt[b, :p] = perm[start:start + p]
            start += p
            pos = np.arange(L)
            k = rng.standard_normal((L, h, 64)).astype(np.float16).astype(np.float32)
            v = rng.standard_normal((L, h, 64)).astype(np.float16).astype(np.float32)
            ref.store(cache, k, v, bt[b, pos // bs].astype(np.int64) * bs + pos % bs, fmt)
        q = rng.standard_normal((len(lens), h * g, 64)).astype(np.float16).astype(np.float32)
        want = ref.decode_attention(q, cache, bt, np.asarray(lens, np.int32), fmt)
        got = impl.paged_attention(q, cache, bt, np.asarray(lens, np.int32), fmt)
        assert rel_err(got, want) <= tqf.ATTN_RTOL_HALF

    check()

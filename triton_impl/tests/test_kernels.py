"""Kernel tests beyond the shared conformance cases: edge-case inputs, odd head
sizes, GQA group sizes, block sizes, API errors.  CPU: run with
TRITON_INTERPRET=1 (set before triton is imported); CUDA when available.

    TRITON_INTERPRET=1 python -m pytest triton_impl/tests -q
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from turboquant import format as tqf
from turboquant import reference as ref
from turboquant.conformance.cases import paged_layout
from turboquant.conformance.compare import compare_slots, rel_err
from turboquant.reference.cache import gather_tokens
from turboquant.triton_impl import (
    AttnConfig,
    KernelParams,
    decode_attention,
    dequantize,
    dequantize_slots,
    paged_attention,
    store_kv,
)

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _fmt(preset, d=128, layer=0):
    return tqf.LayerFormat(tqf.get_preset(preset), d, layer=layer)


def _store_both(fmt, key, value, dtype=torch.float32, nblocks=None, bs=4):
    """Store with the kernel and the reference; returns (kernel cache, reference cache)."""
    n, h, _ = key.shape
    nb = nblocks or -(-n // bs) + 1
    rng = np.random.default_rng(5)
    slots = rng.permutation(nb * bs)[:n].astype(np.int64)
    slots[::7] = -1
    want = ref.new_cache(fmt, nb, bs, h)
    ref.store(want, key, value, slots, fmt)
    got = torch.from_numpy(want.copy() * 0 + 0xAB).to(DEV)  # untouched bytes must stay 0xAB
    want_bg = want.copy()
    keep = slots >= 0
    written = np.zeros(want.shape[:3], bool)
    written[slots[keep] // bs, :, slots[keep] % bs] = True
    want_bg[~written] = 0xAB
    p = KernelParams.build(fmt, DEV)
    store_kv(torch.from_numpy(key).to(DEV, dtype), torch.from_numpy(value).to(DEV, dtype), got,
             torch.from_numpy(slots).to(DEV), p)
    return got.cpu().numpy(), want_bg, slots


def _edge_rows(d, rng):
    rows = [
        np.zeros(d),  # zero vector
        np.full(d, 1e-42),  # denormals
        rng.standard_normal(d) * 1e-38,
        rng.standard_normal(d) * 1e30,  # huge but finite norm
        np.full(d, 3e38),  # norm overflows float32 -> non-finite token
        np.where(np.arange(d) == 3, np.nan, 1.0),  # NaN
        np.where(np.arange(d) == d - 1, np.inf, 1.0),  # Inf in the last channel
        np.where(np.arange(d) == 0, -np.inf, 0.5),
        np.eye(d)[5] * 7.0,  # one-hot
        rng.standard_normal(d),
        rng.standard_normal(d) * 70000.0,  # outside fp16 range (group values non-finite)
        np.linspace(-1, 1, d),
    ]
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("preset", list(tqf.PRESETS))
def test_store_edge_cases(preset):
    fmt = _fmt(preset)
    rng = np.random.default_rng(0)
    e = _edge_rows(128, rng)
    key = np.stack([e, e[::-1]], axis=1)  # [n, 2, d]
    value = np.stack([e[::-1], e], axis=1)
    got, want, slots = _store_both(fmt, key, value)
    keep = slots >= 0
    bs = want.shape[2]
    assert np.array_equal(got.reshape(-1, got.shape[-1])[np.all(want.reshape(-1, want.shape[-1]) == 0xAB, -1)],
                          want.reshape(-1, want.shape[-1])[np.all(want.reshape(-1, want.shape[-1]) == 0xAB, -1)])
    rep = compare_slots(got[slots[keep] // bs, :, slots[keep] % bs], key[keep], value[keep], fmt)
    assert rep.ok, rep
    # tokens whose key and value are both non-finite (NaN/Inf, or a norm beyond float32): bytes
    # exactly as the reference (NaN bits, zero codes/signs), which fills `want` at the written slots
    def non_finite(x):
        with np.errstate(over="ignore", invalid="ignore"):
            return ~np.isfinite(x).all(-1) | (np.linalg.norm(x.astype(np.float64), axis=-1) > np.finfo(np.float32).max)

    both = non_finite(key) & non_finite(value) & keep[:, None]  # [n, heads]
    assert both.sum() >= 6  # tokens 4-6 (7 is a padding slot) x 2 heads
    tok, head = np.nonzero(both)
    sl = slots[tok]
    assert np.array_equal(got[sl // bs, head, sl % bs], want[sl // bs, head, sl % bs])


@pytest.mark.parametrize("preset,d", [("tq3", 80), ("tq4_qjl", 96), ("tq2.5", 80), ("tq3.5", 112),
                                      ("k4g4", 96), ("k4v3", 192), ("tq2", 64), ("tq3_qjl", 256)])
def test_odd_head_sizes_store_and_attention(preset, d):
    fmt = _fmt(preset, d, layer=2)
    rng = np.random.default_rng(d)
    n, h, g = 45, 2, 3
    key = (rng.standard_normal((n, h, d)) * np.exp(rng.normal(0, 0.5, d))).astype(np.float32)
    value = rng.standard_normal((n, h, d)).astype(np.float32)
    got, want, slots = _store_both(fmt, key, value)
    keep = slots >= 0
    bs = want.shape[2]
    rep = compare_slots(got[slots[keep] // bs, :, slots[keep] % bs], key[keep], value[keep], fmt)
    assert rep.ok, rep
    # decode and extend over the reference's bytes
    cache, bt, sl = _paged_case(fmt, [21, 50], h, g, 16, rng)
    p = KernelParams.build(fmt, DEV)
    q = rng.standard_normal((2, h * g, d)).astype(np.float16)
    t = lambda x: torch.from_numpy(x).to(DEV)  # noqa: E731
    out = decode_attention(t(q), t(cache), t(bt), t(sl), p).float().cpu().numpy()
    assert rel_err(out, ref.paged_attention(q.astype(np.float32), cache, bt, sl, fmt)) < tqf.ATTN_RTOL_HALF
    qsl = np.array([0, 5, 12], np.int32)
    q = rng.standard_normal((12, h * g, d)).astype(np.float16)
    out = paged_attention(t(q), t(cache), t(bt), t(sl), t(qsl), p).float().cpu().numpy()
    assert rel_err(out, ref.paged_attention(q.astype(np.float32), cache, bt, sl, fmt, qsl)) < tqf.ATTN_RTOL_HALF


def _paged_case(fmt, seq_lens, h, g, bs, rng, dtype=np.float16):
    nb, bt, slots = paged_layout(rng, seq_lens, bs, spare=2)
    d = fmt.head_size
    key = (rng.standard_normal((slots.size, h, d)) * 1.3).astype(dtype).astype(np.float32)
    value = rng.standard_normal((slots.size, h, d)).astype(dtype).astype(np.float32)
    cache = ref.new_cache(fmt, nb, bs, h)
    ref.store(cache, key, value, slots, fmt)
    return cache, bt, np.asarray(seq_lens, np.int32)


@pytest.mark.parametrize("g", [1, 2, 3, 4, 5, 6, 7, 8])
def test_gqa_groups_decode_equals_paged(g):
    fmt = _fmt("tq3" if g % 2 else "tq4_qjl")
    rng = np.random.default_rng(g)
    bs = [1, 8, 16, 32][g % 4]
    cache, bt, sl = _paged_case(fmt, [9, 70, 1], 2, g, bs, rng)
    q = rng.standard_normal((3, 2 * g, 128)).astype(np.float32)
    p = KernelParams.build(fmt, DEV)
    args = (torch.from_numpy(q).to(DEV, torch.bfloat16), torch.from_numpy(cache).to(DEV), torch.from_numpy(bt).to(DEV),
            torch.from_numpy(sl).to(DEV))
    a = decode_attention(*args, p).float().cpu().numpy()
    b = paged_attention(*args, None, p).float().cpu().numpy()
    want = ref.paged_attention(args[0].float().cpu().numpy(), cache, bt, sl, fmt)
    assert rel_err(a, want) < tqf.ATTN_RTOL_HALF and rel_err(b, want) < tqf.ATTN_RTOL_HALF
    # any split count gives the same function
    c = decode_attention(*args, p, num_splits=7).float().cpu().numpy()
    assert rel_err(c, want) < tqf.ATTN_RTOL_HALF


@pytest.mark.parametrize("lookup", [0, 1, 2])
@pytest.mark.parametrize("preset", ["tq2", "tq3", "tq4", "tq3.5"])
def test_centroid_lookup_variants(lookup, preset):
    """Every centroid lookup of the split kernel (gather, select tree, cubic) gives the reference's
    decode and extend outputs, for 2-, 3- and 4-bit codes and the outlier split's two instances."""
    fmt = _fmt(preset)
    rng = np.random.default_rng(40 + lookup)
    cache, bt, sl = _paged_case(fmt, [37, 130], 2, 4, 16, rng)
    q = rng.standard_normal((2, 8, 128)).astype(np.float32)
    p = KernelParams.build(fmt, DEV)
    assert p.meta["CB_SYMMETRIC"] and p.meta["CB_POLY"]  # so the variant really runs
    t = lambda x: torch.from_numpy(x).to(DEV)  # noqa: E731
    args = (t(q).to(torch.bfloat16), t(cache), t(bt), t(sl))
    want = ref.paged_attention(args[0].float().cpu().numpy(), cache, bt, sl, fmt)
    cfg = AttnConfig(block_tokens=32, lookup=lookup)
    got = decode_attention(*args, p, config=cfg).float().cpu().numpy()
    assert rel_err(got, want) < tqf.ATTN_RTOL_HALF
    qsl = np.array([0, 5, 9], np.int32)  # extend: the last 5 and 4 tokens of the two sequences
    qx = rng.standard_normal((9, 8, 128)).astype(np.float32)
    want_x = ref.paged_attention(t(qx).to(torch.bfloat16).float().cpu().numpy(), cache, bt, sl, fmt, qsl)
    got_x = paged_attention(t(qx).to(torch.bfloat16), t(cache), t(bt), t(sl), t(qsl), p, config=cfg)
    assert rel_err(got_x.float().cpu().numpy(), want_x) < tqf.ATTN_RTOL_HALF


def test_magnitude_polynomials_reproduce_every_shipped_codebook():
    from turboquant.reference.quantizer import layer_params
    from turboquant.triton_impl.params import magnitude_polynomials

    for preset in ("tq2", "tq3", "tq4", "tq3.5", "tq2.5"):
        for inst in layer_params(_fmt(preset)).keys:
            c = inst.codebook.centroids
            coef, ok = magnitude_polynomials(c)
            h = c.size // 2
            m = np.arange(h)
            a = coef.astype(np.float64).reshape(2, 4)[m // 4]
            t = (m % 4).astype(np.float64)
            got = ((a[:, 3] * t + a[:, 2]) * t + a[:, 1]) * t + a[:, 0]
            assert ok and np.allclose(got, c[h:], rtol=0, atol=1e-6 * np.abs(c).max()), (preset, got, c[h:])


def _constexpr_args(kernel) -> set:
    """The tl.constexpr parameters of a @triton.jit kernel (compiled or interpreted)."""
    fn = getattr(kernel, "fn", kernel)
    return {n for n, a in inspect.signature(fn).parameters.items() if "constexpr" in str(a.annotation)}


def _kernels():
    from turboquant.triton_impl import attn_core, dequant, prefill, query, store

    return {"store": store._store_kernel, "query": query._rotate_query_kernel, "split": attn_core._split_kernel,
            "merge": attn_core._merge_kernel, "dense_kv": prefill._dense_kv_kernel,
            "dequant": dequant._dequant_kernel}


@pytest.mark.parametrize("preset", ["tq3_qjl", "tq2.5", "k4g4"])
def test_constexpr_table_matches_the_kernels(preset):
    """Every layer constexpr a kernel declares comes from KernelParams.constexprs, and nothing else."""
    from turboquant.triton_impl.params import KERNEL_CONSTEXPRS
    from turboquant.triton_impl.rotate import _rotate_kernel, _rotate_persistent_kernel

    p = KernelParams.build(_fmt(preset), DEV)
    kernels = _kernels()
    assert set(kernels) == set(KERNEL_CONSTEXPRS)
    for name, kernel in kernels.items():
        declared = _constexpr_args(kernel)
        given = p.constexprs(name)
        assert set(given) <= declared, (name, set(given) - declared)
        assert declared & set(p.meta) <= set(given), (name, declared & set(p.meta) - set(given))
    rot = _constexpr_args(_rotate_kernel)
    assert _constexpr_args(_rotate_persistent_kernel) == rot - {"MAT_STRIDE", "NI", "M1", "MP1", "IDCH1"}
    for tensor in ("key", "value"):  # the rest are chosen per launch
        assert rot - set(p.rotation_constexprs(tensor)) == {"BR", "TAIL0", "TAIL", "TAILP", "INVERSE", "PREC",
                                                            "OUT_BF16"}
    assert p.constexprs("merge")["V_MAT_STRIDE"] == p.v_rot.shape[1] * p.v_rot.shape[2] == p.v_rot.stride(0)
    assert p.constexprs("query")["K_MAT_STRIDE"] == p.k_qjl.stride(0)


def test_constexpr_lookups_name_the_allowed_values():
    p = KernelParams.build(_fmt("tq3"), DEV)
    with pytest.raises(ValueError, match=r"kernel='decode' is not supported; allowed values: \['store'"):
        p.constexprs("decode")
    with pytest.raises(ValueError, match=r"tensor='keys' is not supported; allowed values: \['key', 'value'\]"):
        p.rotation_constexprs("keys")


def test_attn_config_rejects_unknown_lookup():
    with pytest.raises(ValueError, match=r"lookup=3 is not supported; allowed values: \[0, 1, 2\]"):
        AttnConfig(lookup=3)


def test_extend_softmax_scale_out_and_fp32():
    fmt = _fmt("k4g4")
    rng = np.random.default_rng(3)
    cache, bt, sl = _paged_case(fmt, [30, 5, 64], 2, 4, 16, rng)
    qsl = np.array([0, 12, 13, 13 + 20], np.int32)  # extend, decode, extend
    q = rng.standard_normal((33, 8, 128)).astype(np.float32)
    p = KernelParams.build(fmt, DEV)
    want = ref.paged_attention(q, cache, bt, sl, fmt, qsl, softmax_scale=0.05)
    t = lambda x: torch.from_numpy(x).to(DEV)  # noqa: E731
    out = torch.full((33, 8, 128), float("nan"), dtype=torch.float32, device=DEV)
    r = paged_attention(t(q), t(cache), t(bt), t(sl), t(qsl), p, softmax_scale=0.05, out=out)
    assert r is out
    assert rel_err(out.cpu().numpy(), want) < tqf.ATTN_RTOL_FP32


def test_nonfinite_key_poisons_only_rows_that_see_it():
    fmt = _fmt("tq3")
    rng = np.random.default_rng(4)
    L, h, g, bs = 40, 1, 2, 8
    key = rng.standard_normal((L, h, 128)).astype(np.float32)
    key[25, 0, 3] = np.nan
    value = rng.standard_normal((L, h, 128)).astype(np.float32)
    cache = ref.new_cache(fmt, 5, bs, h)
    ref.store(cache, key, value, np.arange(L), fmt)
    bt = np.arange(5, dtype=np.int32)[None]
    q = rng.standard_normal((L, h * g, 128)).astype(np.float32)
    p = KernelParams.build(fmt, DEV)
    t = lambda x: torch.from_numpy(x).to(DEV)  # noqa: E731
    out = paged_attention(t(q).half(), t(cache), t(bt), t(np.array([L], np.int32)),
                          t(np.array([0, L], np.int32)), p).float().cpu().numpy()
    assert np.isnan(out[25:]).all() and not np.isnan(out[:25]).any()


@pytest.mark.parametrize("preset", ["tq4_qjl", "tq2.5", "k4g4"])
def test_dequantize_matches_reference(preset):
    fmt = _fmt(preset)
    rng = np.random.default_rng(9)
    cache, bt, sl = _paged_case(fmt, [17, 33], 2, 1, 16, rng, np.float32)
    p = KernelParams.build(fmt, DEV)
    t = lambda x: torch.from_numpy(x).to(DEV)  # noqa: E731
    k, v = dequantize(t(cache), t(bt), t(sl), p)
    for b in range(2):
        kw, vw = ref.decode_slots(gather_tokens(cache, bt[b], int(sl[b])).transpose(1, 0, 2), fmt)
        np.testing.assert_allclose(k[b, : sl[b]].cpu().numpy(), kw, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(v[b, : sl[b]].cpu().numpy(), vw, rtol=1e-5, atol=1e-5)
    k2, _ = dequantize_slots(t(cache), t(np.array([-1], np.int64)), p)
    assert not k2.any()


def test_errors_name_the_parameter():
    fmt = _fmt("tq3")
    p = KernelParams.build(fmt, DEV)
    cache = torch.zeros(fmt.cache_shape(4, 16, 2), dtype=torch.uint8, device=DEV)
    k = torch.zeros((3, 2, 128), device=DEV)
    sm = torch.arange(3, device=DEV)
    with pytest.raises(TypeError, match="key.dtype"):
        store_kv(k.to(torch.int32), k, cache, sm, p)
    with pytest.raises(ValueError, match="head_size=128"):
        store_kv(k[..., :64], k[..., :64], cache, sm, p)
    with pytest.raises(ValueError, match="slot_bytes"):
        store_kv(k, k, cache[..., :-4], sm, p)
    with pytest.raises(TypeError, match="slot_mapping"):
        store_kv(k, k, cache, sm.float(), p)
    with pytest.raises(TypeError, match="fmt"):
        KernelParams.build("tq3", DEV)
    bt = torch.zeros((1, 4), dtype=torch.int32, device=DEV)
    sl = torch.tensor([5], dtype=torch.int32, device=DEV)
    with pytest.raises(ValueError, match="num_q_heads"):
        decode_attention(torch.zeros((1, 3, 128), device=DEV), cache, bt, sl, p)
    with pytest.raises(TypeError, match="block_table"):
        decode_attention(torch.zeros((1, 4, 128), device=DEV), cache, bt.float(), sl, p)
    with pytest.raises(ValueError, match="query_start_loc"):
        paged_attention(torch.zeros((1, 4, 128), device=DEV), cache, bt, sl, sl, p)

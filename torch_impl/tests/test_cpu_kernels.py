"""The fused CPU kernels (torch_impl/cpp, torch_impl/fused.py) beyond the shared conformance cases: they
build wherever a C++ compiler is; head sizes whose instances end in a partial group of 8 codes (d = 80,
112: m = 20, 28, 60, 84, 112) against the reference; decode over many blocks with a partial last
block; and the fallback to the torch path, with one warning, when the build fails."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from turboquant import format as tqf
from turboquant import reference as ref
from turboquant.conformance.cases import paged_layout
from turboquant.conformance.compare import compare_slots, float_field_mask, rel_err
from turboquant.torch_impl import TorchParams, attention, cpp, fused, store


def test_kernels_build_where_a_compiler_is():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine: the fallback test below covers it")
    fused.available()
    assert cpp.ops() is not None, cpp.error()


def _formats():
    for name in tqf.PRESETS:
        for d in (80, 112):
            try:
                yield tqf.LayerFormat(tqf.get_preset(name), d, layer=4)
            except ValueError:  # hadamard needs a power of two
                continue


@pytest.mark.parametrize("fmt", list(_formats()), ids=lambda f: f"{f.preset.name}-d{f.head_size}")
def test_partial_code_groups_against_reference(fmt):
    if not fused.available():
        pytest.skip("the fused CPU kernels do not build here")
    d, h, bs = fmt.head_size, 2, 16
    rng = np.random.default_rng(fmt.head_size)
    lens = (70, 33, 16)
    nb, bt, sm = paged_layout(rng, lens, bs, spare=1)
    k = rng.standard_normal((sm.size, h, d)).astype(np.float32)
    v = rng.standard_normal((sm.size, h, d)).astype(np.float32)
    cache = torch.zeros(fmt.cache_shape(nb, bs, h), dtype=torch.uint8)
    fused.store_kv(torch.from_numpy(k), torch.from_numpy(v), cache, torch.from_numpy(sm), TorchParams.build(fmt))
    got = cache.numpy()[sm // bs, :, sm % bs]
    rep = compare_slots(got, k, v, fmt)
    assert rep.ok, rep
    want_cache = ref.new_cache(fmt, nb, bs, h)
    ref.store(want_cache, k, v, sm, fmt)
    q = rng.standard_normal((len(lens), 4, d)).astype(np.float32)
    sl = np.asarray(lens, np.int32)
    want = ref.decode_attention(q, want_cache, bt, sl, fmt)
    out = fused.decode_attention(torch.from_numpy(q), torch.from_numpy(want_cache), torch.from_numpy(bt),
                                 torch.from_numpy(sl), TorchParams.build(fmt))
    assert rel_err(out.numpy(), want) <= tqf.ATTN_RTOL_FP32


@pytest.mark.parametrize("preset", ["tq3", "k4v3", "tq4", "tq3_qjl", "k4g4"])
def test_long_decode_matches_torch_path(preset):
    """1,000-token sequences (many blocks, a partial last one), 8 query heads per KV head."""
    if not fused.available():
        pytest.skip("the fused CPU kernels do not build here")
    fmt = tqf.LayerFormat(tqf.get_preset(preset), 128, layer=1)
    p = TorchParams.build(fmt)
    g = torch.Generator().manual_seed(3)
    lens = torch.tensor([1000, 517, 1], dtype=torch.int32)
    bs, nblk = 32, 32
    bt = torch.randperm(3 * nblk, generator=g).view(3, nblk).to(torch.int32)
    cache = torch.randint(0, 256, fmt.cache_shape(3 * nblk, bs, 1), dtype=torch.uint8, generator=g)
    k = torch.randn(3 * nblk * bs, 1, 128, generator=g)
    store.store_kv(k, torch.randn(k.shape, generator=g), cache, torch.arange(k.shape[0]), p)
    q = torch.randn(3, 8, 128, generator=g)
    want = attention.decode_attention(q, cache, bt, lens, p)
    got = fused.decode_attention(q, cache, bt, lens, p)
    assert rel_err(got.numpy(), want.numpy()) <= tqf.ATTN_RTOL_FP32


def test_failed_build_falls_back_to_the_torch_path_with_one_warning(monkeypatch):
    def broken():
        raise RuntimeError("no compiler (forced by the test)")

    fmt = tqf.LayerFormat(tqf.get_preset("tq3"), 64)
    p = TorchParams.build(fmt)
    k = torch.randn(5, 2, 64, generator=torch.Generator().manual_seed(0))
    want = torch.zeros(fmt.cache_shape(2, 4, 2), dtype=torch.uint8)
    store.store_kv(k, k, want, torch.arange(5), p)
    monkeypatch.setattr(cpp, "_build", broken)
    cpp.reset()
    try:
        with pytest.warns(RuntimeWarning, match=r"fused CPU kernels are not available: building the C\+\+ "
                                                r"extension failed \(no compiler \(forced by the test\)\)"):
            assert not fused.available()
        assert "forced by the test" in cpp.error()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once, not per call
            got = torch.zeros_like(want)
            fused.store_kv(k, k, got, torch.arange(5), p)
            q = torch.randn(2, 4, 64)
            bt, sl = torch.tensor([[0], [1]], dtype=torch.int32), torch.tensor([3, 2], dtype=torch.int32)
            out = fused.decode_attention(q, got, bt, sl, p)
        assert torch.equal(got, want)  # the torch path's bytes, exactly
        assert torch.equal(out, attention.decode_attention(q, want, bt, sl, p))
    finally:
        cpp.reset()


def test_environment_switch_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv(cpp.ENV_SWITCH, "0")
    cpp.reset()
    try:
        with pytest.warns(RuntimeWarning, match=f"{cpp.ENV_SWITCH}=0 in the environment"):
            assert cpp.ops() is None
    finally:
        cpp.reset()


@pytest.mark.parametrize("preset,tensor", [("tq3", "key"), ("k4v3", "value"), ("k4g4", "value"),
                                           ("tq3_qjl", "key")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [(150, 70), (60, 50)], ids=["whole", "chunk"])
def test_dense_prefill_poisons_exactly_the_rows_that_see_it(preset, tensor, dtype, rows):
    """The dense prefill (SPEC §9) over several blocks, whole prompts or the last chunk of each (a
    cached prefix, merged by log-sum-exp), with non-finite tokens in the prefix of one sequence and
    in the chunk of the other: NaN exactly in the reference's rows, the rest within SPEC §10."""
    if not fused.available():
        pytest.skip("the fused CPU kernels do not build here")
    fmt = tqf.LayerFormat(tqf.get_preset(preset), 64)
    rng = np.random.default_rng(11)
    lens, bs = (150, 70), 16
    nb, bt, sm = paged_layout(rng, lens, bs, spare=1)
    k = rng.standard_normal((sm.size, 2, 64)).astype(np.float32)
    v = rng.standard_normal((sm.size, 2, 64)).astype(np.float32)
    (k if tensor == "key" else v)[100, 1, 3] = np.nan  # sequence 0, position 100 (chunk), KV head 1
    (k if tensor == "key" else v)[150 + 10, 0, 0] = np.inf  # sequence 1, position 10 (prefix), KV head 0
    cache = ref.new_cache(fmt, nb, bs, 2)
    ref.store(cache, k, v, sm, fmt)
    qsl = np.array([0, rows[0], rows[0] + rows[1]], np.int32)
    q = rng.standard_normal((qsl[-1], 4, 64)).astype(np.float32)
    q = torch.from_numpy(q).to(dtype).float().numpy()
    want = ref.paged_attention(q, cache, bt, np.asarray(lens, np.int32), fmt, query_start_loc=qsl)
    got = fused.paged_attention(torch.from_numpy(q).to(dtype), torch.from_numpy(cache), torch.from_numpy(bt),
                                torch.from_numpy(np.asarray(lens, np.int32)), torch.from_numpy(qsl),
                                TorchParams.build(fmt)).float().numpy()
    nan_rows = np.isnan(want).any(-1)
    assert nan_rows.any() and not nan_rows.all()
    assert not nan_rows[:rows[0] - 50].any() and nan_rows[rows[0] - 50:rows[0]].any()  # seq 0: rows before 100
    assert np.array_equal(np.isnan(got), np.isnan(want))
    tol = tqf.ATTN_RTOL_FP32 if dtype == torch.float32 else tqf.ATTN_RTOL_HALF
    assert rel_err(got, want) <= tol


def test_portable_build_passes_the_same_checks():
    """The code without -march=native (baseline ISA: no AVX2 / AVX-512 paths, as on other CPUs) in a
    fresh process (one process cannot load two builds of the same op namespace)."""
    import os
    import subprocess
    import sys

    if not fused.available():
        pytest.skip("the fused CPU kernels do not build here")
    here = os.path.dirname(os.path.abspath(__file__))
    code = ("import sys, pytest\nfrom turboquant.torch_impl import cpp\ncpp.ARCH_FLAGS = ([],)\n"
            f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', {os.path.join(here, 'test_cpu_kernels.py')!r}, "
            "'-k', 'partial_code_groups or long_decode or dense_prefill']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]


def test_import_and_calls_under_a_bfloat16_default_dtype():
    """vLLM sets the model's dtype as torch's default before the plugin is imported: no tensor the
    kernels read may follow it (an absent argument once came out bfloat16 and was refused)."""
    import importlib

    if not fused.available():
        pytest.skip("the fused CPU kernels do not build here")
    fmt = tqf.LayerFormat(tqf.get_preset("tq3"), 64, layer=6)
    g = torch.Generator().manual_seed(2)
    k, v = torch.randn(40, 2, 64, generator=g), torch.randn(40, 2, 64, generator=g)
    q = torch.randn(2, 4, 64, generator=g).to(torch.bfloat16)
    bt, sl = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32), torch.tensor([20, 17], dtype=torch.int32)
    want = torch.zeros(fmt.cache_shape(4, 10, 2), dtype=torch.uint8)
    store.store_kv(k, v, want, torch.arange(40), TorchParams.build(fmt))
    torch.set_default_dtype(torch.bfloat16)
    try:
        mod = importlib.reload(fused)
        got = torch.zeros_like(want)
        mod.store_kv(k, v, got, torch.arange(40), TorchParams.build(fmt))
        out = mod.decode_attention(q, got, bt, sl, TorchParams.build(fmt))
    finally:
        torch.set_default_dtype(torch.float32)
        importlib.reload(fused)
    codes = ~torch.from_numpy(float_field_mask(fmt))  # norms may differ by an ulp (SPEC §10)
    assert torch.equal(got[..., codes], want[..., codes])
    ref_out = attention.decode_attention(q, want, bt, sl, TorchParams.build(fmt))
    assert rel_err(out.float().numpy(), ref_out.float().numpy()) <= tqf.ATTN_RTOL_HALF

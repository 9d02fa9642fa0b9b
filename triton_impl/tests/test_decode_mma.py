"""The mma decode kernel (decode_mma.py) against the split kernel (attn_core, the second oracle)
and the reference.  The kernel is Gluon and needs a CUDA GPU; on the CPU only its host side is
tested (which launches it serves, the pair tables, argument errors)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
import triton

from turboquant import format as tqf
from turboquant import reference as ref
from turboquant.conformance.cases import paged_layout, round_to
from turboquant.conformance.compare import rel_err
from turboquant.triton_impl import AttnConfig, KernelParams, decode_attention
from turboquant.triton_impl.attn_core import acc_width
from turboquant.triton_impl.decode_mma import mma_decode_unsupported
from turboquant.triton_impl.launch import default_config, run_merge
from turboquant.triton_impl.merge import merge_splits
from turboquant.triton_impl.params import pair_table

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
GPU = pytest.mark.skipif(DEV.type != "cuda", reason="the mma decode kernel is Gluon: CUDA only")
MMA_PRESETS = ["tq3", "k4v3", "tq4", "tq3_hadamard"]


def _params(preset, d=128):
    return KernelParams.build(tqf.LayerFormat(tqf.get_preset(preset), d, layer=1), DEV)


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x)).to(DEV)


def _decode_case(preset, seq_lens, h=2, g=4, bs=16, seed=0, key_scale=1.3, value_scale=1.0, nan_token=None,
                 zero_tokens=()):
    """A cache written by the reference, one bf16 query row per sequence, the reference's output."""
    fmt = tqf.LayerFormat(tqf.get_preset(preset), 128, layer=1)
    rng = np.random.default_rng(seed)
    nb, bt, slots = paged_layout(rng, seq_lens, bs, spare=2)
    key = round_to(rng.standard_normal((slots.size, h, 128)) * key_scale, "bfloat16")
    value = round_to(rng.standard_normal((slots.size, h, 128)) * value_scale, "bfloat16")
    for t in zero_tokens:
        key[t] = 0.0
        value[t] = 0.0
    if nan_token is not None:
        key[nan_token, 0, 3] = np.nan
    cache = ref.new_cache(fmt, nb, bs, h)
    ref.store(cache, key, value, slots, fmt)
    q = round_to(rng.standard_normal((len(seq_lens), h * g, 128)) * 1.5, "bfloat16")
    sl = np.asarray(seq_lens, np.int32)
    qsl = np.arange(len(seq_lens) + 1, dtype=np.int32)
    want = ref.paged_attention(q, cache, bt, sl, fmt, qsl) if nan_token is None else None
    args = (_t(q).to(torch.bfloat16), _t(cache), _t(bt), _t(sl), KernelParams.build(fmt, DEV))
    return args, want


def _run(args, kernel, **kw):
    cfg = dataclasses.replace(default_config(DEV), decode_kernel=kernel)
    return decode_attention(*args, config=cfg, **kw).float().cpu().numpy()


# --- host side (every machine) ---------------------------------------------------------------------

def test_pair_table_holds_two_fp16_centroids():
    c = np.linspace(-0.3, 0.3, 8)
    t = pair_table(c).view(np.uint32)
    h = c.astype(np.float16)
    for a, b in [(0, 0), (3, 5), (7, 1), (6, 7)]:
        w = t[a | b << 3]
        assert np.uint16(w & 0xFFFF).view(np.float16) == h[a]
        assert np.uint16(w >> 16).view(np.float16) == h[b]


def test_decode_kernel_option_is_checked():
    with pytest.raises(ValueError, match="decode_kernel='fast'.*allowed values"):
        AttnConfig(decode_kernel="fast")


@pytest.mark.parametrize("preset,d,dtype,hq,hkv,bs,why", [
    ("tq3_qjl", 128, torch.bfloat16, 32, 8, 16, "one mse key instance"),
    ("tq3.5", 128, torch.bfloat16, 32, 8, 16, "one mse key instance"),
    ("k4g4", 128, torch.bfloat16, 32, 8, 16, "one mse key instance"),
    ("tq3", 64, torch.bfloat16, 32, 8, 16, "head size 64"),
    ("tq2", 128, torch.bfloat16, 32, 8, 16, "key/value bits 2/2"),
    ("tq3", 128, torch.float32, 32, 8, 16, "query dtype"),
    ("tq3", 128, torch.bfloat16, 64, 4, 16, "GQA group of 16"),
    ("tq3", 128, torch.bfloat16, 32, 8, 8, "block_size 8"),
])
def test_unsupported_launches_name_the_reason(preset, d, dtype, hq, hkv, bs, why):
    assert why in mma_decode_unsupported(_params(preset, d), dtype, DEV, hq, hkv, bs)


def test_rocm_devices_take_the_split_kernel(monkeypatch):
    """The mma kernel is NVIDIA's (mma.sync, ld.shared and prmt in inline PTX): a ROCm build of torch, whose
    devices also report a compute capability, gets the reason instead of a compile error at launch."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # (the interpreter's reason comes first)
    monkeypatch.setattr(torch.version, "hip", "6.2.0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 4))
    why = mma_decode_unsupported(_params("tq3"), torch.bfloat16, torch.device("cuda"), 32, 8, 16)
    assert "needs an NVIDIA GPU" in why and "ROCm" in why


def test_supported_launch_on_this_machine():
    why = mma_decode_unsupported(_params("tq3"), torch.bfloat16, DEV, 32, 8, 16)
    if DEV.type == "cuda" and torch.cuda.get_device_capability() >= (8, 0):
        assert why is None
    else:
        assert "CUDA" in why


def _partial_states(dacc: int, n_rows: int, num_splits: int):
    """(part_acc [n_rows * S, dacc], part_ml [n_rows * S, 2]) of a split decode: random states, 30 % of the
    splits empty (m = -inf, l = 0, acc = 0), and row 0 with every split empty (it saw nothing)."""
    gen = torch.Generator().manual_seed(num_splits)
    rows = n_rows * num_splits
    acc = torch.randn((rows, dacc), generator=gen).to(DEV)
    ml = torch.stack([torch.randn(rows, generator=gen) * 3, torch.rand(rows, generator=gen) + 0.5], 1).to(DEV)
    empty = torch.rand(rows, generator=gen) < 0.3
    empty[: num_splits] = True  # row 0 saw nothing
    ml[empty.to(DEV), 0] = float("-inf")
    ml[empty.to(DEV), 1] = 0.0
    acc[empty.to(DEV)] = 0.0
    return acc, ml


@pytest.mark.parametrize("preset,d,num_splits,rows_per_program", [
    ("tq3", 128, 1, None), ("tq3", 128, 37, None), ("tq3.5", 128, 5, None), ("k4g4", 128, 20, None),
    ("tq2.5", 64, 3, None), ("tq3", 80, 2, None),
    # the launch shapes of few rows and many splits (one long sequence): 1 row x 256 splits a step, ...
    ("tq3", 128, 300, 1), ("tq3", 128, 37, 2), ("k4g4", 128, 70, 4), ("tq3", 80, 5, 8)])
def test_parallel_merge_matches_the_split_kernels_merge(preset, d, num_splits, rows_per_program):
    """merge.merge_splits (the mma path's merge) against attn_core._merge_kernel on the same partial
    states, with empty splits (m = -inf) and a row that saw nothing (all weights 0: output 0), for
    each launch shape plan_merge can choose."""
    params = _params(preset, d)  # accumulator widths 128, 128 (64 + 64), 128, 80 (16 + 64), 128 (80 padded)
    t, hq = 3, 8
    dacc = acc_width(params)
    acc, ml = _partial_states(dacc, t * hq, num_splits)
    want = run_merge(acc, ml, torch.empty((t, hq, d), device=DEV), params, num_q_heads=hq,
                     num_splits=num_splits, cfg=default_config(DEV))
    got = merge_splits(acc, ml, torch.empty((t, hq, d), device=DEV), params, num_q_heads=hq,
                       num_splits=num_splits, rows_per_program=rows_per_program)
    assert (got[0, 0] == 0).all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("preset,d,num_splits", [("tq3", 128, 1), ("tq3", 128, 300), ("k4v3", 128, 37),
                                                 ("tq3", 64, 5), ("tq3", 80, 5), ("k4g4", 128, 20),
                                                 ("tq2.5", 64, 3)])
@pytest.mark.parametrize("sms", [1, 1000])  # MERGE_ROTATE_ROWS rows a program, and one
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_output_rotation_matches_the_two_launches(monkeypatch, preset, d, num_splits, sms, dtype):
    """mma_output_rotation="fused" (the inverse rotation in the merge's programs, merge._merge_rotate_kernel)
    against the merge then the columns kernel's fp32 FMA, on the same partial states with empty splits and a
    row that saw nothing, an instance padded in the accumulator (d = 80: 80 of 128 columns); formats it does
    not cover (two value instances: tq2.5; group values: k4g4) take the two launches."""
    from turboquant.triton_impl import merge as mg

    monkeypatch.setattr(mg, "sm_count", lambda dev: sms)
    params = _params(preset, d)
    t, hq = 5, 8
    dacc = acc_width(params)
    acc, ml = _partial_states(dacc, t * hq, num_splits)
    launches = []
    monkeypatch.setattr(mg, "_merge_rotate_kernel", _Spy(mg._merge_rotate_kernel, launches))
    want = merge_splits(acc, ml, torch.empty((t, hq, d), device=DEV, dtype=dtype), params, num_q_heads=hq,
                        num_splits=num_splits)
    assert not launches
    got = merge_splits(acc, ml, torch.empty((t, hq, d), device=DEV, dtype=dtype), params, num_q_heads=hq,
                       num_splits=num_splits, output_rotation="fused")
    assert len(launches) == int(mg.merge_rotate_applies(params))
    assert mg.merge_rotate_applies(params) == (preset in ("tq3", "k4v3"))
    if launches:
        br, _, _, _ = mg.plan_merge_rotate(t * hq, num_splits, dacc, sms)
        assert launches[0] == triton.cdiv(t * hq, br) and br == (mg.MERGE_ROTATE_ROWS if sms == 1 else 1)
    assert (got[0, 0] == 0).all()
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


class _Spy:
    """Records a kernel's grid (its first dimension), then launches it."""

    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        self.launches.append(grid[0])
        return self.kernel[grid]



def test_fused_output_rotation_is_an_attnconfig_choice():
    from turboquant.triton_impl.decode import mma_options

    cfg = AttnConfig(mma_output_rotation="fused")
    assert mma_options(cfg)["output_rotation"] == "fused"
    with pytest.raises(ValueError, match=r"mma_output_rotation='tc' is not supported; allowed values: "
                                         r"\['fma', 'bf16x3', 'fused'\]"):
        AttnConfig(mma_output_rotation="tc")


def test_merge_plan_fills_the_card_and_shortens_the_chain():
    from turboquant.triton_impl.merge import MERGE_ROWS, plan_merge

    # 1 x 128k on 132 SMs: 32 rows x 256 splits -> one row a program (128 programs), every split in one step
    assert plan_merge(32, 256, 4, 132) == (1, 256)
    # 32 x 32k: 1,024 rows x 17 splits -> 16 rows a program already fill a wave (256 programs)
    assert plan_merge(1024, 17, 4, 132) == (16, 16)
    # 8 x 32k: 256 rows x 66 splits -> 4 rows a program (256 programs), 64 splits a step (the widest for 4 rows)
    assert plan_merge(256, 66, 4, 132) == (4, 64)
    # plenty of rows: the widest program; few splits: the smallest step
    assert plan_merge(1 << 16, 4, 4, 132) == (MERGE_ROWS, 16)
    assert plan_merge(64, 1000, 4, 1) == (MERGE_ROWS, 16)  # the CPU interpreter: one "SM"
    assert plan_merge(40, 50, 4, 132, rows_per_program=2) == (2, 64)
    for bad in (0, 3, 32, -1):
        with pytest.raises(ValueError, match=rf"rows_per_program={bad} is not supported; allowed values: powers of "
                                             r"two 1 to 16"):
            plan_merge(8, 8, 4, 132, rows_per_program=bad)


@pytest.mark.parametrize("error", ["compile", "attribute"])
def test_a_kernel_that_does_not_compile_falls_back_in_auto_mode(monkeypatch, error):
    """A Triton whose Gluon API the kernel does not know (a compile error, or a missing function met
    while the JIT resolves the source): "auto" warns once and takes the split kernel from then on; an
    explicit decode_kernel='mma' raises."""
    import ast

    from triton.compiler.errors import CompilationError

    from turboquant.triton_impl import decode as decode_mod

    calls = []
    exc = CompilationError(None, ast.Name(), "no such Gluon function") if error == "compile" else \
        AttributeError("module 'async_copy' has no attribute 'async_load'")

    def broken(*a, **k):
        calls.append(1)
        raise exc

    monkeypatch.setattr(decode_mod, "mma_decode_unsupported", lambda *a, **k: None)
    monkeypatch.setattr(decode_mod, "decode_attention_mma", broken)
    monkeypatch.setattr(decode_mod, "_MMA_COMPILE_ERROR", [])
    args, _ = _decode_case("tq3", (20, 5))
    with pytest.warns(RuntimeWarning, match="the mma kernel does not compile with Triton"):
        got = _run(args, "auto")
    np.testing.assert_array_equal(got, _run(args, "split"))
    np.testing.assert_array_equal(_run(args, "auto"), got)  # no second try, no second warning
    assert len(calls) == 1
    with pytest.raises(type(exc)):
        _run(args, "mma")


@pytest.mark.skipif(DEV.type == "cuda", reason="on a GPU the mma kernel serves this call")
def test_asking_for_the_mma_kernel_where_it_cannot_run_is_an_error():
    args, _ = _decode_case("tq3", (20, 5))
    with pytest.raises(ValueError, match="decode_kernel='mma' cannot serve this call"):
        _run(args, "mma")


def test_a_ring_too_small_for_two_tiles_is_refused():
    """mma_ring_bytes must hold two tiles of the preset (tq4: 16 slots x 136 B -> 4 KB stages)."""
    from turboquant.triton_impl.decode_mma import decode_attention_mma
    from turboquant.triton_impl.query import rotate_query

    (q, cache, bt, sl, p), _ = _decode_case("tq4", (20, 5))
    for ring, tiles in ((4096, 1), (16384, 4)):  # too small; not a power of two with the tables
        with pytest.raises(ValueError, match=rf"mma_ring_bytes={ring} holds {tiles} tile\(s\) of 4096 bytes \(tq4\); "
                                             r"allowed values: \[8192, 24576, 57344\]"):
            decode_attention_mma(rotate_query(q, p), cache, bt, sl, torch.empty_like(q), p, num_q_heads=q.shape[1],
                                 sm_scale=0.1, num_splits=1, ring_bytes=ring)
    for bad in (1000, 2048, 12288, 1 << 17, True):  # (16384: the byte-permute layout's alone, checked below)
        with pytest.raises(ValueError, match=rf"mma_ring_bytes={bad!r} is not supported; allowed values: "
                                             r"\[4096, 8192, 24576, 57344\]"):
            AttnConfig(mma_ring_bytes=bad)
    assert AttnConfig(mma_ring_bytes=4096).mma_ring_bytes == 4096  # two tiles of tq3 / k4v3 (a second allocation)


@pytest.mark.parametrize("preset,same", [("tq3", True), ("tq4", True), ("k4v3", False)])
def test_one_pair_table_serves_keys_and_values_where_their_codebooks_coincide(preset, same):
    p = KernelParams.build(tqf.LayerFormat(tqf.get_preset(preset), 128), "cpu")
    assert p.meta["KV_PAIR_SAME"] is same
    assert torch.equal(p.k_pair[0], p.v_pair[0]) is same


def test_two_tiles_a_step_need_an_even_ring_of_four_tiles():
    """tq4's 4 KB tiles: the default 8 KB ring holds two (one tile a step only); 24 KB holds six."""
    from turboquant.triton_impl.decode_mma import decode_attention_mma
    from turboquant.triton_impl.query import rotate_query

    (q, cache, bt, sl, p), _ = _decode_case("tq4", (20, 5))
    with pytest.raises(ValueError, match=r"mma_step_tiles=2 is not supported with mma_ring_bytes=8192 \(2 tiles of "
                                         r"tq4\); allowed values: \[0, 1\]"):
        decode_attention_mma(rotate_query(q, p), cache, bt, sl, torch.empty_like(q), p, num_q_heads=q.shape[1],
                             sm_scale=0.1, num_splits=1, step_tiles=2)


@pytest.mark.parametrize("preset,table,shared,allowed", [("tq3", "single", True, "['auto', 'pair']"),
                                                         ("tq3", "single", False, "['auto', 'pair']"),
                                                         ("tq3", "prmt", True, "['auto', 'pair']"),
                                                         ("tq3", "prmt", False, "['auto', 'pair']")])
def test_single_code_key_table_needs_4_bit_keys(preset, table, shared, allowed):
    """mma_key_table='single': 4-bit keys (k4v3, tq4); 'prmt': 4-bit keys of a symmetric codebook; both take the
    single-code layout (the values' table their own, whatever mma_shared_table says: resolve_key_table);
    refused with the allowed values otherwise, before any launch."""
    from turboquant.triton_impl.decode_mma import decode_attention_mma, resolve_key_table
    from turboquant.triton_impl.query import rotate_query

    for ok_preset, ok_table in (("tq4", "single"), ("k4v3", "single"), ("tq4", "prmt")):
        assert resolve_key_table(_params(ok_preset, 128), ok_table, shared) == (ok_table, False)
    (q, cache, bt, sl, p), _ = _decode_case(preset, (20, 5))
    with pytest.raises(ValueError, match=rf"mma_key_table='{table}' is not supported for {preset}; allowed "
                                         rf"values: {re.escape(allowed)}"):
        decode_attention_mma(rotate_query(q, p), cache, bt, sl, torch.empty_like(q), p, num_q_heads=q.shape[1],
                             sm_scale=0.1, num_splits=1, shared_table=shared, key_table=table)


@pytest.mark.parametrize("preset,table,kw,why", [
    ("tq3", "wide", {}, "got 3-bit keys, 3-bit values, mma_key_table='auto'"),
    ("tq4", "wide", {}, "got 4-bit keys, 4-bit values, mma_key_table='auto'"),
    ("k4v3", "wide", {"key_table": "pair", "shared_table": False}, "got 4-bit keys, 3-bit values, "
                                                                   "mma_key_table='pair'"),
    ("k4v3", "wide", {"ring_bytes": 8192}, "its ring is 6144 bytes .*: mma_ring_bytes=8192"),
    ("tq3", "single", {"ring_bytes": 8192}, "got 3-bit keys, 3-bit values, mma_key_table='auto'"),
    ("k4v3", "single", {"ring_bytes": 8192}, "got 4-bit keys, 3-bit values, mma_key_table='auto'"),
    ("tq4", "single", {"ring_bytes": 24576}, "its ring is the default 8192 bytes .*: mma_ring_bytes=24576"),
    # keys by byte permutes free the key table's 2 KB: the wide table's ring is then the default 8 KB (a 6 KB one
    # would make the allocation 14 KB, not a power of two)
    ("k4v3", "wide", {"key_table": "prmt"}, "its ring is 6144 bytes .* 8192 beside mma_key_table 'prmt' .*: "
                                            "mma_ring_bytes=6144"),
    ("tq3", "prmt", {"ring_bytes": 8192}, "got 3-bit keys, 3-bit values, mma_key_table='auto'"),
    ("k4v3", "prmt", {"ring_bytes": 8192, "key_table": "prmt"}, "got 4-bit keys, 3-bit values, mma_key_table='prmt'"),
    ("tq4", "prmt", {"ring_bytes": 8192}, "got 4-bit keys, 4-bit values, mma_key_table='auto'"),  # keys in a table
    ("tq4", "prmt", {"key_table": "prmt"}, "its ring is the default 8192 bytes .*: mma_ring_bytes=6144"),
])
def test_value_tables_name_their_presets_and_rings(preset, table, kw, why):
    """mma_value_table "wide" (k4v3: the 3-bit values' pair table with 32 copies beside the 4-bit keys'
    single-code table, a 6 KB ring) and "single" (tq4: values on the keys' single-code table, the default
    ring): refused with the reason and the allowed choices before any launch, elsewhere; the wide table's
    ring without it is refused too."""
    from turboquant.triton_impl.decode_mma import decode_attention_mma
    from turboquant.triton_impl.query import rotate_query

    (q, cache, bt, sl, p), _ = _decode_case(preset, (20, 5))
    args = (rotate_query(q, p), cache, bt, sl, torch.empty_like(q), p)
    with pytest.raises(ValueError, match=rf"mma_value_table='{table}' is not supported for {preset}: .*{why}; "
                                         r"allowed: 'wide' for k4v3 .* 'single' for tq4 .* 'pair' or 'auto' for any"):
        decode_attention_mma(*args, num_q_heads=q.shape[1], sm_scale=0.1, num_splits=1, value_table=table,
                             **{"ring_bytes": 6144, **kw})
    with pytest.raises(ValueError, match=r"mma_ring_bytes=6144 holds .* \(6144: with mma_value_table='wide'\)"):
        decode_attention_mma(*args, num_q_heads=q.shape[1], sm_scale=0.1, num_splits=1, ring_bytes=6144)
    for vt, ring, key in (("wide", 8192, "auto"), ("single", 6144, "auto"), ("auto", 6144, "auto"),
                          ("wide", 6144, "prmt"), ("auto", 6144, "prmt")):
        with pytest.raises(ValueError, match=rf"mma_value_table='{vt}' with mma_ring_bytes={ring} is not supported; "
                                             r"allowed: mma_value_table='wide' with mma_ring_bytes=6144 \(its "
                                             r"three-tile ring; 8192 with mma_key_table='prmt'\)"):
            AttnConfig(mma_value_table=vt, mma_ring_bytes=ring, mma_key_table=key)
    AttnConfig(mma_value_table="wide", mma_ring_bytes=8192, mma_key_table="prmt")  # allowed


def test_the_byte_permute_layout_takes_a_16kb_ring():
    """mma_value_table "prmt" (tq4: no table, the ring the kernel's only shared memory) takes the default 8 KB ring or
    16 KB (four of tq4's tiles, two a softmax step); 16 KB is refused for every other value table, "auto"
    included (it would resolve to the pair tables there), with the allowed combinations named."""
    from turboquant.triton_impl import decode_mma

    p = _params("tq4", 128)
    for ring in decode_mma.PRMT_RING_BYTES:
        AttnConfig(mma_value_table="prmt", mma_key_table="prmt", mma_ring_bytes=ring)
        assert decode_mma.value_table_unsupported(p, "prmt", ring, "prmt") is None
        assert decode_mma.mma_shared_bytes(p, ring, "prmt", "prmt") == ring
    assert decode_mma.ring_stages(p, 16384) == (1024, 4)  # four 4 KB stages: pairs fit
    assert "mma_ring_bytes=24576" in decode_mma.value_table_unsupported(p, "prmt", 24576, "prmt")
    for table in ("auto", "pair", "single"):
        with pytest.raises(ValueError, match=rf"mma_value_table='{table}' with mma_ring_bytes=16384 is not supported; "
                                             r"allowed: .* mma_value_table='prmt' with one of \[8192, 16384\]"):
            AttnConfig(mma_value_table=table, mma_ring_bytes=16384)
    with pytest.raises(ValueError, match=r"mma_value_table='prmt' with mma_ring_bytes=24576 is not supported; "
                                         r"allowed: .* mma_value_table='prmt' with one of \[8192, 16384\]"):
        AttnConfig(mma_value_table="prmt", mma_key_table="prmt", mma_ring_bytes=24576)
    with pytest.raises(ValueError, match=r"mma_ring_bytes=12288 is not supported; allowed values: .* or 16384 with "
                                         r"mma_value_table='prmt'"):
        AttnConfig(mma_value_table="prmt", mma_ring_bytes=12288)


@pytest.mark.parametrize("option,bad,allowed", [
    *[("mma_step_tiles", bad, r"\[0, 1, 2\]") for bad in (-1, 3, True, 2.0, "2")],
    *[("mma_key_table", bad, r"\['auto', 'pair', 'single', 'prmt'\]") for bad in ("pairs", "", None, 1)],
    *[("mma_query_rotation", bad, r"\['auto', 'fma', 'bf16x2'\]") for bad in ("bf16", "", None, 1)],
    *[("mma_split_rule", bad, r"\['fill', 'waves', 'rounds'\]") for bad in ("wave", "", None, 1)],
    *[("mma_shared_table", bad, "True, False") for bad in (0, 1, "yes", None)],
    *[("mma_page_ahead", bad, "True, False") for bad in (0, 1, "yes", None)],
    *[("mma_pdl", bad, "True, False") for bad in (0, 1, "yes", None)],
    *[("mma_value_table", bad, r"\['auto', 'pair', 'wide', 'single', 'prmt'\]") for bad in ("wider", "", None, 1)],
])
def test_mma_options_are_checked(option, bad, allowed):
    with pytest.raises(ValueError, match=rf"{option}={re.escape(repr(bad))} is not supported; allowed values: "
                                         rf"{allowed}"):
        AttnConfig(**{option: bad})


def _prmt(a, b, sel):
    """PTX prmt.b32 (default mode) on uint32 arrays: byte j of the result is byte (sel >> 4 j) & 7 of {b, a}
    (the selectors here never set a nibble's sign-replicate bit)."""
    assert not np.any(np.asarray(sel) & 0x8888)
    src = [(a >> (8 * k)) & 0xFF for k in range(4)] + [(b >> (8 * k)) & 0xFF for k in range(4)]
    out = np.zeros_like(a)
    for j in range(4):
        pick = (np.asarray(sel) >> (4 * j)) & 7
        out |= np.choose(pick, src) << (8 * j)
    return out


@pytest.mark.parametrize("preset", ["tq4", "k4v3"])
def test_prmt_key_decode_gives_the_single_code_pairs(preset):
    """mma_key_table "prmt" (decode_mma_operands._prmt_halves, _prmt_key_pairs), step by step on the CPU with its
    selectors and params.prmt_key_bytes: for every word of eight 4-bit codes, the four pair registers equal the
    pair table's entries (fp16 c[a] low, c[b] high) -- the words the single-code table gives, hence the same
    bits; and mma_value_table "prmt" (_prmt_value_pairs): code j of two tokens' words from their half2s.  The
    GPU kernel is the same sequence in Gluon (test_options_give_the_default_bits runs it)."""
    from turboquant.triton_impl import decode_mma_operands as dm

    p = KernelParams.build(tqf.LayerFormat(tqf.get_preset(preset), 128), "cpu")
    assert p.meta["K_PRMT"]
    ml0, ml1, mh0, mh1 = (np.uint32(x & 0xFFFFFFFF) for x in p.k_prmt.tolist())
    pairs = p.k_pair[0].numpy().view(np.uint32)  # params.pair_table of the key codebook: entry a | b << 4
    rng = np.random.default_rng(0)
    w = np.concatenate([rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32),
                        np.array([0, 0xFFFFFFFF, 0x88888888, 0x77777777, 0x0F0F0F0F], np.uint32)])
    neg = ~w & np.uint32(0x88888888)
    m = (w ^ ((neg >> 3) * np.uint32(7))) & np.uint32(0x77777777)
    halves = []
    for q in range(4):
        half = m if q < 2 else m >> 16
        lo = _prmt(np.full_like(w, ml0), np.full_like(w, ml1), half)
        hi = _prmt(np.full_like(w, mh0), np.full_like(w, mh1), half)
        sign = _prmt(neg, neg << 4, np.full_like(w, (dm.PRMT_SIGN_LO, dm.PRMT_SIGN_HI)[q // 2].value)) \
            & np.uint32(0x80808080)
        got = _prmt(lo, hi | sign, np.full_like(w, (dm.PRMT_PAIR_LO, dm.PRMT_PAIR_HI)[q % 2].value))
        a, b = (w >> (8 * q)) & 0xF, (w >> (8 * q + 4)) & 0xF  # the pair's two codes
        np.testing.assert_array_equal(got, pairs[a | (b << 4)])
        halves.append(got)
    # values (mma_value_table "prmt"): code j of token a and of token b from the two tokens' words' half2s
    wb = np.roll(w, 1)
    for j in range(8):
        xa, xb = halves[j // 2], np.roll(halves[j // 2], 1)  # the half2 of nibbles j & ~1, j | 1 of w and of wb
        sel = (dm.PRMT_LOW_HALVES if j % 2 == 0 else dm.PRMT_HIGH_HALVES).value
        got = _prmt(xa, xb, np.full_like(w, sel))
        np.testing.assert_array_equal(got, pairs[((w >> (4 * j)) & 0xF) | (((wb >> (4 * j)) & 0xF) << 4)])


@pytest.mark.parametrize("preset,ring,table", [("tq3", 4096, "pair"), ("tq4", 8192, "single")])
def test_a_second_allocation_is_verified_once_before_use(monkeypatch, preset, ring, table):
    """mma_ring_bytes=4096 (the ring in a second shared allocation, after the tables) and mma_value_table=
    "single" (the 2 KB table in a second allocation, after the ring) are read at addresses that assume where
    Triton placed them: before first use the same small decode runs with the layout and with the default one,
    and different bits raise (naming the fallback) instead of returning numbers; the same bits are remembered
    per configuration."""
    from turboquant.triton_impl import decode_mma

    calls = []

    def fake(qbuf, cache, bt, sl, out, params, *, ring_bytes, value_table, verify_ring, step_tiles, **kw):
        assert verify_ring is False and step_tiles == 1 and bt.shape == (1, 2) and out.shape == (1, 4, 128)
        assert cache.shape[:3] == (2, 1, 32) and kw["num_q_heads"] == 4 and qbuf.shape[0] == 4
        calls.append((ring_bytes, value_table))
        default = (ring_bytes, value_table) == (decode_mma.RING_BYTES, "pair")
        out.fill_(1.0 if default or same[0] else 2.0)
        return out

    monkeypatch.setattr(decode_mma, "decode_attention_mma", fake)
    monkeypatch.setattr(decode_mma, "_RING_VERIFIED", set())
    p = _params(preset, 128)
    same = [False]
    with pytest.raises(RuntimeError, match=rf"mma_ring_bytes={ring}, mma_value_table='{table}': the decode kernel's "
                                           r"second shared allocation is not where .* use mma_ring_bytes=8192 and "
                                           r"mma_value_table='pair'"):
        decode_mma._verify_ring_placement(p, torch.device("cpu"), 120, ring, False, "auto", group=4, block_size=32,
                                          value_table=table)
    assert calls == [(ring, table), (8192, "pair")]
    same[0] = True
    for _ in range(2):
        decode_mma._verify_ring_placement(p, torch.device("cpu"), 120, ring, False, "auto", group=4, block_size=32,
                                          value_table=table)
    assert calls == [(ring, table), (8192, "pair")] * 2  # verified once, then remembered


def test_auto_single_table_is_checked_once_outside_capture_and_falls_back_to_pairs(monkeypatch):
    """tq4's default value table ("single", a second shared allocation): its placement is checked on the first
    launch outside a CUDA-graph capture and remembered; a capture before that, or a failed check (warned
    once, remembered), gives the pair tables with the ring and register cap the launch was given."""
    from turboquant.triton_impl import decode_mma

    checks = []
    verdict = ["pass"]

    def fake_verify(params, device, maxnreg, ring_bytes, shared_table, key_table, *, group, block_size, value_table):
        checks.append((maxnreg, ring_bytes, shared_table, key_table, group, block_size, value_table))
        if verdict[0] == "fail":
            raise RuntimeError("misplaced")
        decode_mma._RING_VERIFIED.add(decode_mma._placement_key(params, device, maxnreg, ring_bytes, shared_table,
                                                                key_table, group, block_size, value_table))

    monkeypatch.setattr(decode_mma, "_verify_ring_placement", fake_verify)
    monkeypatch.setattr(decode_mma, "_RING_VERIFIED", set())
    monkeypatch.setattr(decode_mma, "_PLACEMENT_FAILED", set())
    capturing = [False]
    monkeypatch.setattr(decode_mma.torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    p, cuda = _params("tq4", 128), torch.device("cuda", 0)

    def launch(value_table="auto", block_size=16, verify=True):
        return decode_mma._launch_value_table(p, cuda, value_table, 8192, 128, False, "single", 0, group=4,
                                              block_size=block_size, verify=verify)

    capturing[0] = True
    assert launch() == ("pair", 8192, 128) and checks == []  # no check inside a capture
    capturing[0] = False
    assert launch() == ("single", 8192, 144)
    assert checks == [(144, 8192, False, "single", 4, 16, "single")]
    capturing[0] = True
    assert launch() == ("single", 8192, 144) and len(checks) == 1  # checked: the capture uses it too
    assert launch(verify=False) == ("single", 8192, 144)
    assert launch("pair") == ("pair", 8192, 128) and len(checks) == 1  # explicit choices are not touched here
    capturing[0] = False
    verdict[0] = "fail"
    with pytest.warns(RuntimeWarning, match="misplaced; mma_value_table='auto' keeps the pair tables for tq4"):
        assert launch(block_size=32) == ("pair", 8192, 128)
    assert launch(block_size=32) == ("pair", 8192, 128) and len(checks) == 2  # the failure is remembered
    # the same check at engine start (the vLLM backend's bind), with the single-code key table ("auto" keys are
    # byte permutes, whose value layout needs no check)
    verdict[0] = "pass"
    assert decode_mma.prepare_decode_layout(p, cuda, group=4, block_size=64, key_table="single") == "single"
    assert len(checks) == 3
    assert decode_mma.prepare_decode_layout(p, cuda, group=4, block_size=64) == "prmt" and len(checks) == 3
    assert decode_mma.prepare_decode_layout(p, cuda, group=4, block_size=64, value_table="pair") == "pair"
    assert decode_mma.prepare_decode_layout(_params("tq3", 128), cuda, group=4, block_size=64) == "pair"
    assert len(checks) == 3


def test_prepare_decode_runs_the_check_only_where_the_mma_kernel_serves(monkeypatch):
    """decode.prepare_decode (called by the vLLM backend when it binds a layer): the layout check of the mma
    kernel with the layer's GQA group, page size and AttnConfig, and nothing where the mma kernel does not
    serve the layer (batch-invariant mode, decode_kernel='split', an unsupported launch) or does not compile."""
    from triton.compiler.errors import CompilationError

    from turboquant.triton_impl import decode

    calls = []
    monkeypatch.setattr(decode, "prepare_decode_layout", lambda params, device, **kw: calls.append(kw))
    why = [None]
    monkeypatch.setattr(decode, "mma_decode_unsupported", lambda *a: why[0])
    p, cuda = _params("tq4", 128), torch.device("cuda", 0)
    cfg = default_config(torch.device("cpu"))
    decode.prepare_decode(p, cuda, num_q_heads=32, num_kv_heads=8, block_size=16, config=cfg)
    assert len(calls) == 1 and calls[0]["group"] == 4 and calls[0]["block_size"] == 16
    assert calls[0]["value_table"] == "auto" and calls[0]["maxnreg"] == cfg.mma_maxnreg
    for other in (dataclasses.replace(cfg, batch_invariant=True), dataclasses.replace(cfg, decode_kernel="split")):
        decode.prepare_decode(p, cuda, num_q_heads=32, num_kv_heads=8, block_size=16, config=other)
    why[0] = "head size 64 (only 128)"
    decode.prepare_decode(p, cuda, num_q_heads=32, num_kv_heads=8, block_size=16, config=cfg)
    assert len(calls) == 1
    why[0] = None

    def broken(params, device, **kw):
        raise CompilationError("", None, "")

    monkeypatch.setattr(decode, "prepare_decode_layout", broken)
    decode.prepare_decode(p, cuda, num_q_heads=32, num_kv_heads=8, block_size=16, config=cfg)  # left to decode


@pytest.mark.parametrize("splits,rows,cap,want", [
    (256, 8, 256, 214),  # 1 x 128k on an H200: 2,048 programs for 1,716 slots -> one whole wave
    (66, 64, 128, 53),  # 8 x 32k: 2.46 waves -> 2
    (17, 256, 128, 20),  # 32 x 32k: 2.54 waves -> 3
    (4, 512, 4, 3),  # 64 x 1k: 1.19 waves -> 1
    (32, 8, 32, 32),  # 256 programs: inside one wave, unchanged
    (17, 256, 18, 13),  # 3 waves would need 20 splits, more than the cap: the whole waves below
    (2, 1000, 2, 1),  # two splits of 1,000 rows: 1.17 waves -> one wave, one split
])
def test_whole_wave_splits(splits, rows, cap, want):
    """mma_split_rule="waves": the split count moves to the nearest whole number of waves of resident
    programs (13 an SM x 132 SMs here), within the cap, at least 1."""
    from turboquant.triton_impl.decode_mma import whole_wave_splits

    assert whole_wave_splits(splits, rows, 13, 132, cap) == want


@pytest.mark.parametrize("rows,max_kv,cap,want", [
    (256, 32768, 128, 12),  # 32 x 32k: 3,072 programs, 6 a scheduler (6 splits, cheaper by the model: 342 tiles)
    (64, 32768, 128, 24),  # 8 x 32k: 1,536 programs, 3 a scheduler (33 splits: 4, the fourth alone)
    (8, 131072, 256, 196),  # 1 x 128k: 1,568 programs, 3 a scheduler (256 splits: 4 of 32 tiles)
    (512, 1024, 4, 3),  # 64 x 1k: 1,536 programs, 3 a scheduler
    (8, 32768, 128, 128),  # 1 x 32k: 1,024 programs at the cap, 2 a scheduler
    (2048, 6144, 24, 3),  # 256 x 6k: 6,144 programs, 12 a scheduler (1 split: 4, the fourth alone)
    (1024, 2048, 8, 3),  # 128 x 2k: 3,072 programs, 6 a scheduler
    (8, 100, 1, 1),  # a cap of one split
    (8, 2_000_000, 256, 256),  # 1 x 2M: every count within the cap reads more than 256 tiles: the cap
    (8, 0, 4, 1),  # no tokens (an empty block table): one split
])
def test_scheduler_round_splits(rows, max_kv, cap, want):
    """mma_split_rule="rounds" (132 SMs, 12 programs an SM: 3 a scheduler): the split count whose busiest
    scheduler runs its whole rounds of 3 programs and its last, partial round (1 or 2 programs, each at
    ROUND_PARTIAL_EFFICIENCY of the full rate) in the fewest tiles, counting ROUND_FIXED_TILES a program, among
    the counts whose programs read at most ROUND_MAX_TILES tiles (the cap alone where none does); never more than
    the cap, and never costlier than the fill rule's count by its own measure where that count is a candidate."""
    import math

    from turboquant.triton_impl.decode_mma import (
        ROUND_FIXED_TILES,
        ROUND_MAX_TILES,
        ROUND_PARTIAL_EFFICIENCY,
        scheduler_round_splits,
    )

    def busiest(s):  # what the rule minimizes, written out
        programs = math.ceil(rows * s / (4 * 132))
        tiles = math.ceil(math.ceil(max_kv / s) / 16) + ROUND_FIXED_TILES
        partial = programs % 3
        return tiles * (3 * (programs // 3) + (partial / ROUND_PARTIAL_EFFICIENCY[partial - 1] if partial else 0))

    candidates = [s for s in range(1, cap + 1) if math.ceil(math.ceil(max_kv / s) / 16) <= ROUND_MAX_TILES]
    candidates = candidates or [cap]
    got = scheduler_round_splits(rows, max_kv, 12, 132, cap)
    assert got == want and got in candidates
    fill = max(1, min(math.ceil(32 * 132 / rows), cap))
    assert fill not in candidates or busiest(got) <= busiest(fill)
    assert all(busiest(got) <= busiest(s) for s in candidates)


def test_resident_blocks_and_the_mma_kernels_shared_memory(monkeypatch):
    """Occupancy from shared memory, registers and warp slots (the H200's figures: 233,472 bytes and 64
    warps an SM), and the mma kernel's allocation (tables + ring) that sets it: 13 one-warp programs of
    16 KB at the 128-register cap, 16 by registers alone; registers count per sub-partition (CUDA's
    occupancy rule: 16,384 registers each, a warp's rounded up to 256), so 144 and 152 registers a thread
    hold 3 warps a sub-partition, 12 an SM, where 65,536 / (32 x 152) would say 13."""
    from types import SimpleNamespace

    from turboquant.triton_impl import decode_mma, device
    from turboquant.triton_impl.decode import decode_splits

    for preset in ("tq3", "k4v3", "tq4"):
        assert decode_mma.mma_shared_bytes(_params(preset, 128), decode_mma.RING_BYTES) == 16384
    assert decode_mma.mma_shared_bytes(_params("tq4", 128), 24576) == 32768
    props = SimpleNamespace(shared_memory_per_multiprocessor=233472, max_threads_per_multi_processor=2048,
                            warp_size=32)
    monkeypatch.setattr(device.torch.cuda, "get_device_properties", lambda idx: props)
    monkeypatch.setattr(device, "_SMEM_PER_SM", {})
    cuda = torch.device("cuda", 0)
    assert device.resident_blocks(cuda, 16384, 1, 128) == 13
    assert device.resident_blocks(cuda, 4096, 1, 128) == 16  # registers: 65,536 / (32 x 128)
    assert device.resident_blocks(cuda, 0, 1, 32) == 32  # the block limit
    assert device.resident_blocks(cuda, 0, 4, 0) == 2  # uncapped counts as 255 registers
    assert device.resident_blocks(cuda, 0, 1, 152) == 12  # 4,864 registers a warp: 3 a sub-partition
    assert device.resident_blocks(cuda, 0, 1, 124) == 16  # 3,968 -> 4,096 a warp: 4 a sub-partition
    assert device.resident_blocks(cuda, 0, 4, 168) == 3  # store_wg: 5,376 a warp, 12 warps, 3 of 4-warp blocks
    assert device.resident_blocks(cuda, 0, 3, 128) == 5  # 16 warps an SM hold 5 blocks of 3
    assert device.resident_blocks(cuda, 300_000, 1, 128) == 1
    assert device.resident_blocks(torch.device("cpu"), 16384, 1, 128) == 1
    # decode_splits: the fill rule, then the waves rule from that occupancy (132 SMs)
    monkeypatch.setattr("turboquant.triton_impl.decode.sm_count", lambda d: 132)
    monkeypatch.setattr("turboquant.triton_impl.launch.sm_count", lambda d: 132)
    p = _params("tq3", 128)
    assert default_config(torch.device("cpu")).mma_split_rule == "rounds"  # the default since the twenty-fifth session
    waves = dataclasses.replace(default_config(torch.device("cpu")), mma_split_rule="waves")
    fill = dataclasses.replace(waves, mma_split_rule="fill")
    assert decode_splits(p, fill, 8, 131072, cuda, mma=True) == 256
    assert decode_splits(p, waves, 8, 131072, cuda, mma=True) == 198  # 12 an SM (152 registers): 1,584
    assert decode_splits(p, waves, 8, 131072, cuda, mma=False) == decode_splits(p, fill, 8, 131072, cuda, mma=False)
    rounds = dataclasses.replace(fill, mma_split_rule="rounds")
    assert decode_splits(p, rounds, 8, 131072, cuda, mma=True) == 196  # scheduler_round_splits at 12 an SM
    assert decode_splits(p, rounds, 8, 131072, cuda, mma=False) == decode_splits(p, fill, 8, 131072, cuda, mma=False)
    assert decode_splits(p, dataclasses.replace(rounds, batch_invariant=True), 8, 131072, cuda, mma=True) == 1
    # tq4's "single" value table (10 KB at a 144-register cap): 12 programs an SM by registers
    p4 = _params("tq4", 128)
    assert decode_mma.mma_shared_bytes(p4, decode_mma.RING_BYTES, "single") == 10240
    # k4v3's wide value table beside keys by byte permutes: no key table, the default ring
    assert decode_mma.mma_shared_bytes(_params("k4v3", 128), decode_mma.RING_BYTES, "wide", "prmt") == 16384
    assert device.resident_blocks(cuda, 10240, 1, 144) == 12
    single = dataclasses.replace(waves, mma_key_table="single")
    assert decode_splits(p4, single, 8, 131072, cuda, mma=True) == decode_mma.whole_wave_splits(256, 8, 12, 132, 256)
    # tq4's default: keys and values by byte permutes, the 8 KB ring only, at a 152-register cap: 12 by registers
    assert device.resident_blocks(cuda, 8192, 1, 152) == 12
    assert decode_splits(p4, waves, 8, 131072, cuda, mma=True) == decode_mma.whole_wave_splits(256, 8, 12, 132, 256)
    assert decode_splits(p4, dataclasses.replace(waves, mma_value_table="pair"), 8, 131072, cuda, mma=True) == 198


@GPU
@pytest.mark.parametrize("preset", ["tq3", "k4v3", "tq4"])
def test_resident_blocks_agrees_with_the_driver(preset):
    """device.resident_blocks (which the "waves" and "rounds" split rules size grids by) against the driver's own
    count, cuOccupancyMaxActiveBlocksPerMultiprocessor, for every decode_mma kernel compiled in this process after a
    default decode: its registers, warps and shared memory give the same resident blocks an SM (12 at 152
    registers a thread, by registers a scheduler sub-partition, where registers an SM would say 13)."""
    import ctypes

    from turboquant.triton_impl import decode_mma, device

    args, _ = _decode_case(preset, (300, 77))
    decode_attention(*args, config=dataclasses.replace(default_config(DEV), decode_kernel="mma"))
    torch.cuda.synchronize()
    kernels = list(decode_mma._decode_mma_kernel.device_caches[torch.cuda.current_device()][0].values())
    assert kernels, "no compiled decode_mma kernel in this process"
    libcuda = ctypes.CDLL("libcuda.so.1")
    for k in kernels:
        k._init_handles()
        n = ctypes.c_int(-1)
        warps, shared = k.metadata.num_warps, k.metadata.shared
        rc = libcuda.cuOccupancyMaxActiveBlocksPerMultiprocessor(ctypes.byref(n), ctypes.c_void_p(k.function),
                                                                 ctypes.c_int(32 * warps), ctypes.c_size_t(shared))
        assert rc == 0, f"cuOccupancyMaxActiveBlocksPerMultiprocessor returned {rc}"
        ours = device.resident_blocks(DEV, shared, warps, k.n_regs)
        assert ours == n.value, f"{k.n_regs} registers, {warps} warps, {shared} B: driver {n.value}, ours {ours}"


@pytest.mark.parametrize("preset,kw,want", [
    ("tq3", {}, ("pair", 8192, 128)),
    ("tq2", {}, ("pair", 8192, 128)),
    ("k4v3", {}, ("wide", 6144, 128)),  # its three-tile ring
    ("tq4", {}, ("single", 8192, 144)),  # the default cap moves to SINGLE_MAXNREG
    ("tq4", {"maxnreg": 0}, ("single", 8192, 0)),  # the compiler's choice stays
    ("tq4", {"maxnreg": 160}, ("single", 8192, 160)),
    ("tq4", {"maxnreg": 120}, ("pair", 8192, 120)),  # a cap "single" spills at: the pair tables
    ("k4v3", {"ring_bytes": 4096}, ("pair", 4096, 128)),  # a ring of the caller's: its layout
    ("tq4", {"ring_bytes": 24576}, ("pair", 24576, 128)),
    ("k4v3", {"key_table": "pair"}, ("pair", 8192, 128)),
    ("tq4", {"key_table": "pair"}, ("pair", 8192, 128)),
    ("k4v3", {"step_tiles": 2}, ("pair", 8192, 128)),  # two tiles a step need the four-tile ring
    ("k4v3", {"step_tiles": 1}, ("wide", 6144, 128)),
    ("k4v3", {"value_table": "pair"}, ("pair", 8192, 128)),  # explicit choices are kept as given
    ("tq4", {"value_table": "pair"}, ("pair", 8192, 128)),
    ("tq4", {"value_table": "single", "maxnreg": 128}, ("single", 8192, 128)),
])
def test_auto_value_table_is_the_timed_layout_of_each_preset(preset, kw, want):
    """mma_value_table "auto" beside a key table (what "auto" keys are where byte permutes do not serve, and
    any explicit one): "wide" with its 6 KB ring for k4v3, "single" at a 144-register cap for tq4 (what the
    H200 timed fastest), where the rest of the launch leaves them room; else "pair"."""
    from turboquant.triton_impl.decode_mma import resolve_value_table

    key = "single" if preset in ("k4v3", "tq4") else "pair"
    args = {"value_table": "auto", "ring_bytes": 8192, "maxnreg": 128, "key_table": key, "step_tiles": 0, **kw}
    assert resolve_value_table(_params(preset, 128), **args) == want


@pytest.mark.parametrize("preset,kw,want_key,want", [
    ("k4v3", {}, "prmt", ("wide", 8192, 152)),  # no key table: the wide value table with the four-tile ring
    ("tq4", {}, "prmt", ("prmt", 8192, 152)),  # no table at all
    ("tq3", {}, "pair", ("pair", 8192, 128)),  # 3-bit keys: no byte permutes
    ("tq4", {"maxnreg": 0}, "prmt", ("prmt", 8192, 0)),  # the compiler's choice stays
    ("k4v3", {"maxnreg": 160}, "prmt", ("wide", 8192, 160)),
    ("k4v3", {"value_table": "pair"}, "single", ("pair", 8192, 128)),  # an explicit value table: a key table
    ("tq4", {"value_table": "single"}, "single", ("single", 8192, 128)),
    ("k4v3", {"ring_bytes": 4096}, "single", ("pair", 4096, 128)),  # a ring of the caller's: its layout
    ("k4v3", {"key_table": "single"}, "single", ("wide", 6144, 128)),  # an explicit key table is kept
    ("tq4", {"key_table": "pair"}, "pair", ("pair", 8192, 128)),
])
def test_auto_key_table_is_byte_permutes_for_4_bit_symmetric_keys(preset, kw, want_key, want):
    """mma_key_table "auto" (the default): "prmt" for 4-bit keys of a symmetric codebook where the value table
    and the ring are the defaults (k4v3, tq4: the layout an H100 timed fastest, at a PRMT_MAXNREG cap where
    the cap is the default), else the single-code table for 4-bit keys, else "pair"."""
    from turboquant.triton_impl.decode_mma import resolve_key_table, resolve_value_table

    args = {"value_table": "auto", "ring_bytes": 8192, "maxnreg": 128, "key_table": "auto", **kw}
    p = _params(preset, 128)
    key, _ = resolve_key_table(p, args["key_table"], True, args["value_table"], args["ring_bytes"])
    assert key == want_key
    assert resolve_value_table(p, args["value_table"], args["ring_bytes"], args["maxnreg"], key, 0) == want


@pytest.mark.parametrize("maxnreg,want", [
    (128, 152),  # tq3's pair tables at the default cap: LEAN_MAXNREG
    (152, 152),  # 4-bit keys by byte permutes (PRMT_MAXNREG)
    (144, 144),  # tq4's "single" values (SINGLE_MAXNREG)
    (120, 120),  # a cap of the caller's
    (0, 0),  # the compiler's choice
])
def test_register_cap_of_a_launch(maxnreg, want):
    """resolve_maxnreg: LEAN_MAXNREG where the cap is still the default MAXNREG, any other cap kept."""
    from turboquant.triton_impl.decode_mma import resolve_maxnreg

    assert resolve_maxnreg(maxnreg) == want


# --- the kernel (GPU) ------------------------------------------------------------------------------

SHAPES = [  # (seq_lens, KV heads, GQA group, block size)
    ((1, 17, 100, 333), 2, 4, 16),
    ((48, 1000), 2, 8, 32),
    ((16, 31, 250), 3, 1, 16),
    ((2049, 700), 1, 5, 64),
]


@GPU
@pytest.mark.parametrize("preset", MMA_PRESETS)
@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_matches_split_kernel_and_reference(preset, shape):
    seq_lens, h, g, bs = SHAPES[shape]
    args, want = _decode_case(preset, seq_lens, h=h, g=g, bs=bs, seed=shape)
    got = _run(args, "mma")
    split = _run(args, "split")
    assert rel_err(got, want) <= tqf.ATTN_RTOL_HALF
    assert rel_err(got, split) <= tqf.ATTN_RTOL_HALF
    # the split count only regroups the same sums
    assert rel_err(_run(args, "mma", num_splits=7), got) <= tqf.ATTN_RTOL_HALF


@GPU
@pytest.mark.parametrize("preset,ring_bytes", [("tq3", 8192), ("k4v3", 8192), ("tq4", 24576), ("tq3", 24576)])
@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_two_tiles_a_step_match_the_reference(preset, ring_bytes, shape):
    """mma_step_tiles=2: one softmax update per 32 tokens, per-lane denominators; the same sums as one
    tile a step (odd tile counts, splits ending mid-pair, sequences shorter than a tile)."""
    seq_lens, h, g, bs = SHAPES[shape]
    args, want = _decode_case(preset, seq_lens, h=h, g=g, bs=bs, seed=shape)
    cfg = dataclasses.replace(default_config(DEV), decode_kernel="mma", mma_ring_bytes=ring_bytes, mma_step_tiles=2)
    got = decode_attention(*args, config=cfg).float().cpu().numpy()
    assert rel_err(got, want) <= tqf.ATTN_RTOL_HALF
    assert rel_err(got, _run(args, "mma")) <= tqf.ATTN_RTOL_HALF
    got7 = decode_attention(*args, num_splits=7, config=cfg).float().cpu().numpy()
    assert rel_err(got7, got) <= tqf.ATTN_RTOL_HALF


# Options that change where words live or when they are copied, not the arithmetic: each variant must
# give its base's bits. (preset, base AttnConfig fields, the variant's fields on top of them). Both sides
# take the pair value tables (mma_value_table="pair"): "auto" would give k4v3 the wide table with one tile
# a softmax step where the base has two, another schedule of the same sums (SAME_BITS_OPTIONS compares the
# value tables at equal steps)
SAME_BITS = [
    # ring depth: the same tiles copied earlier or later (one tile a step for tq4 on both sides: its
    # 8 KB ring cannot hold pairs)
    ("tq3", {}, {"mma_ring_bytes": 24576}),
    ("tq3", {}, {"mma_ring_bytes": 57344}),
    ("tq4", {"mma_step_tiles": 1}, {"mma_ring_bytes": 24576}),
    # one pair table for keys and values or a table each (k4v3 has no shared table: both runs equal)
    *[(p, {"mma_key_table": "pair"}, {"mma_shared_table": False}) for p in ("tq3", "tq4", "k4v3")],
    # mma_step_tiles=0 (the default): two tiles a step where the 8 KB ring holds an even number >= 4
    # of the preset's tiles (tq3, k4v3), one where it holds two (tq4)
    ("tq3", {"mma_step_tiles": 2}, {"mma_step_tiles": 0}),
    ("k4v3", {"mma_step_tiles": 2}, {"mma_step_tiles": 0}),
    ("tq4", {"mma_step_tiles": 1}, {"mma_step_tiles": 0}),
    # the single-code key table: two lookups a pair joined into the pair table's word; "auto" (the
    # default) takes it for 4-bit keys, whatever mma_shared_table says
    *[("k4v3", {"mma_step_tiles": st, "mma_key_table": "pair"}, {"mma_key_table": "single"}) for st in (1, 2)],
    ("tq4", {"mma_shared_table": False, "mma_step_tiles": 1, "mma_key_table": "pair"}, {"mma_key_table": "single"}),
    ("tq4", {"mma_shared_table": False, "mma_step_tiles": 2, "mma_ring_bytes": 24576, "mma_key_table": "pair"},
     {"mma_key_table": "single"}),
    *[(p, {"mma_key_table": "pair", "mma_shared_table": False}, {"mma_key_table": "auto", "mma_shared_table": t})
      for p in ("k4v3", "tq4") for t in (True, False)],
    ("tq3", {"mma_key_table": "pair"}, {"mma_key_table": "auto"}),
    # tq4's keys and values by byte permutes with a 16 KB ring (no table: four of its tiles, two a softmax step) at a
    # 168-register cap, against the single-code key table and the pair values with a 24 KB ring
    ("tq4", {"mma_step_tiles": 2, "mma_ring_bytes": 24576},
     {"mma_ring_bytes": 16384, "mma_key_table": "prmt", "mma_value_table": "prmt", "mma_maxnreg": 168}),
]


@GPU
@pytest.mark.parametrize("preset,base,variant", SAME_BITS, ids=lambda x: str(x))
@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_layout_and_schedule_options_give_the_same_bits(preset, base, variant, shape):
    seq_lens, h, g, bs = SHAPES[shape]
    args, want = _decode_case(preset, seq_lens, h=h, g=g, bs=bs, seed=shape)
    cfg = dataclasses.replace(default_config(DEV), decode_kernel="mma", mma_value_table="pair", **base)
    other = dataclasses.replace(cfg, **variant)
    for splits in (None, 7):
        got = decode_attention(*args, num_splits=splits, config=other).float().cpu().numpy()
        np.testing.assert_array_equal(got, decode_attention(*args, num_splits=splits, config=cfg).float().cpu().numpy())
    assert rel_err(got, want) <= tqf.ATTN_RTOL_HALF


@GPU
def test_two_tiles_a_step_keep_nan_and_huge_norm_semantics():
    cfg = dataclasses.replace(default_config(DEV), decode_kernel="mma", mma_step_tiles=2)
    args, want = _decode_case("tq3", (70, 300), value_scale=1e6, zero_tokens=(0, 5, 6))
    got = decode_attention(*args, config=cfg).float().cpu().numpy()
    assert np.isfinite(got).all() and rel_err(got, want) <= tqf.ATTN_RTOL_HALF
    args, _ = _decode_case("k4v3", (30, 64, 64), nan_token=3)
    got = decode_attention(*args, config=cfg).float().cpu().numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(_run(args, "split")))


@GPU
def test_auto_picks_the_mma_kernel():
    args, _ = _decode_case("tq3", (40, 90))
    np.testing.assert_array_equal(_run(args, "auto"), _run(args, "mma"))


@GPU
def test_huge_value_norms_and_zero_vectors():
    # value norms far beyond fp16's range: P * ||v|| is kept in range by the running value scale
    args, want = _decode_case("tq3", (70, 300), value_scale=1e6, zero_tokens=(0, 5, 6))
    got = _run(args, "mma")
    assert np.isfinite(got).all()
    assert rel_err(got, want) <= tqf.ATTN_RTOL_HALF


@GPU
def test_non_finite_key_poisons_exactly_its_sequence():
    args, _ = _decode_case("k4v3", (30, 64, 64), nan_token=3)  # a token of sequence 0 (paged_layout order)
    got = _run(args, "mma")
    split = _run(args, "split")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(split))
    assert np.isnan(got[0, :4]).all()  # the query heads of KV head 0
    assert np.isfinite(got[0, 4:]).all() and np.isfinite(got[1:]).all()


@GPU
def test_cuda_graph_capture_before_the_tq4_single_table_is_verified(monkeypatch):
    """tq4's "auto" value table beside the single-code key table ("single") sits in a second shared allocation
    whose placement is verified on first use, which cannot run inside a CUDA-graph capture: a capture that comes
    first takes the pair tables (the same bits) instead of raising, and a later eager call verifies and uses
    "single".  (The default, byte-permute keys and values, has no second allocation: nothing to verify.)"""
    from turboquant.triton_impl import decode_mma

    monkeypatch.setattr(decode_mma, "_RING_VERIFIED", set())
    monkeypatch.setattr(decode_mma, "_PLACEMENT_FAILED", set())
    args, _ = _decode_case("tq4", (100, 257, 1))
    q, cache, bt, sl, params = args
    cfg = dataclasses.replace(default_config(DEV), decode_kernel="mma", mma_key_table="single",
                              mma_shared_table=False)
    pair = dataclasses.replace(cfg, mma_value_table="pair")
    out = torch.empty_like(q)
    want = decode_attention(q, cache, bt, sl, params, config=pair).clone()  # compiles the pair kernel
    assert not decode_mma._RING_VERIFIED
    _capture_and_replay(args, out, cfg)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert not decode_mma._RING_VERIFIED
    torch.testing.assert_close(decode_attention(q, cache, bt, sl, params, config=cfg), want, rtol=0, atol=0)
    assert len(decode_mma._RING_VERIFIED) == 1
    default = dataclasses.replace(default_config(DEV), decode_kernel="mma")
    torch.testing.assert_close(decode_attention(q, cache, bt, sl, params, config=default), want, rtol=0, atol=0)
    _capture_and_replay(args, out.zero_(), default)  # nothing verified, eagerly or in the capture
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert len(decode_mma._RING_VERIFIED) == 1


@GPU
def test_cuda_graph_replay():
    args, _ = _decode_case("tq3", (100, 257, 1))
    q, cache, bt, sl, params = args
    cfg = dataclasses.replace(default_config(DEV), decode_kernel="mma")
    out = torch.empty_like(q)
    decode_attention(q, cache, bt, sl, params, out=out, config=cfg)  # compile outside the capture
    want = out.clone()
    out.zero_()
    _capture_and_replay(args, out, cfg)
    torch.testing.assert_close(out, want, rtol=0, atol=0)


@GPU
@pytest.mark.parametrize("preset,output_rotation", [("tq3", "fma"), ("k4v3", "fma"), ("tq4", "fma"), ("tq3", "fused"),
                                                    ("k4v3", "bf16x3")])
def test_programmatic_dependent_launches_give_the_same_bits(preset, output_rotation):
    """AttnConfig.mma_pdl: the query rotation, decode_mma, the merge and the inverse rotation as programmatic
    dependent launches (pdl.py: each waits for the one before it before it reads its output) give the bits of
    ordinary launches, eagerly and replayed from a CUDA graph, over splits of several waves and of one."""
    args, _ = _decode_case(preset, (100, 4100, 1, 2049), h=2, g=4)
    q, cache, bt, sl, params = args
    base = dataclasses.replace(default_config(DEV), decode_kernel="mma", mma_output_rotation=output_rotation)
    cfg = dataclasses.replace(base, mma_pdl=True)
    for splits in (1, 7, None):
        want = decode_attention(q, cache, bt, sl, params, config=base, num_splits=splits)
        torch.testing.assert_close(decode_attention(q, cache, bt, sl, params, config=cfg, num_splits=splits), want,
                                   rtol=0, atol=0)
    out = torch.zeros_like(q)
    _capture_and_replay(args, out, cfg)
    torch.testing.assert_close(out, decode_attention(q, cache, bt, sl, params, config=base), rtol=0, atol=0)


def _capture_and_replay(args, out, cfg):
    """decode_attention of args into out captured in a CUDA graph, then replayed once."""
    q, cache, bt, sl, params = args
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_attention(q, cache, bt, sl, params, out=out, config=cfg)
    graph.replay()
    torch.cuda.synchronize()


def test_query_rotation_spreads_columns_only_for_few_rows_of_a_decode_step(monkeypatch):
    """rotate_query(few_rows=True) (decode's default mode) spreads an instance's output columns over
    programs only while its row programs would not fill one wave, and only for one instance without
    QJL; the result is the same rotation."""
    from turboquant.triton_impl import query as query_mod

    p = _params("tq3", 128)
    assert query_mod.query_columns(p, 32, 132) == query_mod.QUERY_JC  # 1 x 128k: 2 row programs
    assert query_mod.query_columns(p, 1024, 132) == 128  # 32 x 32k: 64 row programs x 4 > 132
    assert query_mod.query_columns(p, 2048, 132) == 128  # 64 x 1k
    assert query_mod.query_columns(_params("tq3.5", 128), 32, 132) == _params("tq3.5", 128).meta["K0_MP"]
    qjl = next(n for n in tqf.PRESETS if _params(n, 128).meta["K0_QJL"] and _params(n, 128).meta["K_NI"] == 1)
    assert query_mod.query_columns(_params(qjl, 128), 32, 132) == _params(qjl, 128).meta["K0_MP"]
    monkeypatch.setattr(query_mod, "sm_count", lambda device: 132)  # the CPU interpreter counts one "SM"
    q = torch.randn((3, 10, 128), generator=torch.Generator().manual_seed(4)).to(torch.bfloat16).to(DEV)
    want = query_mod.rotate_query(q, p)
    got = query_mod.rotate_query(q, p, few_rows=True)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("preset,dtype,why", [("tq3", torch.float16, "bf16 only"), ("tq3", torch.float32, "bf16 only"),
                                              ("tq3.5", torch.bfloat16, "one key instance"),
                                              ("tq3_qjl", torch.bfloat16, "one key instance")])
def test_tensor_core_query_rotation_names_what_it_cannot_rotate(preset, dtype, why):
    """mma_query_rotation='bf16x2': bf16 queries of one-instance presets without QJL; anything else is
    refused with the reason and the allowed value, before any launch."""
    from turboquant.triton_impl import query as query_mod

    q = torch.zeros((2, 8, 128), dtype=dtype, device=DEV)
    with pytest.raises(ValueError, match=rf"mma_query_rotation='bf16x2' cannot rotate these queries: .*{why}.*"
                                         r"allowed values: 'fma'"):
        query_mod.rotate_query(q, _params(preset, 128), rotation="bf16x2")
    with pytest.raises(ValueError, match=r"mma_query_rotation='tf32' is not supported; allowed values: \['fma', "
                                         r"'bf16x2'\]"):
        query_mod.rotate_query(q, _params("tq3", 128), rotation="tf32")


@pytest.mark.parametrize("choice,preset,dtype,want", [
    ("auto", "tq3", torch.bfloat16, "bf16x2"), ("auto", "k4v3", torch.bfloat16, "bf16x2"),
    ("auto", "tq3", torch.float16, "fma"), ("auto", "tq3", torch.float32, "fma"),
    ("auto", "tq3.5", torch.bfloat16, "fma"), ("auto", "tq3_qjl", torch.bfloat16, "fma"),
    ("fma", "tq3", torch.bfloat16, "fma"), ("bf16x2", "tq3", torch.bfloat16, "bf16x2"),
    ("bf16x2", "tq3", torch.float16, "bf16x2"),  # refused by rotate_query, with the reason
])
def test_mma_query_rotation_auto_picks_tensor_cores_where_they_apply(choice, preset, dtype, want):
    """AttnConfig.mma_query_rotation="auto" (default): the bf16x2 tensor-core rotation for bf16 queries of
    one-instance presets without QJL, the fp32 FMA one otherwise; an explicit choice is kept."""
    from turboquant.triton_impl import query as query_mod

    assert AttnConfig().mma_query_rotation == "auto"
    assert query_mod.mma_query_rotation(choice, _params(preset, 128), dtype) == want
    with pytest.raises(ValueError, match=r"mma_query_rotation='tf32' is not supported; allowed values: \['auto', "
                                         r"'fma', 'bf16x2'\]"):
        query_mod.mma_query_rotation("tf32", _params(preset, 128), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_split_kernel_keeps_the_fma_query_rotation(dtype):
    """The split kernel (what decode takes where the mma kernel cannot serve the call: decode_kernel="split",
    the CPU interpreter, GPUs without mma.sync) rotates its queries in fp32 FMA whatever mma_query_rotation
    says: the same bits as "fma", and an fp16 query is not refused by "bf16x2"."""
    args, _ = _decode_case("tq3", (20, 77))
    q = args[0].to(dtype)
    outs = [decode_attention(q, *args[1:], config=dataclasses.replace(default_config(DEV), decode_kernel="split",
                                                                      mma_query_rotation=r))
            for r in ("fma", "bf16x2", "auto")]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@GPU
@pytest.mark.parametrize("preset", ["tq3", "k4v3", "tq4"])
@pytest.mark.parametrize("ring", [4096, 8192])
def test_output_rotation_on_tensor_cores_and_the_4kb_ring_match_the_reference(preset, ring):
    """mma_output_rotation="bf16x3" (the decode step's inverse rotation as three bf16 tensor-core products),
    "fused" (the rotation in the merge's programs) and mma_ring_bytes=4096 (the ring in a second allocation,
    where the tables must still start shared memory: a wrong placement reads ring words as centroids) each
    within the half-precision tolerance of the reference; tq4 has no 4 KB ring (one of its tiles is 4 KB) and
    says so."""
    args, want = _decode_case(preset, (1, 17, 300, 2049), h=2, g=4)
    base = dataclasses.replace(default_config(DEV), decode_kernel="mma", mma_ring_bytes=ring)
    if preset == "tq4" and ring == 4096:
        with pytest.raises(ValueError, match=r"mma_ring_bytes=4096 holds 1 tile\(s\) of 4096 bytes"):
            decode_attention(*args, config=base)
        return
    for cfg in (base, dataclasses.replace(base, mma_output_rotation="bf16x3", mma_maxnreg=120),
                dataclasses.replace(base, mma_output_rotation="fused")):
        assert rel_err(decode_attention(*args, config=cfg).float().cpu().numpy(), want) <= tqf.ATTN_RTOL_HALF


# options whose arithmetic is the pair tables' (the same words, addresses or layout): (preset, the pair
# layout's mma_step_tiles to compare with, the option)
SAME_BITS_OPTIONS = [
    # the defaults: keys by byte permutes, k4v3's "wide" values with the 8 KB ring (two tiles a step), tq4's values
    # by byte permutes too, both at 152 registers
    ("k4v3", 2, {"mma_value_table": "auto", "mma_step_tiles": 0}),
    ("tq4", 1, {"mma_value_table": "auto", "mma_step_tiles": 0}),
    ("tq3", 2, {"mma_maxnreg": 136}),  # another register cap than the default's 152
    # "auto" values beside the single-code key table: k4v3 "wide" (6 KB ring), tq4 "single" at 144 registers (tq4's
    # keys on a table of their own: no table shared with the values)
    ("k4v3", 1, {"mma_value_table": "auto", "mma_step_tiles": 0, "mma_key_table": "single"}),
    ("tq4", 1, {"mma_value_table": "auto", "mma_step_tiles": 0, "mma_key_table": "single", "mma_shared_table": False}),
    ("tq3", 0, {"mma_page_ahead": True}),  # two tiles a step
    ("tq3", 1, {"mma_page_ahead": True}),  # one tile a step
    ("k4v3", 0, {"mma_page_ahead": True}),
    ("tq4", 0, {"mma_page_ahead": True}),  # one tile a step (its ring holds two)
    ("tq3", 1, {"mma_ring_bytes": 4096, "mma_maxnreg": 120}),  # the ring in a second allocation
    ("k4v3", 1, {"mma_value_table": "wide", "mma_ring_bytes": 6144, "mma_step_tiles": 0}),
    ("k4v3", 1, {"mma_value_table": "wide", "mma_ring_bytes": 6144, "mma_step_tiles": 0, "mma_page_ahead": True}),
    ("tq4", 1, {"mma_value_table": "single", "mma_step_tiles": 0}),
    ("tq4", 1, {"mma_value_table": "single", "mma_step_tiles": 0, "mma_page_ahead": True}),
    # 4-bit keys by byte permutes (the single-code table's values)
    ("k4v3", 1, {"mma_key_table": "prmt"}),  # beside the pair value table
    # "auto" beside "prmt" keys: the wide value table with no key table and a four-tile ring, two tiles a step
    ("k4v3", 2, {"mma_value_table": "auto", "mma_step_tiles": 0, "mma_key_table": "prmt"}),
    ("k4v3", 1, {"mma_value_table": "wide", "mma_ring_bytes": 8192, "mma_key_table": "prmt"}),
    ("tq4", 1, {"mma_key_table": "prmt"}),
    ("tq4", 1, {"mma_value_table": "auto", "mma_step_tiles": 0, "mma_key_table": "prmt"}),
    # tq4's values by byte permutes too ("auto" beside "prmt" keys): no table, the ring the only shared memory
    ("tq4", 1, {"mma_value_table": "prmt", "mma_key_table": "prmt", "mma_maxnreg": 152}),
    ("tq4", 1, {"mma_value_table": "prmt", "mma_key_table": "prmt", "mma_maxnreg": 152, "mma_page_ahead": True}),
    # a 168-register cap (12 one-warp programs an SM, as at 152): k4v3's default layout, tq4's with a 16 KB ring
    ("k4v3", 2, {"mma_value_table": "auto", "mma_step_tiles": 0, "mma_key_table": "prmt", "mma_maxnreg": 168}),
    ("tq4", 2, {"mma_value_table": "prmt", "mma_key_table": "prmt", "mma_ring_bytes": 16384, "mma_maxnreg": 168,
                "mma_step_tiles": 0}),
]


@GPU
@pytest.mark.parametrize("preset,step_tiles,option", SAME_BITS_OPTIONS,
                         ids=[f"{p}-p{t}-" + "-".join(f"{k}={v}" for k, v in o.items())
                              for p, t, o in SAME_BITS_OPTIONS])
@pytest.mark.parametrize("bs", [16, 32])
def test_options_give_the_default_bits(preset, step_tiles, option, bs):
    """Options that change where things are, not the arithmetic, give the bits of the pair tables at the
    same tiles a softmax step: the default "auto" value table, mma_page_ahead (the block-table pages a step
    copies loaded one step earlier: the same addresses, in the one- and the two-tile loop), mma_value_table
    "wide" (k4v3: the value pair table with 32 copies at byte 0, the single-code key table at byte 8,192, a
    three-tile ring after them) and "single" (tq4: one single-code table for keys and values in its own allocation after
    the ring, its placement verified on first use), both the pair layout's words, mma_key_table "prmt" (the
    single-code table's values by byte permutes), another register cap; pages of one and of two tiles, lengths
    that end inside a tile, a page and a split (one and several splits a row; the splits of 1 token in 7 start
    past its end), and within the reference's tolerance."""
    args, want = _decode_case(preset, (1, 17, 300, 2049, 4100), h=2, g=4, bs=bs)
    base = dataclasses.replace(default_config(DEV), decode_kernel="mma", mma_step_tiles=step_tiles,
                               mma_value_table="pair")
    cfg = dataclasses.replace(base, **option)
    for splits in (1, 7):
        got = decode_attention(*args, config=cfg, num_splits=splits)
        ref = decode_attention(*args, config=base, num_splits=splits)
        diff = (got.float() - ref.float()).abs().flatten(1).amax(1)  # per sequence's query row
        assert torch.equal(got, ref), (
            f"{splits} split(s): sequences {sorted(set(torch.nonzero(diff > 0).flatten().tolist()))} differ (lengths "
            f"1, 17, 300, 2049, 4100), max |diff| {diff.max().item():.3g}; relative error to the reference "
            f"{rel_err(got.float().cpu().numpy(), want):.3g}, the default's "
            f"{rel_err(ref.float().cpu().numpy(), want):.3g}")
    assert rel_err(got.float().cpu().numpy(), want) <= tqf.ATTN_RTOL_HALF


@GPU
@pytest.mark.parametrize("preset", ["tq3", "tq4"])
@pytest.mark.parametrize("rule", ["waves", "rounds"])
def test_split_rules_match_the_reference(preset, rule):
    """mma_split_rule "waves" and "rounds" change only how many splits share a row: the same attention within
    the half-precision tolerance, on a batch whose fill-rule programs spill into a second wave (min_chunk 16:
    8 rows x 256 splits, more than one wave on any GPU with fewer than 2,048 one-warp slots), where both rules
    take fewer splits."""
    from turboquant.triton_impl.decode import decode_splits

    args, want = _decode_case(preset, (3000, 2500, 4100, 1777), h=2, g=4)
    cfg = dataclasses.replace(default_config(DEV), decode_kernel="mma", mma_split_rule=rule, min_chunk=16)
    max_kv = args[2].shape[1] * args[1].shape[2]
    assert decode_splits(args[4], cfg, 8, max_kv, DEV, mma=True) < \
        decode_splits(args[4], dataclasses.replace(cfg, mma_split_rule="fill"), 8, max_kv, DEV, mma=True)
    assert rel_err(decode_attention(*args, config=cfg).float().cpu().numpy(), want) <= tqf.ATTN_RTOL_HALF


@GPU
@pytest.mark.parametrize("preset", ["tq3", "k4v3", "tq4", "tq3_hadamard"])
@pytest.mark.parametrize("rows", [3, 40, 1000])
def test_tensor_core_query_rotation_matches_the_fma_one(preset, rows):
    """The bf16x2 tensor-core query rotation against the fp32 FMA one: the same q' to ~2^-16 of its
    largest coordinate (Pi split in two bf16 parts, q exact in bf16), and decode with it within the
    half-precision attention tolerance of the reference."""
    from turboquant.triton_impl import query as query_mod

    p = _params(preset, 128)
    q = torch.randn((rows, 8, 128), generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16).to(DEV)
    want = query_mod.rotate_query(q, p)
    got = query_mod.rotate_query(q, p, few_rows=True, rotation="bf16x2")
    assert (got - want).abs().max() <= 2 ** -16 * want.abs().max()
    args, ref_out = _decode_case(preset, (20, 300, 77))
    cfg = dataclasses.replace(default_config(DEV), decode_kernel="mma", mma_query_rotation="bf16x2")
    assert rel_err(decode_attention(*args, config=cfg).float().cpu().numpy(), ref_out) <= tqf.ATTN_RTOL_HALF

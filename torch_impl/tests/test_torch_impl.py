"""The torch CPU paths beyond the shared conformance cases: bit packing against the
reference's, float32 outputs at ATTN_RTOL_FP32, mixed decode/extend batches, non-finite
tokens (SPEC §8) and the argument errors, each for the plain torch path ("torch") and the
fused C++ kernels ("cpp", torch_impl.fused) through the ``path`` fixture."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from turboquant import format as tqf
from turboquant import reference as ref
from turboquant.conformance.cases import paged_layout
from turboquant.conformance.compare import rel_err
from turboquant.reference.pack import pack_bits
from turboquant.torch_impl import TorchParams, bits, fused
from turboquant.torch_impl import attention as torch_attention
from turboquant.torch_impl import store as torch_store

PATHS = {
    "torch": SimpleNamespace(store_kv=torch_store.store_kv, paged_attention=torch_attention.paged_attention,
                             decode_attention=torch_attention.decode_attention),
    "cpp": SimpleNamespace(store_kv=fused.store_kv, paged_attention=fused.paged_attention,
                                 decode_attention=fused.decode_attention),
}


@pytest.fixture(params=list(PATHS))
def path(request):
    if request.param == "cpp" and not fused.available():
        pytest.skip("the fused CPU kernels do not build here (test_cpu_kernels.py says why)")
    return PATHS[request.param]


@pytest.mark.parametrize("b", tqf.SUPPORTED_BITS)
@pytest.mark.parametrize("n", [16, 20, 28, 60, 64, 84, 96, 128, 256])
def test_pack_matches_reference_and_round_trips(b, n):
    codes = np.random.default_rng(n * 10 + b).integers(0, 1 << b, (5, n))
    packed = bits.pack(torch.from_numpy(codes), b, tqf.packed_nbytes(n, b))
    assert np.array_equal(packed.numpy(), pack_bits(codes.astype(np.uint8), b))
    assert np.array_equal(bits.unpack(packed, b, n).numpy(), codes)
    # a field inside a wider slot (strided view) reads the same
    wide = torch.cat([torch.full((5, 3), 255, dtype=torch.uint8), packed, torch.full((5, 5), 255, dtype=torch.uint8)],
                     dim=1)
    assert np.array_equal(bits.unpack(wide[:, 3:3 + packed.shape[1]], b, n).numpy(), codes)


def _setup(preset, seq_lens, d=64, h=2, g=2, bs=8, seed=0, dtype=np.float16):
    fmt = tqf.LayerFormat(tqf.get_preset(preset), d, layer=2)
    rng = np.random.default_rng(seed)
    nb, bt, sm = paged_layout(rng, seq_lens, bs, spare=2)
    k = rng.standard_normal((sm.size, h, d)).astype(dtype).astype(np.float32)
    v = rng.standard_normal((sm.size, h, d)).astype(dtype).astype(np.float32)
    cache = ref.new_cache(fmt, nb, bs, h)
    ref.store(cache, k, v, sm, fmt)
    return fmt, cache, bt, np.asarray(seq_lens, np.int32), (k, v, sm), rng


def _attend(path, q, cache, bt, sl, qsl, fmt, **kw):
    return path.paged_attention(torch.from_numpy(q), torch.from_numpy(cache), torch.from_numpy(bt),
                                torch.from_numpy(sl), None if qsl is None else torch.from_numpy(qsl),
                                TorchParams.build(fmt), **kw).numpy()


@pytest.mark.parametrize("preset", ["tq3", "tq4_qjl", "k4g4", "tq2.5"])
def test_float32_mixed_batch_within_fp32_tolerance(preset, path):
    """Decode rows and extend chunks in one call: float32 outputs within ATTN_RTOL_FP32 of
    the float64 reference, and each sequence's rows as when attended alone."""
    lens, qlens = (30, 17, 41, 9), (1, 5, 1, 9)
    fmt, cache, bt, sl, _, rng = _setup(preset, lens)
    qsl = np.concatenate([[0], np.cumsum(qlens)]).astype(np.int32)
    q = rng.standard_normal((qsl[-1], 4, 64)).astype(np.float32)
    want = ref.paged_attention(q, cache, bt, sl, fmt, query_start_loc=qsl, softmax_scale=0.3)
    got = _attend(path, q, cache, bt, sl, qsl, fmt, softmax_scale=0.3)
    assert got.dtype == np.float32 and rel_err(got, want) <= tqf.ATTN_RTOL_FP32
    for b in range(len(lens)):
        one = _attend(path, q[qsl[b]:qsl[b + 1]], cache, bt[b:b + 1], sl[b:b + 1],
                      np.array([0, qlens[b]], np.int32), fmt, softmax_scale=0.3)
        assert rel_err(one, got[qsl[b]:qsl[b + 1]]) <= tqf.ATTN_RTOL_FP32


def test_decode_attention_and_half_outputs(path):
    fmt, cache, bt, sl, _, rng = _setup("k4v3", (12, 33, 5))
    q = rng.standard_normal((3, 4, 64)).astype(np.float16)
    want = ref.decode_attention(q.astype(np.float32), cache, bt, sl, fmt)
    got = path.decode_attention(torch.from_numpy(q), torch.from_numpy(cache), torch.from_numpy(bt),
                                torch.from_numpy(sl), TorchParams.build(fmt))
    assert got.dtype == torch.float16 and rel_err(got.float().numpy(), want) <= tqf.ATTN_RTOL_HALF
    out = torch.zeros(3, 4, 64, dtype=torch.bfloat16)
    path.decode_attention(torch.from_numpy(q).to(torch.bfloat16), torch.from_numpy(cache), torch.from_numpy(bt),
                     torch.from_numpy(sl), TorchParams.build(fmt), out=out)
    assert rel_err(out.float().numpy(), want) <= tqf.ATTN_RTOL_HALF


@pytest.mark.parametrize("preset", ["tq3", "tq3_qjl", "k4g4", "tq3.5"])
@pytest.mark.parametrize("tensor", ["key", "value"])
def test_non_finite_token_poisons_exactly_the_rows_that_see_it(preset, tensor, path):
    """SPEC §8: the torch store writes the reference's NaN encoding, and attention gives NaN
    exactly where the reference does (rows that mask the token causally stay finite)."""
    fmt = tqf.LayerFormat(tqf.get_preset(preset), 64)
    rng = np.random.default_rng(5)
    lens = (20, 12)
    nb, bt, sm = paged_layout(rng, lens, 8, spare=1)
    k = rng.standard_normal((sm.size, 2, 64)).astype(np.float32)
    v = rng.standard_normal((sm.size, 2, 64)).astype(np.float32)
    (k if tensor == "key" else v)[15, 1, 3] = np.nan  # sequence 0, position 15, KV head 1
    (k if tensor == "key" else v)[25, 0, 0] = np.inf  # sequence 1, position 5, KV head 0
    want_cache = ref.new_cache(fmt, nb, 8, 2)
    ref.store(want_cache, k, v, sm, fmt)
    cache = torch.zeros(want_cache.shape, dtype=torch.uint8)
    path.store_kv(torch.from_numpy(k), torch.from_numpy(v), cache, torch.from_numpy(sm), TorchParams.build(fmt))
    nonfloat = ~np.isin(np.arange(fmt.slot_bytes), [b for f in fmt.fields if f.dtype == "f4"
                                                     for b in range(f.offset, f.offset + 4)])
    assert np.array_equal(cache.numpy()[..., nonfloat], want_cache[..., nonfloat])
    qsl = np.array([0, 8, 9], np.int32)
    q = rng.standard_normal((9, 4, 64)).astype(np.float32)
    want = ref.paged_attention(q, want_cache, bt, np.asarray(lens, np.int32), fmt, query_start_loc=qsl)
    got = _attend(path, q, want_cache, bt, np.asarray(lens, np.int32), qsl, fmt)
    nan_rows = np.isnan(want).any(-1)
    assert nan_rows.any() and not nan_rows.all()
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert rel_err(got, want) <= tqf.ATTN_RTOL_FP32


def test_store_padding_and_untouched_bytes(path):
    fmt = tqf.LayerFormat(tqf.get_preset("tq3"), 64)
    p = TorchParams.build(fmt)
    cache = torch.randint(0, 256, fmt.cache_shape(3, 4, 2), dtype=torch.uint8)
    before = cache.clone()
    path.store_kv(torch.ones(3, 2, 64), torch.ones(3, 2, 64), cache, torch.tensor([-1, -1, -7]), p)
    assert torch.equal(cache, before)
    path.store_kv(torch.ones(2, 2, 64), torch.ones(2, 2, 64), cache, torch.tensor([5, -1]), p)
    changed = (cache != before).any(-1)
    assert changed[1, :, 1].all() and int(changed.sum()) == 2


FMT = tqf.LayerFormat(tqf.get_preset("tq3"), 64)


def test_store_rejects_bad_input(path):
    p = TorchParams.build(FMT)
    cache = torch.zeros(FMT.cache_shape(2, 4, 2), dtype=torch.uint8)
    k = torch.ones(4, 2, 64)
    with pytest.raises(TypeError, match=r"params must be a TorchParams"):
        path.store_kv(k, k, cache, torch.arange(4), FMT)
    with pytest.raises(TypeError, match=r"key.dtype=torch.int64 is not supported; allowed: \['float16', 'bfloat16'"):
        path.store_kv(k.long(), k, cache, torch.arange(4), p)
    with pytest.raises(ValueError, match=r"value must be a 3-d tensor with last dimension head_size=64"):
        path.store_kv(k, torch.ones(4, 2, 32), cache, torch.arange(4), p)
    with pytest.raises(ValueError, match=r"cache must be uint8 \[num_blocks, num_kv_heads, block_size, slot_bytes=56"):
        path.store_kv(k, k, torch.zeros(2, 2, 4, 60, dtype=torch.uint8), torch.arange(4), p)
    with pytest.raises(TypeError, match=r"cache.dtype=torch.int8 is not supported; allowed: \['uint8'\]"):
        path.store_kv(k, k, cache.to(torch.int8), torch.arange(4), p)
    with pytest.raises(ValueError, match=r"key and value must be \[num_tokens, num_kv_heads=2, 64\]"):
        path.store_kv(torch.ones(4, 3, 64), torch.ones(4, 3, 64), cache, torch.arange(4), p)
    with pytest.raises(TypeError, match=r"slot_mapping.dtype=torch.float32 is not supported; allowed: \['int32'"):
        path.store_kv(k, k, cache, torch.arange(4.0), p)
    with pytest.raises(ValueError, match=r"slot_mapping must be \[num_tokens=4\]"):
        path.store_kv(k, k, cache, torch.arange(3), p)
    with pytest.raises(ValueError, match=r"slot_mapping has slot 8 >= num_blocks \* block_size = 8"):
        path.store_kv(k, k, cache, torch.tensor([0, 1, 2, 8]), p)
    with pytest.raises(ValueError, match="slot_mapping has duplicate non-negative slots"):
        path.store_kv(k, k, cache, torch.tensor([0, 1, 1, -1]), p)
    with pytest.raises(TypeError, match="fmt must be a turboquant.format.LayerFormat"):
        TorchParams.build("tq3")


def test_attention_rejects_bad_input(path):
    p = TorchParams.build(FMT)
    cache = torch.zeros(FMT.cache_shape(2, 4, 2), dtype=torch.uint8)
    q = torch.ones(1, 4, 64)
    bt = torch.tensor([[0, 1]], dtype=torch.int32)
    sl = torch.tensor([3], dtype=torch.int32)
    with pytest.raises(ValueError, match="num_q_heads=3 must be a multiple of num_kv_heads=2"):
        path.decode_attention(torch.ones(1, 3, 64), cache, bt, sl, p)
    with pytest.raises(TypeError, match=r"query.dtype=torch.float64 is not supported"):
        path.decode_attention(q.double(), cache, bt, sl, p)
    with pytest.raises(ValueError, match=r"query must be \[num_tokens, num_q_heads, head_size=64\]"):
        path.decode_attention(torch.ones(1, 4, 32), cache, bt, sl, p)
    with pytest.raises(ValueError, match=r"seq_lens must lie in \[0, max_blocks \* block_size = 8\]"):
        path.decode_attention(q, cache, bt, torch.tensor([9], dtype=torch.int32), p)
    with pytest.raises(ValueError, match=r"block_table references a block outside \[0, num_blocks=2\)"):
        path.decode_attention(q, cache, torch.tensor([[0, 5]], dtype=torch.int32), torch.tensor([8]), p)
    with pytest.raises(ValueError, match=r"seq_lens must be \[num_seqs=1\]"):
        path.decode_attention(q, cache, bt, torch.tensor([3, 3]), p)
    with pytest.raises(TypeError, match=r"block_table.dtype=torch.float32 is not supported"):
        path.decode_attention(q, cache, bt.float(), sl, p)
    with pytest.raises(ValueError, match=r"without query_start_loc, query needs one row per sequence \(1\), got 2"):
        path.decode_attention(torch.ones(2, 4, 64), cache, bt, sl, p)
    with pytest.raises(ValueError, match="query_start_loc must be non-decreasing from 0 to num_tokens=1"):
        path.paged_attention(q, cache, bt, sl, torch.tensor([0, 2]), p)
    with pytest.raises(ValueError, match="a sequence has more query tokens than seq_lens"):
        path.paged_attention(torch.ones(4, 4, 64), cache, bt, sl, torch.tensor([0, 4]), p)
    with pytest.raises(ValueError, match=r"out must have the query's shape \(1, 4, 64\)"):
        path.decode_attention(q, cache, bt, sl, p, out=torch.ones(2, 4, 64))


def test_as_many_rows_as_sequences_but_not_decode(path):
    """Two sequences with 0 and 2 query rows (num_tokens == num_seqs, yet no decode batch)."""
    fmt, cache, bt, sl, _, rng = _setup("tq3", (10, 20))
    qsl = np.array([0, 0, 2], np.int32)
    q = rng.standard_normal((2, 4, 64)).astype(np.float32)
    want = ref.paged_attention(q, cache, bt, sl, fmt, query_start_loc=qsl)
    assert rel_err(_attend(path, q, cache, bt, sl, qsl, fmt), want) <= tqf.ATTN_RTOL_FP32

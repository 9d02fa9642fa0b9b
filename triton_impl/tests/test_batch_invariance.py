"""Batch-invariant mode (AttnConfig.batch_invariant, batch_invariant_config): a query row's output is
bit-identical whether its sequence is decoded alone, in a batch of other decodes, beside prefill
chunks, or recomputed inside a prefill chunk (as after a preemption).

The default mode only promises SPEC §10's tolerance across batch compositions (its split count
follows the batch, and decode rows of pure-decode batches take the decode kernel); the negative
control shows that the comparisons below do see that difference.

Under the CPU interpreter ``tl.dot`` is one ``np.matmul`` per tile, and BLAS rounds a row
differently depending on where it sits in the matrix (measured: 34 of 64 rows of a 64x128 @
128x32 float32 product change when the row is moved to row 0). The kernels' own arithmetic is what
is under test here, so on the CPU the interpreter's dot is replaced by one product per row
(``row_independent_dot``). On a GPU the tensor cores' row independence is what the test checks; it
passed on an H200 (results/2026-12-03-h200-conformance/gpu-2026-12-03b.md; with the fixed-length splits and both
ways of combining them, gpu-2026-12-03d.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from turboquant import format as tqf
from turboquant import reference as ref
from turboquant.conformance.cases import paged_layout
from turboquant.triton_impl import (
    AttnConfig,
    KernelParams,
    batch_invariant_config,
    decode_attention,
    paged_attention,
)
from turboquant.triton_impl.attn_core import acc_width
from turboquant.triton_impl.launch import batch_invariant_splits, default_config

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
H, G, D, BS = 2, 4, 128, 16
X, Y, Z = 600, 300, 40  # in the default mode X's rows are split differently alone and in a batch
RECOMPUTE = 24  # X's last tokens, recomputed as one extend chunk


@pytest.fixture(autouse=True)
def row_independent_dot(monkeypatch):
    if DEV.type != "cpu":
        return
    from triton.runtime import interpreter

    orig = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.data.ndim != 2:
            return orig(self, a, b, d, input_precision, max_num_imprecise_acc)
        rows = []
        for i in range(a.data.shape[0]):
            a1 = interpreter.TensorHandle(a.data[i:i + 1], a.dtype)
            d1 = interpreter.TensorHandle(d.data[i:i + 1], d.dtype)
            rows.append(orig(self, a1, b, d1, input_precision, max_num_imprecise_acc).data)
        return interpreter.TensorHandle(np.concatenate(rows), d.dtype)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)


def _setup(preset: str, dtype: torch.dtype):
    fmt = tqf.LayerFormat(tqf.get_preset(preset), D)
    rng = np.random.default_rng(11)
    nb, bt, slots = paged_layout(rng, [X, Y, Z], BS, spare=2)
    key = (rng.standard_normal((slots.size, H, D)) * 1.3).astype(np.float32)
    value = rng.standard_normal((slots.size, H, D)).astype(np.float32)
    cache = ref.new_cache(fmt, nb, BS, H)
    ref.store(cache, key, value, slots, fmt)
    q = torch.from_numpy(rng.standard_normal((RECOMPUTE + 30, H * G, D)).astype(np.float32)).to(DEV, dtype)
    return (KernelParams.build(fmt, DEV), torch.from_numpy(cache).to(DEV), torch.from_numpy(bt).to(DEV), q)


def _i32(x):
    return torch.tensor(x, dtype=torch.int32, device=DEV)


def _outputs(params, cache, bt, q, cfg):
    """X's last RECOMPUTE query rows, computed five ways; returns {way: tensor [RECOMPUTE, Hq, D]}
    (ways that compute only the last row repeat it)."""
    x_row, y_row, z_row = bt[0:1], bt[1:2], bt[2:3]
    qx = q[:RECOMPUTE]  # row i = X's token at position X - RECOMPUTE + i
    out = {}
    # decoded alone, one token at a time (each with its own cache length)
    out["alone"] = torch.cat([decode_attention(qx[i:i + 1], cache, x_row, _i32([X - RECOMPUTE + i + 1]), params,
                                               config=cfg) for i in range(RECOMPUTE)])
    # the last token decoded in a batch of decodes, X in the middle
    b = decode_attention(torch.cat([q[RECOMPUTE:RECOMPUTE + 1], qx[-1:], q[RECOMPUTE + 1:RECOMPUTE + 2]]), cache,
                         torch.cat([y_row, x_row, z_row]), _i32([Y, X, Z]), params, config=cfg)
    out["decode_batch"] = b[1:2].expand(RECOMPUTE, -1, -1)
    # the last token as a decode row of a mixed batch: Y prefills 20 tokens, Z 5
    qm = torch.cat([q[RECOMPUTE:RECOMPUTE + 20], qx[-1:], q[RECOMPUTE + 20:RECOMPUTE + 25]])
    m = paged_attention(qm, cache, torch.cat([y_row, x_row, z_row]), _i32([Y, X, Z]), _i32([0, 20, 21, 26]), params,
                        config=cfg)
    out["mixed_batch"] = m[20:21].expand(RECOMPUTE, -1, -1)
    # recomputed: X's last RECOMPUTE tokens as one extend chunk, alone and beside a Z chunk
    out["recompute"] = paged_attention(qx, cache, x_row, _i32([X]), _i32([0, RECOMPUTE]), params, config=cfg)
    r = paged_attention(torch.cat([q[RECOMPUTE:RECOMPUTE + 7], qx]), cache, torch.cat([z_row, x_row]), _i32([Z, X]),
                        _i32([0, 7, 7 + RECOMPUTE]), params, config=cfg)
    out["recompute_batch"] = r[7:]
    return {k: v.float().cpu() for k, v in out.items()}


def _last_rows_only(ways):
    return {k: v[-1] for k, v in ways.items()}


@pytest.mark.parametrize("preset,dtype", [("k4v3", torch.bfloat16), ("k4g4", torch.bfloat16),
                                          ("tq3", torch.float32)])
def test_rows_bit_identical_across_batches(preset, dtype):
    params, cache, bt, q = _setup(preset, dtype)
    # splits of 4 tiles and a small buffer budget: the comparisons span several fixed splits and both
    # ways of combining them, one program per split (decode rows) and one program for all of a row's
    # splits (the recomputed chunk)
    cfg = batch_invariant_config(DEV)
    cfg = dataclasses.replace(cfg, bi_chunk=4 * min(cfg.block_tokens, 32), bi_parallel_bytes=1 << 17)
    max_kv, hq = bt.shape[1] * BS, H * G
    splits, seq = batch_invariant_splits(1, hq, max_kv, acc_width(params), cfg)
    assert splits > 1 and not seq
    assert batch_invariant_splits(RECOMPUTE + 1, hq, max_kv, acc_width(params), cfg) == (1, 1)
    ways = _outputs(params, cache, bt, q, cfg)
    assert torch.isfinite(ways["alone"]).all()
    for k in ("recompute", "recompute_batch"):  # every recomputed row equals its decode alone
        assert torch.equal(ways[k], ways["alone"]), k
    last = _last_rows_only(ways)
    for k, v in last.items():
        assert torch.equal(v, last["alone"]), k
    # and it is still the attention of SPEC §9
    want = ref.paged_attention(q[RECOMPUTE - 1:RECOMPUTE].float().cpu().numpy(), cache.cpu().numpy(),
                               bt[0:1].cpu().numpy(), np.array([X], np.int32), params.fmt)
    tol = tqf.ATTN_RTOL_FP32 if dtype == torch.float32 else tqf.ATTN_RTOL_HALF
    err = np.linalg.norm(last["alone"].numpy() - want[0]) / np.linalg.norm(want[0])
    assert err < tol


def test_default_mode_is_not_bit_identical():
    """Negative control: with the default config the same comparisons differ in some bits (so the
    test above would notice a batch-dependent launch), yet stay within SPEC §10's tolerance."""
    params, cache, bt, q = _setup("k4v3", torch.bfloat16)
    ways = _outputs(params, cache, bt, q, None)
    last = _last_rows_only(ways)
    differ = [k for k, v in last.items() if not torch.equal(v, last["alone"])]
    differ += [k for k in ("recompute", "recompute_batch") if not torch.equal(ways[k], ways["alone"])]
    assert differ, "the default mode happened to be bit-identical: the control shows nothing"
    for k, v in last.items():
        assert (v - last["alone"]).norm() / last["alone"].norm() < tqf.ATTN_RTOL_HALF, k


def _extend_chunks(params, cache, bt, q, cfg, cuts):
    """X's last RECOMPUTE rows computed as consecutive extend chunks ending at ``cuts`` (row
    indices; each chunk is its own launch with the cache length of its last row)."""
    out, lo = [], 0
    for hi in cuts:
        out.append(paged_attention(q[lo:hi], cache, bt[0:1], _i32([X - RECOMPUTE + hi]), _i32([0, hi - lo]), params,
                                   config=cfg))
        lo = hi
    return torch.cat(out).float().cpu()


def test_default_mode_fp32_rows_independent_of_their_chunk():
    """fp32 queries in the default mode, one split per row (every launch whose block table is no
    wider than min_chunk tokens): a row computed by the extend kernel is bit-identical whichever
    chunk it is in -- the whole recomputed chunk, the chunk beside another sequence's, chunks cut
    elsewhere, one token per launch. The fp32 value dot takes no tile-wide scale: with one, a
    row's sums depended on how far its chunk reached (found while diagnosing the GPU load mismatch
    of results/2026-12-03-h200-vllm-tests/results-gpu-2026-12-03c.md, which was gone in the next run). The decode kernel
    computes the same rows within SPEC §10's tolerance, not bit-identically: on an H200 the two
    kernels' rows differ in the last bits (results/2026-12-03-h200-conformance/gpu-2026-12-03c.md; the kernels are
    compiled for different tile shapes, so their reductions need not take the same order).
    Batch-invariant mode sends decode rows through the extend kernel for that reason."""
    params, cache, bt, q = _setup("tq3", torch.float32)
    cfg = dataclasses.replace(default_config(DEV), min_chunk=1 << 20)
    ways = _outputs(params, cache, bt, q, cfg)
    qx = q[:RECOMPUTE]
    chunked = {"cut_7_19": _extend_chunks(params, cache, bt, qx, cfg, [7, 19, RECOMPUTE]),
               "one_per_launch": _extend_chunks(params, cache, bt, qx, cfg, list(range(1, RECOMPUTE + 1)))}
    assert torch.isfinite(ways["recompute"]).all()
    for k, v in [("recompute_batch", ways["recompute_batch"]), *chunked.items()]:
        assert torch.equal(v, ways["recompute"]), k
    assert torch.equal(ways["mixed_batch"][-1], ways["recompute"][-1])  # a decode row of a mixed batch
    for k in ("alone", "decode_batch"):  # the decode kernel
        rows = ways["recompute"] if k == "alone" else ways["recompute"][-1:]
        err = (ways[k][:rows.shape[0]] - rows).norm() / rows.norm()
        assert err < tqf.ATTN_RTOL_FP32, k


def test_batch_invariant_validation():
    with pytest.raises(ValueError, match=r"batch_invariant=1 is not supported; allowed values: True, False"):
        AttnConfig(batch_invariant=1)
    for bad in (0, 100, 64.0):  # not a positive multiple of block_tokens=128
        with pytest.raises(ValueError, match=rf"bi_chunk={bad!r} is not supported; allowed values: positive multiples "
                                             r"of block_tokens=128"):
            AttnConfig(bi_chunk=bad)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=rf"bi_parallel_bytes={bad!r} is not supported; allowed values: integers"):
            AttnConfig(bi_parallel_bytes=bad)
    params, cache, bt, q = _setup("tq3", torch.bfloat16)
    with pytest.raises(ValueError, match=r"num_splits=4 is not supported in batch-invariant mode"):
        decode_attention(q[:1], cache, bt[0:1], _i32([X]), params, num_splits=4, config=batch_invariant_config(DEV))
    assert batch_invariant_config(DEV).batch_invariant and not AttnConfig().batch_invariant

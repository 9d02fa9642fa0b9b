"""The step dispatcher and the dense prefill path (dispatch.py, plan.py, prefill.py) against the
packed-tile kernel (extend.py, the second oracle) and the reference; the store's two rotation
methods.  CPU: TRITON_INTERPRET=1; CUDA when available (there the dense path runs vLLM's
FlashAttention when vLLM is importable, else torch SDPA, in bf16).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from turboquant import format as tqf
from turboquant import reference as ref
from turboquant.conformance.cases import paged_layout, round_to
from turboquant.conformance.compare import compare_slots, rel_err
from turboquant.triton_impl import (
    AttnConfig,
    KernelParams,
    attention,
    batch_invariant_config,
    dense_prefill_supported,
    paged_attention,
    plan_attention,
    store_kv,
)
from turboquant.triton_impl import prefill as prefill_mod
from turboquant.triton_impl import rotate as rotate_mod
from turboquant.triton_impl.launch import default_config
from turboquant.triton_impl.rotate import rotate_rows

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DENSE = [p for p in tqf.PRESETS if not tqf.get_preset(p).name.endswith("_qjl")]
# every step for every preset on a GPU; under the interpreter (CI time) the other presets at one step
FULL = DENSE if DEV.type == "cuda" else ["tq3", "k4v3", "k4g4", "tq2.5"]


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x)).to(DEV)


def _step(preset, seq_lens, q_lens, h=2, g=4, bs=16, seed=0, nan_token=None, nan_in="key"):
    """A cache written by the reference, bf16 queries, the step's host plan."""
    fmt = tqf.LayerFormat(tqf.get_preset(preset), 128, layer=1)
    rng = np.random.default_rng(seed)
    nb, bt, slots = paged_layout(rng, seq_lens, bs, spare=2)
    key = round_to(rng.standard_normal((slots.size, h, 128)) * 1.3, "bfloat16")
    value = round_to(rng.standard_normal((slots.size, h, 128)), "bfloat16")
    if nan_token is not None:
        (key if nan_in == "key" else value)[nan_token, 0, 5] = np.nan
    cache = ref.new_cache(fmt, nb, bs, h)
    ref.store(cache, key, value, slots, fmt)
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    q = round_to(rng.standard_normal((int(qsl[-1]), h * g, 128)) * 1.5, "bfloat16")
    sl = np.asarray(seq_lens, np.int32)
    args = (_t(q).to(torch.bfloat16), _t(cache), _t(bt), _t(sl), _t(qsl), KernelParams.build(fmt, DEV))
    want = ref.paged_attention(q, cache, bt, sl, fmt, qsl)
    return args, plan_attention(torch.from_numpy(qsl), torch.from_numpy(sl), DEV), want


# decodes first (vLLM's order), whole prompts, chunks over a history, a one-row sequence after a prefill
STEPS = [((37, 50, 41), (1, 1, 12)), ((64,), (64,)), ((90, 23), (20, 23)), ((45, 30, 8), (1, 9, 1))]


@pytest.mark.parametrize("preset,step", [(p, s) for p in DENSE for s in range(len(STEPS)) if p in FULL or s == 0])
def test_step_matches_packed_tile_kernel_and_reference(preset, step):
    seq_lens, q_lens = STEPS[step]
    args, plan, want = _step(preset, seq_lens, q_lens, seed=step)
    assert dense_prefill_supported(args[-1], torch.bfloat16, DEV, default_config(DEV))
    got = attention(*args, plan=plan).float().cpu().numpy()
    tile = paged_attention(*args).float().cpu().numpy()
    assert rel_err(got, want) <= tqf.ATTN_RTOL_HALF
    assert rel_err(got, tile) <= tqf.ATTN_RTOL_HALF
    # without a plan, attention makes one from the device tensors: same rows
    np.testing.assert_array_equal(attention(*args).float().cpu().numpy(), got)
    # the rotations on the other side (the decoded workspace), or on the side with fewer rows (auto;
    # the default rotates the query rows): the same attention
    for rotation in ("kv", "auto"):
        cfg = dataclasses.replace(default_config(DEV), dense_rotation=rotation)
        side = attention(*args, plan=plan, config=cfg).float().cpu().numpy()
        assert rel_err(side, want) <= tqf.ATTN_RTOL_HALF, rotation
        assert rel_err(side, got) <= tqf.ATTN_RTOL_HALF, rotation


def test_auto_rotates_the_side_with_fewer_rows():
    """A whole prompt under GQA rotates its workspace (cached tokens x KV heads < 2 x rows x query
    heads); a short chunk over a long history its query rows; MHA never the workspace."""
    assert prefill_mod.rotates_kv("auto", query_rows=2048, cached_tokens=2048, num_q_heads=32, num_kv_heads=8)
    assert not prefill_mod.rotates_kv("auto", query_rows=2048, cached_tokens=34816, num_q_heads=32, num_kv_heads=8)
    assert not prefill_mod.rotates_kv("auto", query_rows=512, cached_tokens=512, num_q_heads=8, num_kv_heads=8)
    assert prefill_mod.rotates_kv("kv", 1, 10**6, 8, 8) and not prefill_mod.rotates_kv("query", 10**6, 1, 32, 1)
    with pytest.raises(ValueError, match=r"rotation='both' is not supported; allowed values: "
                                         r"\['auto', 'query', 'kv'\]"):
        prefill_mod.rotates_kv("both", 1, 1, 1, 1)
    with pytest.raises(ValueError, match="dense_rotation='both' is not supported; allowed values"):
        AttnConfig(dense_rotation="both")


def test_workspace_parts_give_the_same_rows(monkeypatch):
    """A step whose K', V' exceed MAX_WORKSPACE_BYTES runs in parts of whole sequences."""
    args, plan, want = _step("k4v3", (40, 70, 33, 9), (40, 5, 33, 2), seed=7)
    whole = attention(*args, plan=plan).float().cpu().numpy()
    row_bytes = 2 * 128 * (4 if DEV.type == "cpu" else 2) * 2
    monkeypatch.setattr(prefill_mod, "MAX_WORKSPACE_BYTES", 75 * row_bytes)
    assert len(plan.prefill.parts(75)) == 3
    parts = attention(*args, plan=plan).float().cpu().numpy()
    np.testing.assert_array_equal(parts, whole)
    assert rel_err(parts, want) <= tqf.ATTN_RTOL_HALF


@pytest.mark.parametrize("rotation", ["query", "kv"])
@pytest.mark.parametrize("preset", ["tq3", "k4g4", "tq2.5"])
@pytest.mark.parametrize("nan_in,q_len", [("key", 40), ("value", 40), ("key", 22), ("value", 22)])
def test_nonfinite_token_poisons_only_rows_that_see_it_on_the_dense_path(preset, nan_in, q_len, rotation):
    """A whole prompt and a chunk over a history (bottom-right mask), a non-finite key or value at
    position 25: NaN in exactly the rows at or after it, like the reference, whichever side is rotated."""
    args, plan, want = _step(preset, (40,), (q_len,), h=1, g=2, nan_token=25, nan_in=nan_in)
    cfg = dataclasses.replace(default_config(DEV), dense_rotation=rotation)
    got = attention(*args, plan=plan, config=cfg).float().cpu().numpy()
    first = 25 - (40 - q_len)  # the first query row that sees token 25
    assert np.isnan(want[first:]).all() and not np.isnan(want[:first]).any()
    assert np.isnan(got[first:]).all() and not np.isnan(got[:first]).any()


def test_which_rows_take_the_dense_path():
    qjl = KernelParams.build(tqf.LayerFormat(tqf.get_preset("tq4_qjl"), 128), DEV)
    tq3 = KernelParams.build(tqf.LayerFormat(tqf.get_preset("tq3"), 128), DEV)
    cfg = default_config(DEV)
    assert not dense_prefill_supported(qjl, torch.bfloat16, DEV, cfg)
    assert not dense_prefill_supported(tq3, torch.bfloat16, DEV, batch_invariant_config(DEV))
    assert not dense_prefill_supported(tq3, torch.bfloat16, DEV, dataclasses.replace(cfg, dense_prefill=False))
    assert dense_prefill_supported(tq3, torch.bfloat16, DEV, cfg)
    with pytest.raises(ValueError, match="dense_prefill='yes' is not supported; allowed values: True, False"):
        AttnConfig(dense_prefill="yes")


def test_kernel_only_config_equals_paged_attention():
    """dense_prefill=False: prefill rows take the packed-tile kernel (decodes still the decode kernel)."""
    args, plan, _ = _step("tq3", (30, 52), (30, 7), seed=3)
    cfg = dataclasses.replace(default_config(DEV), dense_prefill=False)
    got = attention(*args, plan=plan, config=cfg)
    np.testing.assert_array_equal(got.float().cpu().numpy(), paged_attention(*args).float().cpu().numpy())


def test_plan_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="num_seqs \\+ 1 = 3"):
        plan_attention(torch.tensor([0, 1]), torch.tensor([4, 5]), DEV)
    with pytest.raises(ValueError, match="more query rows than seq_lens"):
        plan_attention(torch.tensor([0, 6]), torch.tensor([5]), DEV)
    args, _, _ = _step("tq3", (30, 12), (1, 12))
    other = plan_attention(torch.tensor([0, 2, 14]), torch.tensor([30, 12]), DEV)
    with pytest.raises(ValueError, match="plan does not describe this batch"):
        attention(*args, plan=other)


def test_plan_splits_decodes_from_prefills():
    plan = plan_attention(torch.tensor([0, 1, 2, 12, 13]), torch.tensor([40, 9, 30, 8]), "cpu")
    assert plan.num_decodes == 2
    pp = plan.prefill
    assert (pp.first_seq, pp.first_token, pp.q_lens, pp.k_lens) == (2, 2, (10, 1), (30, 8))
    assert pp.cu_k.tolist() == [0, 30, 38] and pp.cu_q.tolist() == [0, 10, 11]
    assert plan_attention(torch.tensor([0, 1, 2]), torch.tensor([4, 5]), "cpu").prefill is None


@pytest.mark.parametrize("rotation", ["tc", "fma"])
def test_store_rotation_methods_meet_the_store_contract(rotation):
    """Both ways of computing the rotation (3xTF32 tensor cores on a GPU, fp32 FMA) give slots
    that equal the reference's under SPEC §10's margins."""
    fmt = tqf.LayerFormat(tqf.get_preset("tq4_qjl"), 128)
    p = KernelParams.build(fmt, DEV)
    rng = np.random.default_rng(11)
    key, value = (round_to(rng.standard_normal((70, 2, 128)) * s, "bfloat16") for s in (1.0, 3.0))
    cache = torch.zeros(fmt.cache_shape(5, 16, 2), dtype=torch.uint8, device=DEV)
    slots = torch.arange(70, device=DEV)
    store_kv(_t(key).to(torch.bfloat16), _t(value).to(torch.bfloat16), cache, slots, p, rotation=rotation)
    slots_written = cache.permute(0, 2, 1, 3).reshape(-1, 2, fmt.slot_bytes)[:70]
    rep = compare_slots(slots_written.cpu().numpy(), key, value, fmt)
    assert rep.ok, rep
    with pytest.raises(ValueError, match="rotation='bf16' is not supported; allowed values: \\['tc', 'fma'\\]"):
        store_kv(_t(key), _t(value), cache, slots, p, rotation="bf16")


@pytest.mark.parametrize("persistent", [True, False])
@pytest.mark.parametrize("preset", ["tq2.5", "tq3", "k4v3"])
@pytest.mark.parametrize("prec", ["bf16x2", "ieee"])
def test_row_rotations_are_fp32_accurate(prec, preset, persistent, monkeypatch):
    """q' = Pi q and its inverse at each precision the kernels use (on a GPU: whatever
    _precision picks for fp32 outputs and for bf16), on both kernels: tq2.5 has two instances over
    gathered channels (always _rotate_kernel), tq3 / k4v3 one instance over the whole head
    (_rotate_persistent_kernel unless persistent=False)."""
    if DEV.type == "cpu":
        if prec == "bf16x2":
            pytest.skip("the Triton interpreter has no bf16 dot (it multiplies the raw 16-bit patterns)")
        monkeypatch.setattr(rotate_mod, "_precision", lambda x: prec)
    fmt = tqf.LayerFormat(tqf.get_preset(preset), 128, layer=2)
    p = KernelParams.build(fmt, DEV)
    rng = np.random.default_rng(12)
    q = _t(round_to(rng.standard_normal((70, 4, 128)), "bfloat16")).to(torch.bfloat16)
    w = prefill_mod.dense_width(p)
    qd = rotate_rows(q, p, torch.empty((70, 4, w), dtype=torch.float32, device=DEV), inverse=False,
                     persistent=persistent)
    back = rotate_rows(qd.to(torch.bfloat16), p, torch.empty((70, 4, 128), dtype=torch.float32, device=DEV),
                       inverse=True, persistent=persistent)
    from turboquant.reference.quantizer import layer_params

    lp = layer_params(fmt)
    seg = 0
    for inst in lp.keys:
        m = inst.instance.dim
        want = q.double().cpu().numpy()[..., inst.channels] @ inst.rotation.astype(np.float64).T
        got = qd[..., seg:seg + m].double().cpu().numpy()
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
        assert not qd[..., seg + m: seg + p.meta[f"K{lp.keys.index(inst)}_MP"]].any()
        seg += p.meta[f"K{lp.keys.index(inst)}_MP"]
    # the inverse of the bf16-rounded q' is q within bf16 rounding of q'
    assert rel_err(back.cpu().numpy(), q.float().cpu().numpy()) <= 4e-3


@pytest.mark.parametrize("tiling", [(16, 1, 3), (64, 4, 1)])
def test_persistent_rotation_tiling_does_not_change_the_result(tiling):
    """The persistent rotation's tiling (rows per tile, warps, programs per SM: the benchmark's
    sweep) changes only the schedule: every row is rotated once, with the same products."""
    p = KernelParams.build(tqf.LayerFormat(tqf.get_preset("tq3"), 128), DEV)
    q = _t(np.random.default_rng(3).standard_normal((37, 4, 128))).to(torch.bfloat16)
    w = prefill_mod.dense_width(p)
    want = rotate_rows(q, p, torch.empty((37, 4, w), dtype=torch.float32, device=DEV), inverse=False)
    got = rotate_rows(q, p, torch.full((37, 4, w), float("nan"), dtype=torch.float32, device=DEV), inverse=False,
                      tiling=tiling)
    assert torch.equal(got, want)


@pytest.mark.parametrize("tiling", [(24, 4, 2), (32, 3, 2), (32, 4, 0)])
def test_persistent_rotation_refuses_a_bad_tiling(tiling):
    p = KernelParams.build(tqf.LayerFormat(tqf.get_preset("tq3"), 128), DEV)
    q = torch.zeros((2, 4, 128), dtype=torch.bfloat16, device=DEV)
    with pytest.raises(ValueError, match="tiling must be"):
        rotate_rows(q, p, torch.empty((2, 4, prefill_mod.dense_width(p)), device=DEV), inverse=False, tiling=tiling)


@pytest.mark.parametrize("preset", ["tq3", "k4v3", "tq2.5"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("precision", ["fma", "bf16x3"])
def test_few_rows_inverse_rotation_matches_the_tile_kernel(preset, dtype, precision):
    """rotate_rows(inverse=True, few_rows=True) (merge.merge_splits of a decode step: output columns
    spread over programs, fp32 FMA or three bf16 tensor-core parts) against the one-tile-per-program
    kernel: the same out = Pi^T o' within fp32 rounding (3xTF32 or fp32 there; bf16x3: ~2^-16 of the
    row), channels scattered alike, columns past the instance ignored; tq2.5 (two instances) keeps the
    tile kernel."""
    p = KernelParams.build(tqf.LayerFormat(tqf.get_preset(preset), 128, layer=1), DEV)
    w = prefill_mod.dense_width(p)
    x = _t(np.random.default_rng(5).standard_normal((37, 4, w))).to(torch.float32)
    want = rotate_rows(x, p, torch.empty((37, 4, 128), dtype=dtype, device=DEV), inverse=True, persistent=False)
    got = rotate_rows(x, p, torch.full((37, 4, 128), float("nan"), dtype=dtype, device=DEV), inverse=True,
                      few_rows=True, columns_precision=precision)
    assert not got.isnan().any()
    tol = 1e-5 if dtype == torch.float32 else 8e-3  # bf16 outputs: one rounding step apart at most
    if precision == "bf16x3" and dtype == torch.float32:
        tol = 2.0 ** -15
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * float(want.abs().max()))
    if precision == "bf16x3" and dtype == torch.float32 and preset == "tq3":  # not the FMA kernel's bits
        fma = rotate_rows(x, p, torch.empty_like(got), inverse=True, few_rows=True)
        assert not torch.equal(got, fma)


def test_columns_precision_is_checked():
    p = KernelParams.build(tqf.LayerFormat(tqf.get_preset("tq3"), 128, layer=1), DEV)
    x = torch.zeros((2, 4, 128), dtype=torch.float32, device=DEV)
    with pytest.raises(ValueError, match=r"mma_output_rotation='tf32' is not supported; allowed values: "
                                         r"\['fma', 'bf16x3'\]"):
        rotate_rows(x, p, torch.empty_like(x), inverse=True, few_rows=True, columns_precision="tf32")
    with pytest.raises(ValueError, match=r"mma_output_rotation='bf16' is not supported; allowed values: "
                                         r"\['fma', 'bf16x3', 'fused'\]"):
        AttnConfig(mma_output_rotation="bf16")

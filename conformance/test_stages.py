"""Stage-by-stage conformance of every available implementation against the reference.

One shared set of cases (cases.py) x every implementation (impls.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from turboquant import format as tqf
from turboquant import reference as ref
from turboquant.conformance.cases import cases, make_inputs
from turboquant.conformance.compare import compare_slots, float_field_mask, rel_err
from turboquant.conformance.impls import available
from turboquant.reference.cache import gather_tokens

IMPLS = available()
CASES = {impl.name: cases(impl.scale) for impl in IMPLS}
PARAMS = [pytest.param(impl, c, id=f"{impl.name}-{c.id}") for impl in IMPLS for c in CASES[impl.name]]


def _store(impl, case, inp, garbage_seed=1):
    fmt = case.fmt
    rng = np.random.default_rng(garbage_seed)
    cache = rng.integers(0, 256, fmt.cache_shape(inp["num_blocks"], case.block_size, case.num_kv_heads), np.uint8)
    return cache, impl.store(cache, inp["key"], inp["value"], inp["slot_mapping"], fmt)


@pytest.mark.parametrize("impl,case", PARAMS)
def test_rotated_coordinates(impl, case):
    if impl.rotated is None:
        pytest.skip(f"{impl.name} exposes no separate rotation stage")
    inp = make_inputs(case)
    for tensor in ("key", "value"):
        if tensor == "value" and case.fmt.preset.value_mode == "group":
            continue
        want = ref.encode_stages(inp["key"], inp["value"], case.fmt)[tensor]
        got = impl.rotated(inp[tensor], case.fmt, tensor)
        for i, y in enumerate(got):
            np.testing.assert_allclose(y, want[i]["y"], atol=tqf.CODE_MARGIN / 3, rtol=0)


@pytest.mark.parametrize("impl,case", PARAMS)
def test_store_bytes(impl, case):
    """Packed slots equal the reference under the margin rule; no other byte changes."""
    inp = make_inputs(case)
    before, after = _store(impl, case, inp)
    sm = inp["slot_mapping"]
    keep = sm >= 0
    bs = case.block_size
    written = np.zeros(before.shape[:3], bool)
    written[sm[keep] // bs, :, sm[keep] % bs] = True
    untouched = ~written
    assert np.array_equal(after[untouched], before[untouched]), "bytes outside the written slots changed"
    got = after[sm[keep] // bs, :, sm[keep] % bs]  # [n, h, S]
    rep = compare_slots(got, inp["key"][keep], inp["value"][keep], case.fmt)
    print(f"\n{impl.name} {case.id}: {rep.tokens} slots, code mismatches in margin "
          f"{rep.code_mismatch_in_margin}/{rep.codes} ({rep.code_mismatch_rate:.2e}), "
          f"sign mismatches in margin {rep.sign_mismatch_in_margin}/{rep.signs}, "
          f"max norm rel err {rep.norm_max_rel_err:.1e}")
    assert rep.ok, rep


@pytest.mark.parametrize("impl,case", PARAMS)
def test_dequantized_vectors(impl, case):
    """Dequantizing the implementation's bytes gives the reference's vectors
    (within the norms' NORM_RTOL) wherever codes, signs and scales agree;
    code mismatches themselves are bounded by test_store_bytes."""
    inp = make_inputs(case)
    _, after = _store(impl, case, inp)
    sm = inp["slot_mapping"]
    keep = sm >= 0
    got = after[sm[keep] // case.block_size, :, sm[keep] % case.block_size]
    want = ref.encode_slots(inp["key"][keep], inp["value"][keep], case.fmt)
    fmask = float_field_mask(case.fmt)
    same = np.all(got[..., ~fmask] == want[..., ~fmask], axis=-1)
    kg, vg = ref.decode_slots(got, case.fmt)
    kw, vw = ref.decode_slots(want, case.fmt)
    # gamma enters through a sum with the centroid term: allow RNORM_ATOL on top of NORM_RTOL
    for a, b in ((kg[same], kw[same]), (vg[same], vw[same])):
        scale = np.linalg.norm(np.nan_to_num(b), axis=-1, keepdims=True)
        err = np.abs(np.nan_to_num(a) - np.nan_to_num(b)) / np.maximum(scale, 1e-30)
        assert np.array_equal(np.isnan(a), np.isnan(b))
        assert float(err.max(initial=0.0)) <= 2 * tqf.NORM_RTOL + 4 * tqf.RNORM_ATOL
    assert same.mean() > 0.9, f"only {same.mean():.1%} of slots have identical codes/signs/scales"


def dequantized_attention(query, cache, block_table, seq_lens, query_start_loc, fmt):
    """Independent oracle: dequantize each sequence's slots, then exact attention."""
    out = np.zeros(query.shape, np.float32)
    for b in range(len(seq_lens)):
        q0, q1, L = int(query_start_loc[b]), int(query_start_loc[b + 1]), int(seq_lens[b])
        if q1 == q0:
            continue
        k, v = ref.decode_slots(gather_tokens(cache, block_table[b], L).transpose(1, 0, 2), fmt)
        out[q0:q1] = ref.dense_attention(query[q0:q1], k, v, causal_offset=L - (q1 - q0))
    return out


@pytest.mark.parametrize("impl,case", PARAMS)
def test_attention_output(impl, case):
    """Decode / extend over the reference's cache bytes, against exact attention
    over the dequantized vectors of those bytes."""
    fmt = case.fmt
    inp = make_inputs(case)
    cache = ref.new_cache(fmt, inp["num_blocks"], case.block_size, case.num_kv_heads)
    ref.store(cache, inp["key"], inp["value"], inp["slot_mapping"], fmt)
    args = (inp["query"], cache, inp["block_table"], inp["seq_lens"], fmt)
    want = dequantized_attention(*args[:4], inp["query_start_loc"], fmt)
    got = impl.paged_attention(*args, query_start_loc=inp["query_start_loc"])
    tol = tqf.ATTN_RTOL_HALF if impl.half_output and case.dtype != "float32" else tqf.ATTN_RTOL_FP32
    err = rel_err(got, want)
    print(f"\n{impl.name} {case.id}: attention rel err {err:.2e} (tol {tol})")
    assert err <= tol

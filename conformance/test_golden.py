"""Golden byte-level vectors (conformance/golden/*.json): every implementation
must reproduce the committed cache bytes exactly (float32 norm fields within
NORM_RTOL / RNORM_ATOL, SPEC.md section 10) and the decode output within
SPEC.md's tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from turboquant import format as tqf
from turboquant.conformance import golden as G
from turboquant.conformance.compare import rel_err, slots_equal_under_contract
from turboquant.conformance.impls import available

IMPLS = available()


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
@pytest.mark.parametrize("preset", G.golden_presets())
def test_golden_store_bytes(impl, preset):
    g = G.load(preset)
    fmt = g["fmt"]
    cache = np.full(fmt.cache_shape(g["num_blocks"], g["block_size"], g["key"].shape[1]), G.CACHE_FILL, np.uint8)
    got = impl.store(cache, g["key"], g["value"], g["slot_mapping"], fmt)
    ok, msg = slots_equal_under_contract(got, g["cache"], fmt)  # float32 norms: NORM_RTOL
    assert ok, msg


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
@pytest.mark.parametrize("preset", G.golden_presets())
def test_golden_decode(impl, preset):
    g = G.load(preset)
    out = impl.paged_attention(g["query"], g["cache"], g["block_table"], g["seq_lens"], g["fmt"])
    assert np.all(np.isnan(out[1])), "a NaN key/Inf value must give NaN for exactly the queries that see it"
    tol = tqf.ATTN_RTOL_HALF if impl.half_output else tqf.ATTN_RTOL_FP32
    assert rel_err(out[0], g["output"][0]) <= tol

"""Golden byte-level vectors (conformance/golden/*.json): every implementation
must reproduce the committed cache bytes exactly and the decode output within
SPEC.md's tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from turboquant import format as tqf
from turboquant.conformance import golden as G
from turboquant.conformance.compare import rel_err
from turboquant.conformance.impls import available

IMPLS = available()


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
@pytest.mark.parametrize("preset", G.golden_presets())
def test_golden_store_bytes(impl, preset):
    g = G.load(preset)
    fmt = g["fmt"]
    cache = np.full(fmt.cache_shape(g["num_blocks"], g["block_size"], g["key"].shape[1]), G.CACHE_FILL, np.uint8)
    got = impl.store(cache, g["key"], g["value"], g["slot_mapping"], fmt)
    diff = np.argwhere(got != g["cache"])
    assert diff.size == 0, f"{len(diff)} bytes differ, first at [block, head, token, byte] {diff[:5].tolist()}"


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
@pytest.mark.parametrize("preset", G.golden_presets())
def test_golden_decode(impl, preset):
    g = G.load(preset)
    out = impl.paged_attention(g["query"], g["cache"], g["block_table"], g["seq_lens"], g["fmt"])
    assert np.all(np.isnan(out[1])), "a NaN key/Inf value must give NaN for exactly the queries that see it"
    tol = tqf.ATTN_RTOL_HALF if impl.half_output else tqf.ATTN_RTOL_FP32
    assert rel_err(out[0], g["output"][0]) <= tol

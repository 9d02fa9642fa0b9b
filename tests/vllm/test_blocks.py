"""(1) Capacity: the block manager sizes the pool by LayerFormat.page_bytes.

With the same KV-cache memory, vLLM's number of blocks against its bf16 cache
must match bf16_slot_bytes / slot_bytes within 2%, and every layer's cache
tensor must be uint8 LayerFormat.cache_shape(num_blocks, block_size, heads).
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")
from tq_helpers import BLOCK_SIZE, llm_kwargs, num_blocks  # noqa: E402

from turboquant import format as tqf  # noqa: E402
from turboquant.vllm_integration import debug  # noqa: E402

HEAD_SIZE, NUM_KV_HEADS = 64, 2  # the tiny model's


@pytest.fixture(scope="module")
def bf16_blocks(tiny_model, engines):
    llm = engines.get(**llm_kwargs(tiny_model, backend="default"))
    seen = []
    with debug.recording(lambda ev, d: seen.append(ev)):
        llm.generate([{"prompt_token_ids": [1, 5, 6]}], use_tqdm=False)
    assert not seen, "the default backend must not reach the TurboQuant layers"
    return num_blocks(llm)


@pytest.mark.parametrize("preset", ["tq3", "tq4_qjl", "k4g4"])
def test_block_count_matches_byte_ratio(preset, bf16_blocks, tiny_model, engines):
    from vllm import SamplingParams

    llm = engines.get(**llm_kwargs(tiny_model, preset=preset, store="reference", attention="reference"))
    fmt = tqf.LayerFormat(tqf.get_preset(preset), HEAD_SIZE)
    got = num_blocks(llm)
    want = bf16_blocks * tqf.bf16_slot_bytes(HEAD_SIZE) / fmt.slot_bytes
    assert abs(got / want - 1) <= 0.02, (preset, got, want, bf16_blocks)

    shapes = set()
    with debug.recording(lambda ev, d: shapes.add((tuple(d["kv_cache"].shape), d["kv_cache"].dtype,
                                                   d["kv_cache"].is_contiguous()))):
        llm.generate([{"prompt_token_ids": [1, 5, 6]}], SamplingParams(max_tokens=2), use_tqdm=False)
    import torch

    # vLLM may hand a layer more blocks than the scheduler uses (e.g. the null block); the
    # tensor holds at least num_blocks pages of exactly page_bytes each.
    (shape, dtype, contiguous), = shapes
    assert dtype == torch.uint8 and contiguous
    assert shape[1:] == fmt.cache_shape(1, BLOCK_SIZE, NUM_KV_HEADS)[1:]
    assert shape[0] >= got
    assert fmt.page_bytes(BLOCK_SIZE, NUM_KV_HEADS) == BLOCK_SIZE * NUM_KV_HEADS * fmt.slot_bytes

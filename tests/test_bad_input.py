"""Every public reference entry point rejects bad input with an error naming the parameter."""

import numpy as np
import pytest

from turboquant import format as tqf
from turboquant import reference as ref
from turboquant.reference import codebook as cbk

FMT = tqf.LayerFormat(tqf.get_preset("tq3"), 128)


def kv(n=4, h=2, d=128, dtype=np.float32):
    return np.ones((n, h, d), dtype), np.ones((n, h, d), dtype)


def test_encode_rejects_wrong_dtype_and_shape():
    k, v = kv()
    with pytest.raises(TypeError, match=r"key.dtype=int64 is not supported; allowed: float16, float32, float64"):
        ref.encode_slots(k.astype(np.int64), v, FMT)
    with pytest.raises(ValueError, match="value must have last dimension head_size=128"):
        ref.encode_slots(k, np.ones((4, 2, 64), np.float32), FMT)
    with pytest.raises(TypeError, match="key must be a numpy.ndarray"):
        ref.encode_slots(k.tolist(), v, FMT)
    with pytest.raises(ValueError, match="key and value shapes differ"):
        ref.encode_slots(k, v[:2], FMT)


def test_store_rejects_bad_slot_mapping_and_cache():
    cache = ref.new_cache(FMT, 2, 4, 2)
    k, v = kv()
    with pytest.raises(ValueError, match=r"slot_mapping has slot 8 >= num_blocks \* block_size = 8"):
        ref.store(cache, k, v, np.array([0, 1, 2, 8]), FMT)
    with pytest.raises(ValueError, match="slot_mapping has duplicate"):
        ref.store(cache, k, v, np.array([0, 1, 1, -1]), FMT)
    with pytest.raises(ValueError, match=r"slot_mapping must be an integer array of shape \[4\]"):
        ref.store(cache, k, v, np.array([0.0, 1, 2, 3]), FMT)
    with pytest.raises(ValueError, match=r"num_kv_heads=2"):
        ref.store(cache, *kv(h=3), np.arange(4), FMT)
    with pytest.raises(ValueError, match="slot_bytes=104"):
        ref.store(np.zeros((2, 2, 4, 100), np.uint8), k, v, np.arange(4), FMT)
    with pytest.raises(TypeError, match="cache must be a uint8"):
        ref.store(np.zeros((2, 2, 4, 104), np.int8), k, v, np.arange(4), FMT)


def test_padding_slots_write_nothing():
    cache = ref.new_cache(FMT, 2, 4, 2)
    k, v = kv()
    ref.store(cache, k, v, np.array([-1, -1, -5, -1]), FMT)
    assert not cache.any()


def test_attention_rejects_bad_inputs():
    cache = ref.new_cache(FMT, 2, 4, 2)
    q = np.ones((1, 4, 128), np.float32)
    bt = np.array([[0, 1]], np.int32)
    with pytest.raises(ValueError, match="num_q_heads=3 must be a multiple of num_kv_heads=2"):
        ref.decode_attention(np.ones((1, 3, 128), np.float32), cache, bt, np.array([3]), FMT)
    with pytest.raises(ValueError, match=r"seq_lens must lie in \[0, max_blocks \* block_size = 8\]"):
        ref.decode_attention(q, cache, bt, np.array([9]), FMT)
    with pytest.raises(ValueError, match="block_table\\[0\\] references a block outside"):
        ref.decode_attention(q, cache, np.array([[0, 5]], np.int32), np.array([8]), FMT)
    with pytest.raises(ValueError, match="seq_lens must be an integer array"):
        ref.decode_attention(q, cache, bt, np.array([3.0]), FMT)
    with pytest.raises(ValueError, match="query_start_loc"):
        ref.paged_attention(q, cache, bt, np.array([3]), FMT, query_start_loc=np.array([0, 2]))
    with pytest.raises(ValueError, match="more query tokens than seq_lens"):
        ref.paged_attention(np.ones((3, 4, 128), np.float32), cache, bt, np.array([2]), FMT,
                            query_start_loc=np.array([0, 3]))


def test_codebook_errors():
    with pytest.raises(ValueError, match=r"bits=5 is not supported; allowed values: \[1, 2, 3, 4\]"):
        cbk.load(128, 5)
    with pytest.raises(ValueError, match="dim=100 has no shipped codebook"):
        cbk.load(100, 3)
    with pytest.raises(ValueError, match="dim must be an integer >= 3"):
        cbk.lloyd_max(2, 3)


def test_rotation_errors():
    from turboquant.reference.rotation import rotation_matrix, sylvester_hadamard

    with pytest.raises(ValueError, match="rotation='dct' is not supported"):
        rotation_matrix("dct", 64, 0)
    with pytest.raises(ValueError, match="power-of-two dimension, got d=96"):
        sylvester_hadamard(96)

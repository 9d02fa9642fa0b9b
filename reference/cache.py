"""The paged cache of one layer and the store into it (SPEC.md, "Page layout").

cache: uint8 [num_blocks, num_kv_heads, block_size, slot_bytes].  Token t of
a batch with slot_mapping[t] = s >= 0 goes to block s // block_size, offset
s % block_size, for every KV head; s < 0 is padding and writes nothing.
"""

from __future__ import annotations

import numpy as np

from turboquant import format as tqf

from .slot import check_kv, encode_slots


def new_cache(fmt: tqf.LayerFormat, num_blocks: int, block_size: int, num_kv_heads: int) -> np.ndarray:
    return np.zeros(fmt.cache_shape(num_blocks, block_size, num_kv_heads), np.uint8)


def check_cache(cache: np.ndarray, fmt: tqf.LayerFormat) -> None:
    if not isinstance(cache, np.ndarray) or cache.dtype != np.uint8 or cache.ndim != 4:
        raise TypeError("cache must be a uint8 numpy array [num_blocks, num_kv_heads, block_size, slot_bytes]")
    if cache.shape[-1] != fmt.slot_bytes:
        raise ValueError(f"cache.shape[-1]={cache.shape[-1]} but this format's slot_bytes={fmt.slot_bytes}")


def check_slot_mapping(slot_mapping: np.ndarray, num_tokens: int, num_slots: int) -> np.ndarray:
    sm = np.asarray(slot_mapping)
    if sm.ndim != 1 or sm.shape[0] != num_tokens or not np.issubdtype(sm.dtype, np.integer):
        raise ValueError(f"slot_mapping must be an integer array of shape [{num_tokens}], got {sm.dtype} {sm.shape}")
    valid = sm[sm >= 0]
    if valid.size and valid.max() >= num_slots:
        raise ValueError(f"slot_mapping has slot {int(valid.max())} >= num_blocks * block_size = {num_slots}")
    if np.unique(valid).size != valid.size:
        raise ValueError("slot_mapping has duplicate non-negative slots")
    return sm


def store(cache: np.ndarray, key: np.ndarray, value: np.ndarray, slot_mapping: np.ndarray,
          fmt: tqf.LayerFormat) -> None:
    """Encode key/value [num_tokens, num_kv_heads, head_size] into ``cache`` in place."""
    check_cache(cache, fmt)
    check_kv("key", key, fmt)
    check_kv("value", value, fmt)
    nb, h, bs, _ = cache.shape
    if key.ndim != 3 or key.shape[1] != h or key.shape != value.shape:
        raise ValueError(
            f"key and value must be [num_tokens, num_kv_heads={h}, head_size], got {key.shape}, {value.shape}"
        )
    sm = check_slot_mapping(slot_mapping, key.shape[0], nb * bs)
    keep = sm >= 0
    slots = encode_slots(key[keep], value[keep], fmt)  # [n, h, slot_bytes]
    cache[sm[keep] // bs, :, sm[keep] % bs, :] = slots


def gather_tokens(cache: np.ndarray, block_table_row: np.ndarray, seq_len: int) -> np.ndarray:
    """Slots of the first ``seq_len`` tokens of one sequence: [num_kv_heads, seq_len, slot_bytes]."""
    bs = cache.shape[2]
    nblk = -(-seq_len // bs)
    pages = cache[np.asarray(block_table_row[:nblk], dtype=np.int64)]  # [nblk, h, bs, S]
    return pages.transpose(1, 0, 2, 3).reshape(cache.shape[1], nblk * bs, -1)[:, :seq_len]

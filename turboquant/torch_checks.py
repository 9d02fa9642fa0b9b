"""Argument checks shared by the torch-tensor entry points (the Triton kernels and the
torch CPU path): wrong dtype -> TypeError, wrong shape / value -> ValueError, each naming
the parameter and what is allowed.  Torch only: no Triton import."""

from __future__ import annotations

import torch

from turboquant import format as tqf

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
QUERY_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


def _names(dts) -> list[str]:
    return [str(d).replace("torch.", "") for d in dts]


def check_tensor(name: str, x, dtypes, device: torch.device | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name}.dtype={x.dtype} is not supported; allowed: {_names(dtypes)}")
    if device is not None and x.device.type != device.type:
        raise ValueError(f"{name} is on {x.device}, but the kernel parameters are on {device}")


def check_kv(name: str, x, fmt: tqf.LayerFormat, device, ndim: int = 3) -> None:
    check_tensor(name, x, FLOAT_DTYPES, device)
    if x.ndim != ndim or x.shape[-1] != fmt.head_size:
        raise ValueError(f"{name} must be a {ndim}-d tensor with last dimension head_size={fmt.head_size}, "
                         f"got shape {tuple(x.shape)}")


def check_cache(name: str, cache, fmt: tqf.LayerFormat, device) -> None:
    check_tensor(name, cache, (torch.uint8,), device)
    if cache.ndim != 4 or cache.shape[-1] != fmt.slot_bytes:
        raise ValueError(f"{name} must be uint8 [num_blocks, num_kv_heads, block_size, slot_bytes={fmt.slot_bytes}] "
                         f"for preset {fmt.preset.name!r} at head_size={fmt.head_size}, got shape {tuple(cache.shape)}")
    if cache.stride(3) != 1 or cache.stride(2) != fmt.slot_bytes or cache.storage_offset() % tqf.SLOT_ALIGN:
        raise ValueError(f"{name} must have contiguous {fmt.slot_bytes}-byte slots (stride(2) == slot_bytes) "
                         f"starting {tqf.SLOT_ALIGN}-byte aligned")
    if cache.stride(1) % tqf.SLOT_ALIGN or cache.stride(0) % tqf.SLOT_ALIGN:
        raise ValueError(f"{name} strides must be multiples of {tqf.SLOT_ALIGN} bytes")


def check_slot_mapping(slot_mapping, num_tokens: int, device) -> None:
    check_tensor("slot_mapping", slot_mapping, INDEX_DTYPES, device)
    if slot_mapping.ndim != 1 or slot_mapping.shape[0] != num_tokens:
        raise ValueError(f"slot_mapping must be [num_tokens={num_tokens}], got shape {tuple(slot_mapping.shape)}")
    if not slot_mapping.is_contiguous():
        raise ValueError("slot_mapping must be contiguous")


def check_attention(query, cache, block_table, seq_lens, params, query_start_loc=None, out=None) -> None:
    """``params``: anything with ``fmt`` (LayerFormat) and ``device``."""
    fmt = params.fmt
    check_tensor("query", query, QUERY_DTYPES, params.device)
    if query.ndim != 3 or query.shape[-1] != fmt.head_size:
        raise ValueError(f"query must be [num_tokens, num_q_heads, head_size={fmt.head_size}], "
                         f"got shape {tuple(query.shape)}")
    check_cache("cache", cache, fmt, params.device)
    hq, hkv = query.shape[1], cache.shape[1]
    if hq % hkv:
        raise ValueError(f"num_q_heads={hq} must be a multiple of num_kv_heads={hkv}")
    check_tensor("block_table", block_table, INDEX_DTYPES, params.device)
    if block_table.ndim != 2:
        raise ValueError(f"block_table must be [num_seqs, max_blocks], got shape {tuple(block_table.shape)}")
    check_tensor("seq_lens", seq_lens, INDEX_DTYPES, params.device)
    if seq_lens.ndim != 1 or seq_lens.shape[0] != block_table.shape[0]:
        raise ValueError(f"seq_lens must be [num_seqs={block_table.shape[0]}], got shape {tuple(seq_lens.shape)}")
    if query_start_loc is not None:
        check_tensor("query_start_loc", query_start_loc, INDEX_DTYPES, params.device)
        if query_start_loc.ndim != 1 or query_start_loc.shape[0] != block_table.shape[0] + 1:
            raise ValueError(f"query_start_loc must be [num_seqs+1={block_table.shape[0] + 1}], "
                             f"got shape {tuple(query_start_loc.shape)}")
    if out is not None:
        check_tensor("out", out, QUERY_DTYPES, params.device)
        if tuple(out.shape) != tuple(query.shape):
            raise ValueError(f"out must have the query's shape {tuple(query.shape)}, got {tuple(out.shape)}")
        if out.stride(2) != 1:
            raise ValueError("out must be contiguous in its last dimension")


def check_store(key, value, cache, slot_mapping, fmt: tqf.LayerFormat, device) -> None:
    """The arguments of a store (``store_kv`` of every implementation)."""
    check_cache("cache", cache, fmt, device)
    check_kv("key", key, fmt, device, ndim=3)
    check_kv("value", value, fmt, device, ndim=3)
    if key.shape != value.shape or key.shape[1] != cache.shape[1]:
        raise ValueError(f"key and value must be [num_tokens, num_kv_heads={cache.shape[1]}, {fmt.head_size}], "
                         f"got key {tuple(key.shape)}, value {tuple(value.shape)}")
    check_slot_mapping(slot_mapping, key.shape[0], device)


def one_row_per_sequence(query, num_seqs: int) -> torch.Tensor:
    """``query_start_loc`` when none is given: one query row per sequence (else a clear error)."""
    if query.shape[0] != num_seqs:
        raise ValueError(f"without query_start_loc, query needs one row per sequence ({num_seqs}), "
                         f"got {query.shape[0]}")
    return torch.arange(num_seqs + 1, device=query.device, dtype=torch.int32)


def check_query_rows(query, query_start_loc, seq_lens) -> None:
    """Values of ``query_start_loc`` (reads them: call where that costs no device sync)."""
    ql = query_start_loc[1:] - query_start_loc[:-1]
    if int(query_start_loc[0]) != 0 or int(query_start_loc[-1]) != query.shape[0] or bool((ql < 0).any()):
        raise ValueError(f"query_start_loc must be non-decreasing from 0 to num_tokens={query.shape[0]}")
    if bool((ql > seq_lens).any()):
        raise ValueError("a sequence has more query tokens than seq_lens")


"""The NumPy reference (``turboquant.reference``) behind the kernel API, on torch tensors.

Selected with ``additional_config={"turboquant": {"store_impl": "reference"}}``
and/or ``{"attention_impl": "reference"}``.  Slow (host round trips, float64
NumPy) and never captured in CUDA graphs: it exists so that a whole vLLM run
can be compared against the oracle over the same packed cache.
"""

from __future__ import annotations

import numpy as np
import torch

from turboquant import format as tqf
from turboquant import reference as ref
from turboquant.reference.cache import check_slot_mapping
from turboquant.reference.slot import encode_slots


def _np32(x: torch.Tensor) -> np.ndarray:
    # bf16 / fp16 -> float32 is exact; the reference takes float16/32/64.
    return x.detach().to("cpu", torch.float32).numpy()


def store_kv(key: torch.Tensor, value: torch.Tensor, cache: torch.Tensor, slot_mapping: torch.Tensor,
             fmt: tqf.LayerFormat) -> None:
    """Same contract as ``turboquant.reference.store`` (slot < 0: padding) on a
    uint8 torch cache [num_blocks, num_kv_heads, block_size, slot_bytes]."""
    nb, h, bs, s = cache.shape
    if cache.dtype != torch.uint8 or s != fmt.slot_bytes:
        raise ValueError(f"cache must be uint8 [..., slot_bytes={fmt.slot_bytes}], "
                         f"got {cache.dtype} {tuple(cache.shape)}")
    sm = check_slot_mapping(slot_mapping.detach().to("cpu", torch.int64).numpy(), key.shape[0], nb * bs)
    keep = sm >= 0
    if not keep.any():
        return
    slots = encode_slots(_np32(key)[keep], _np32(value)[keep], fmt)  # [n, h, slot_bytes]
    idx = torch.from_numpy(sm[keep]).to(cache.device)
    cache[idx // bs, :, idx % bs, :] = torch.from_numpy(slots).to(cache.device)


def paged_attention(query: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
                    query_start_loc: torch.Tensor, fmt: tqf.LayerFormat, softmax_scale: float | None,
                    out: torch.Tensor) -> torch.Tensor:
    """``turboquant.reference.paged_attention`` over the blocks the batch uses;
    writes ``out[:num_tokens]`` (cast to out's dtype)."""
    qsl = query_start_loc.detach().to("cpu", torch.int64).numpy()
    sl = seq_lens.detach().to("cpu", torch.int64).numpy()
    bt = block_table.detach().to("cpu", torch.int64).numpy()[: sl.shape[0]]
    n = int(qsl[-1])
    bs = cache.shape[2]
    nblk = -(-sl // bs)
    used = np.unique(np.concatenate([bt[b, : nblk[b]] for b in range(sl.shape[0])] + [np.zeros(0, np.int64)]))
    compact = cache[torch.from_numpy(used).to(cache.device)].to("cpu").numpy()
    bt2 = np.zeros((sl.shape[0], max(int(nblk.max(initial=0)), 1)), np.int64)
    for b in range(sl.shape[0]):
        bt2[b, : nblk[b]] = np.searchsorted(used, bt[b, : nblk[b]])
    res = ref.paged_attention(_np32(query[:n]), compact, bt2, sl, fmt, query_start_loc=qsl,
                              softmax_scale=softmax_scale)
    out[:n].copy_(torch.from_numpy(res).to(out.device, out.dtype))
    return out

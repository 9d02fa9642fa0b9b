"""Triton kernels of the TurboQuant KV-cache format (CUDA, or the CPU
interpreter with TRITON_INTERPRET=1 set before import).

Public API (torch tensors):

* ``KernelParams.build(fmt, device)``: rotations, codebooks, QJL matrices and
  slot offsets of one layer (params.py).
* ``store_kv(key, value, cache, slot_mapping, params)``: fused encode + pack (store.py).
* ``paged_attention(query, cache, block_table, seq_lens, query_start_loc, params)``:
  causal extend / mixed batches (extend.py).
* ``decode_attention(query, cache, block_table, seq_lens, params)``: the fast
  one-token-per-sequence path (decode.py).
* ``dequantize(cache, block_table, seq_lens, params)``: K~, V~ for tests and
  debugging (dequant.py).
"""

from turboquant.triton_impl.decode import decode_attention
from turboquant.triton_impl.dequant import dequantize, dequantize_slots
from turboquant.triton_impl.extend import paged_attention
from turboquant.triton_impl.launch import AttnConfig, batch_invariant_config
from turboquant.triton_impl.params import KernelParams
from turboquant.triton_impl.store import store_kv
from turboquant.triton_impl.validate import SUPPORTED_PRESETS

__all__ = ["AttnConfig", "KernelParams", "SUPPORTED_PRESETS", "batch_invariant_config", "decode_attention",
           "dequantize", "dequantize_slots", "paged_attention", "store_kv"]

"""Triton kernels of the TurboQuant KV-cache format (CUDA, or the CPU
interpreter with TRITON_INTERPRET=1 set before import).

Public API (torch tensors):

* ``KernelParams.build(fmt, device)``: rotations, codebooks, QJL matrices and
  slot offsets of one layer (params.py).
* ``store_kv(key, value, cache, slot_mapping, params)``: fused encode + pack (store.py).
* ``paged_attention(query, cache, block_table, seq_lens, query_start_loc, params)``:
  causal extend / mixed batches (extend.py).
* ``decode_attention(query, cache, block_table, seq_lens, params)``: the fast
  one-token-per-sequence path (decode.py): on GPUs with mma.sync the codes are decoded straight into
  tensor-core operand registers (decode_mma.py, Gluon), elsewhere the split kernel (attn_core.py).
* ``attention(query, cache, block_table, seq_lens, query_start_loc, params, plan=...)``: a whole
  step, decodes to the decode kernel, prefill rows to ``prefill_attention`` (prefill.py: packed
  tiles decoded once into a dense workspace, FlashAttention over it) or ``paged_attention``;
  ``plan_attention`` makes its plan once per step (dispatch.py, plan.py).
* ``dequantize(cache, block_table, seq_lens, params)``: K~, V~ for tests and
  debugging (dequant.py).
"""

from .decode import decode_attention, prepare_decode
from .dequant import dequantize, dequantize_slots
from .dispatch import attention
from .extend import paged_attention
from .launch import AttnConfig, batch_invariant_config
from .params import KernelParams
from .plan import AttentionPlan, PrefillPlan, plan_attention
from .prefill import dense_prefill_supported, prefill_attention
from .store import store_kv

__all__ = ["AttentionPlan", "AttnConfig", "KernelParams", "PrefillPlan", "attention",
           "batch_invariant_config", "decode_attention", "dense_prefill_supported", "dequantize", "dequantize_slots",
           "paged_attention", "plan_attention", "prefill_attention", "prepare_decode", "store_kv"]

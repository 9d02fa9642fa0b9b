"""attention: one step's attention over the packed cache, every row routed to the kernel that
serves it best (the plugin's entry point for every batch that is not decode-only).

* the leading one-row sequences (vLLM puts decodes first) -> decode_attention (decode.py);
* the other sequences -> prefill_attention (prefill.py: decode the packed tiles once into a dense
  workspace, FlashAttention over it) where dense_prefill_supported, else paged_attention
  (extend.py, the packed-tile kernel);
* batch-invariant mode -> paged_attention for every row (SPEC §10: a row's bits must not depend on
  the batch, so no row may change kernels with the batch around it).

The plan (plan.py) is made once per step; without one it is made here from the device tensors,
which waits for the device.
"""

from __future__ import annotations

import torch

from .decode import decode_attention
from .extend import paged_attention
from .launch import AttnConfig, default_config
from .params import KernelParams
from .plan import AttentionPlan, plan_attention
from .prefill import dense_prefill_supported, prefill_attention
from .validate import check_attention, check_params


def attention(query: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
              query_start_loc: torch.Tensor, params: KernelParams, softmax_scale: float | None = None,
              out: torch.Tensor | None = None, *, plan: AttentionPlan | None = None,
              config: AttnConfig | None = None) -> torch.Tensor:
    """Causal attention of each sequence's query rows (its last tokens) over its cached tokens:
    query [num_tokens, Hq, D], sequence b owns rows query_start_loc[b]:query_start_loc[b+1]
    (the arguments of paged_attention).  ``plan``: plan_attention of the same step."""
    check_params(params)
    check_attention(query, cache, block_table, seq_lens, params, query_start_loc, out)
    cfg = config or default_config(cache.device)
    scale = params.fmt.head_size ** -0.5 if softmax_scale is None else float(softmax_scale)
    if out is None:
        out = torch.empty_like(query)
    nseq = block_table.shape[0]
    if query.shape[0] == 0 or nseq == 0:
        return out
    if cfg.batch_invariant:
        return paged_attention(query, cache, block_table, seq_lens, query_start_loc, params, scale, out, config=cfg)
    if plan is None:
        plan = plan_attention(query_start_loc.cpu(), seq_lens.cpu(), query.device)
    nd, pp = plan.num_decodes, plan.prefill
    if (nd + (pp.num_seqs if pp else 0), nd + (sum(pp.q_lens) if pp else 0)) != (nseq, query.shape[0]) \
            or (pp is not None and (pp.first_seq, pp.first_token) != (nd, nd)):
        raise ValueError(f"plan does not describe this batch ({nseq} sequences, {query.shape[0]} query rows): "
                         "make it with plan_attention from the same query_start_loc and seq_lens")
    if nd:
        decode_attention(query[:nd], cache, block_table[:nd], seq_lens[:nd], params, scale, out[:nd], config=cfg)
    if pp is None:
        return out
    q, o = query[pp.first_token:], out[pp.first_token:]
    bt, sl = block_table[nd:], seq_lens[nd:]
    if dense_prefill_supported(params, query.dtype, query.device, cfg):
        prefill_attention(q, cache, bt, sl, params, pp, scale, o, rotation=cfg.dense_rotation)
    else:
        qsl = query_start_loc[nd:] - query_start_loc[nd]
        paged_attention(q, cache, bt, sl, qsl, params, scale, o, config=cfg)
    return out

"""paged_attention: causal attention of each sequence's query rows (its last
tokens) over its cached tokens (store-then-attend), any mix of decode and
extend/prefill chunks.  Query tiles of BQ tokens x the GQA group."""

from __future__ import annotations

import torch
import triton

from turboquant.torch_checks import check_query_rows, one_row_per_sequence

from .launch import AttnConfig, choose_splits, default_config, run_split_merge
from .params import next_pow2
from .query import rotate_query
from .validate import check_attention, check_params

EXTEND_ROWS = 64  # query rows (tokens x heads) per program


def paged_attention(query: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
                    query_start_loc: torch.Tensor | None, params, softmax_scale: float | None = None,
                    out: torch.Tensor | None = None, *, num_splits: int | None = None,
                    config: AttnConfig | None = None) -> torch.Tensor:
    """query [num_tokens, num_q_heads, d]; sequence b owns rows
    query_start_loc[b]:query_start_loc[b+1] (None: one row per sequence), the
    last tokens of its seq_lens[b] cached tokens.  Returns the attention output
    in the query dtype (or writes ``out``)."""
    check_params(params)
    check_attention(query, cache, block_table, seq_lens, params, query_start_loc, out)
    nseq = block_table.shape[0]
    if query_start_loc is None:
        query_start_loc = one_row_per_sequence(query, nseq)
    if query.device.type == "cpu":  # value checks where they cost no device sync
        check_query_rows(query, query_start_loc, seq_lens)
    cfg = config or default_config(cache.device)
    scale = params.fmt.head_size ** -0.5 if softmax_scale is None else float(softmax_scale)
    if out is None:
        out = torch.empty_like(query)
    t, hq, _ = query.shape
    if t == 0 or nseq == 0:
        return out
    hkv = cache.shape[1]
    gp = next_pow2(hq // hkv)
    bq = max(1, EXTEND_ROWS // gp)
    qsl = query_start_loc.to(torch.int32)
    tiles = (qsl[1:] - qsl[:-1] + bq - 1) // bq
    cu_tiles = torch.zeros(nseq + 1, dtype=torch.int32, device=query.device)
    cu_tiles[1:] = torch.cumsum(tiles, 0)
    num_tiles = triton.cdiv(t, bq) + nseq  # upper bound on sum_b cdiv(q_b, bq): shape-only
    s = num_splits or choose_splits(num_tiles * hkv, block_table.shape[1] * cache.shape[2], cache.device, cfg)
    qbuf = rotate_query(query, params)
    return run_split_merge(qbuf, cache, block_table, seq_lens, qsl, cu_tiles, out, params,
                           num_tiles=num_tiles, decode=False, bq=bq, num_q_heads=hq, sm_scale=scale,
                           f32dot=query.dtype == torch.float32, num_splits=s, cfg=cfg)

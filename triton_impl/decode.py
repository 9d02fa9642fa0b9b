"""decode_attention: one query token per sequence over the packed paged cache
(the fast path): rotate the queries once (query.py), split the KV length
across programs, merge + inverse rotation (merge.py).  The splits run the mma
kernel (decode_mma.py) where it applies, else the split kernel
(attn_core._split_kernel, DECODE)."""

from __future__ import annotations

import warnings

import torch
import triton
from triton.compiler.errors import CompilationError

from .decode_mma import (
    decode_attention_mma,
    mma_decode_unsupported,
    mma_shared_bytes,
    prepare_decode_layout,
    resolve_layout,
    scheduler_round_splits,
    whole_wave_splits,
)
from .device import resident_blocks, sm_count
from .extend import paged_attention
from .launch import AttnConfig, choose_splits, default_config, run_split_merge, split_cap
from .params import KernelParams
from .query import mma_query_rotation, rotate_query
from .validate import check_attention, check_params

# the reason the mma kernel failed to compile in this process, once it has (decode_attention "auto")
_MMA_COMPILE_ERROR: list[str] = []
# what a Triton whose Gluon API the kernel does not know raises: a compile error, or a missing or changed
# function met while the JIT resolves the kernel's source
_GLUON_API_ERRORS = (CompilationError, AttributeError, TypeError)


def decode_attention(query: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
                     params: KernelParams, softmax_scale: float | None = None, out: torch.Tensor | None = None,
                     *, num_splits: int | None = None, config: AttnConfig | None = None) -> torch.Tensor:
    """query [num_seqs, num_q_heads, d]: row b is the last of sequence b's
    seq_lens[b] cached tokens.  Returns [num_seqs, num_q_heads, d] in the query
    dtype (or writes ``out``).  No host synchronisation: CUDA-graph safe."""
    check_params(params)
    check_attention(query, cache, block_table, seq_lens, params, None, out)
    if query.shape[0] != block_table.shape[0]:
        raise ValueError(f"decode needs one query row per sequence: query.shape[0]={query.shape[0]} but "
                         f"block_table has {block_table.shape[0]} rows")
    cfg = config or default_config(cache.device)
    scale = params.fmt.head_size ** -0.5 if softmax_scale is None else float(softmax_scale)
    if out is None:
        out = torch.empty_like(query)
    b, hq, _ = query.shape
    if b == 0:
        return out
    if cfg.batch_invariant:
        # batch-invariant mode: decode rows take the extend kernel, so a token's output is the same
        # whether it is decoded alone, beside prefills, or recomputed in a prefill after preemption
        return paged_attention(query, cache, block_table, seq_lens, None, params, scale, out,
                               num_splits=num_splits, config=cfg)
    hkv = cache.shape[1]
    max_kv = block_table.shape[1] * cache.shape[2]
    why = "decode_kernel='split'" if cfg.decode_kernel == "split" else \
        mma_decode_unsupported(params, query.dtype, cache.device, hq, hkv, cache.shape[2])
    if cfg.decode_kernel == "mma" and why is not None:
        raise ValueError(f"decode_kernel='mma' cannot serve this call: {why}; allowed: decode_kernel='auto' or "
                         "'split'")
    # the default mode only (batch-invariant returned above)
    if why is None and _MMA_COMPILE_ERROR and cfg.decode_kernel == "auto":
        why = _MMA_COMPILE_ERROR[0]
    if why is None:
        qbuf = rotate_query(query, params, few_rows=True,
                            rotation=mma_query_rotation(cfg.mma_query_rotation, params, query.dtype),
                            launch_dependents=cfg.mma_pdl)
        s = num_splits or decode_splits(params, cfg, b * hkv, max_kv, cache.device, mma=True)
        try:
            return decode_attention_mma(qbuf, cache, block_table, seq_lens, out, params, num_q_heads=hq,
                                        sm_scale=scale, num_splits=s, **mma_options(cfg))
        except _GLUON_API_ERRORS as e:
            # a Triton whose Gluon API the kernel does not know: "auto" keeps working on the split kernel,
            # and says why
            if cfg.decode_kernel == "mma":
                raise
            _MMA_COMPILE_ERROR.append(f"the mma kernel does not compile with Triton {triton.__version__}")
            warnings.warn(f"TurboQuant: {_MMA_COMPILE_ERROR[0]} ({type(e).__name__}: {str(e).strip()[-300:]}); "
                          "decode takes the split kernel", RuntimeWarning, stacklevel=2)
    qbuf = rotate_query(query, params, few_rows=True)  # the split kernel: the oracle's fp32 FMA rotation
    s = num_splits or decode_splits(params, cfg, b * hkv, max_kv, cache.device, mma=False)
    return run_split_merge(qbuf, cache, block_table, seq_lens, seq_lens, seq_lens, out, params,
                           num_tiles=b, decode=True, bq=1, num_q_heads=hq, sm_scale=scale,
                           f32dot=query.dtype == torch.float32, num_splits=s, cfg=cfg)


def prepare_decode(params: KernelParams, device: torch.device, *, num_q_heads: int, num_kv_heads: int,
                   block_size: int, query_dtype: torch.dtype = torch.bfloat16,
                   config: AttnConfig | None = None) -> None:
    """Engine-start work of a layer's decode step that cannot run inside a CUDA-graph capture: where the mma
    kernel serves the layer, the one-time check its default layout needs (decode_mma.prepare_decode_layout;
    tq4's value table). The vLLM backend calls it when it binds a layer. Elsewhere it does nothing; a
    kernel that does not compile here is left to decode_attention's own fallback."""
    cfg = config or default_config(device)
    if cfg.batch_invariant or cfg.decode_kernel == "split" or _MMA_COMPILE_ERROR:
        return
    if mma_decode_unsupported(params, query_dtype, device, num_q_heads, num_kv_heads, block_size) is not None:
        return
    try:
        prepare_decode_layout(params, device, group=num_q_heads // num_kv_heads, block_size=block_size,
                              **mma_options(cfg))
    except _GLUON_API_ERRORS:
        return


def mma_options(cfg: AttnConfig) -> dict:
    """decode_attention_mma's keyword options from an AttnConfig (its mma_* fields)."""
    return {"maxnreg": cfg.mma_maxnreg, "ring_bytes": cfg.mma_ring_bytes, "shared_table": cfg.mma_shared_table,
            "step_tiles": cfg.mma_step_tiles, "key_table": cfg.mma_key_table,
            "output_rotation": cfg.mma_output_rotation, "page_ahead": cfg.mma_page_ahead,
            "value_table": cfg.mma_value_table, "pdl": cfg.mma_pdl}


def decode_splits(params: KernelParams, cfg: AttnConfig, rows: int, max_kv: int, device: torch.device, *,
                  mma: bool) -> int:
    """The split count decode_attention launches for rows = sequences x KV heads over at most max_kv tokens,
    on the mma kernel (mma=True: cfg.mma_programs_per_sm, then cfg.mma_split_rule: "waves" rounds that count to
    whole waves, "rounds" replaces it by decode_mma.scheduler_round_splits's) or the split kernel."""
    if not mma:
        return choose_splits(rows, max_kv, device, cfg)
    s = choose_splits(rows, max_kv, device, cfg, programs_per_sm=cfg.mma_programs_per_sm)
    if cfg.mma_split_rule in ("waves", "rounds") and not cfg.batch_invariant:
        key_table, _, table, ring, maxnreg = resolve_layout(params, **mma_options(cfg))
        per_sm = resident_blocks(device, mma_shared_bytes(params, ring, table, key_table), 1, maxnreg)
        if cfg.mma_split_rule == "waves":
            s = whole_wave_splits(s, rows, per_sm, sm_count(device), cap=split_cap(max_kv, cfg))
        else:
            s = scheduler_round_splits(rows, max_kv, per_sm, sm_count(device), cap=split_cap(max_kv, cfg))
    return s

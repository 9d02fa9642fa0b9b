"""Scores and paged attention over packed slots (SPEC.md, "Attention").

Scores, for query q and a stored key with instances i (channels C_i):

    mse:  s = sum_i ||k_i|| <Pi_i q_{C_i}, c[idx_i]>
    prod: s = sum_i ||k_i|| (<Pi_i q_{C_i}, c[idx_i]> + sqrt(pi/2)/m_i gamma_i <S_i Pi_i q_{C_i}, sigma_i>)

Logits are softmax_scale * s (default 1/sqrt(head_size)); query head h reads
KV head h // (num_q_heads / num_kv_heads).  The query at position p sees the
tokens 0..p of its own sequence (causal).  Values with mode ``mse`` are
accumulated in the rotated domain and mapped back once per output row:
o_{C_i} = Pi_i^T sum_t p_t ||v_t,i|| c[idx_t,i]; with mode ``group``,
o = sum_t p_t v~_t.  The reference computes in float64 and returns float32.
"""

from __future__ import annotations

import numpy as np

from turboquant import format as tqf

from .cache import check_cache, gather_tokens
from .quantizer import layer_params
from .slot import check_kv, fields_to_instances, unpack_fields
from .values import group_dequantize


def key_scores(q: np.ndarray, fields: dict, fmt: tqf.LayerFormat) -> np.ndarray:
    """q [..., G, d] against the keys of ``fields`` ([..., T] tokens) -> [..., G, T]."""
    params = layer_params(fmt)
    inst = fields_to_instances(fields, "key", params.keys)
    q = q.astype(np.float64)
    total = 0.0
    for p in params.keys:
        st = inst[p.instance.index]
        q_rot = q[..., p.channels] @ p.rotation.T.astype(np.float64)  # [..., G, m]
        s = np.zeros((*q.shape[:-1], st["norm"].shape[-1]))
        if p.codebook is not None:
            c = p.codebook.centroids.astype(np.float64)[st["codes"]]  # [..., T, m]
            s = s + q_rot @ np.swapaxes(c, -1, -2)
        if p.qjl is not None:
            q_s = q_rot @ p.qjl.T.astype(np.float64)
            sigma = st["signs"].astype(np.float64) * 2 - 1
            s = s + tqf.qjl_scale(p.instance.dim) * st["rnorm"][..., None, :] * (q_s @ np.swapaxes(sigma, -1, -2))
        total = total + st["norm"].astype(np.float64)[..., None, :] * s
    return total


def weighted_sum(probs: np.ndarray, vals: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """probs [..., G, T] @ vals [..., T, m] where a non-finite value row
    poisons exactly the output rows that see it (visible [..., G, T]), and
    never a row that masks it out (0 * NaN would)."""
    bad = ~np.all(np.isfinite(vals), axis=-1)  # [..., T]
    out = probs @ np.where(bad[..., None], 0.0, vals)
    poisoned = np.any(visible & bad[..., None, :], axis=-1)  # [..., G]
    return np.where(poisoned[..., None], np.nan, out)


def value_rows(probs: np.ndarray, fields: dict, fmt: tqf.LayerFormat, visible: np.ndarray | None = None) -> np.ndarray:
    """sum_t p_t v~_t for probs [..., G, T] -> [..., G, d] (float64); ``visible``
    (default: every token) is the causal mask, for NaN propagation."""
    if visible is None:
        visible = np.ones(probs.shape, bool)
    if fmt.preset.value_mode == "group":
        v = group_dequantize(fields["v_scale"], fields["v_zero"], fields["v_codes"], fmt.preset.group_size)
        return weighted_sum(probs, v.astype(np.float64), visible)
    params = layer_params(fmt)
    inst = fields_to_instances(fields, "value", params.values)
    out = np.empty((*probs.shape[:-1], fmt.head_size))
    for p in params.values:
        st = inst[p.instance.index]
        c = st["norm"].astype(np.float64)[..., None] * p.codebook.centroids.astype(np.float64)[st["codes"]]
        o_rot = weighted_sum(probs, c, visible)  # accumulate in the rotated domain
        out[..., p.channels] = o_rot @ p.rotation.astype(np.float64)  # one Pi^T per output row
    return out


def check_attention_inputs(query, cache, block_table, seq_lens, fmt):
    check_cache(cache, fmt)
    check_kv("query", query, fmt)
    if query.ndim != 3:
        raise ValueError(f"query must be [num_tokens, num_q_heads, head_size], got {query.shape}")
    hq, hkv = query.shape[1], cache.shape[1]
    if hq % hkv:
        raise ValueError(f"num_q_heads={hq} must be a multiple of num_kv_heads={hkv}")
    bt = np.asarray(block_table)
    sl = np.asarray(seq_lens)
    if bt.ndim != 2 or not np.issubdtype(bt.dtype, np.integer):
        raise ValueError(f"block_table must be an integer array [num_seqs, max_blocks], got {bt.dtype} {bt.shape}")
    if sl.ndim != 1 or sl.shape[0] != bt.shape[0] or not np.issubdtype(sl.dtype, np.integer):
        raise ValueError(f"seq_lens must be an integer array [num_seqs={bt.shape[0]}], got {sl.dtype} {sl.shape}")
    bs = cache.shape[2]
    if np.any(sl < 0) or np.any(-(-sl // bs) > bt.shape[1]):
        raise ValueError(f"seq_lens must lie in [0, max_blocks * block_size = {bt.shape[1] * bs}]")
    for b in range(bt.shape[0]):
        used = bt[b, : -(-int(sl[b]) // bs)]
        if used.size and (used.min() < 0 or used.max() >= cache.shape[0]):
            raise ValueError(f"block_table[{b}] references a block outside [0, num_blocks={cache.shape[0]})")
    return bt, sl


def paged_attention(query: np.ndarray, cache: np.ndarray, block_table: np.ndarray, seq_lens: np.ndarray,
                    fmt: tqf.LayerFormat, query_start_loc: np.ndarray | None = None,
                    softmax_scale: float | None = None) -> np.ndarray:
    """Causal attention of ``query`` [num_tokens, num_q_heads, d] over the packed cache.

    Sequence b owns query rows query_start_loc[b]:query_start_loc[b+1] (default:
    one row per sequence, i.e. decode); they are the last tokens of its
    seq_lens[b] tokens, which are all in the cache already (store first)."""
    bt, sl = check_attention_inputs(query, cache, block_table, seq_lens, fmt)
    nseq = bt.shape[0]
    qsl = np.arange(nseq + 1) if query_start_loc is None else np.asarray(query_start_loc)
    if qsl.shape != (nseq + 1,) or qsl[0] != 0 or qsl[-1] != query.shape[0] or np.any(np.diff(qsl) < 0):
        raise ValueError(f"query_start_loc must be [num_seqs+1] non-decreasing from 0 to num_tokens={query.shape[0]}")
    if np.any(np.diff(qsl) > sl):
        raise ValueError("a sequence has more query tokens than seq_lens")
    scale = 1.0 / np.sqrt(fmt.head_size) if softmax_scale is None else float(softmax_scale)
    hq, hkv = query.shape[1], cache.shape[1]
    g = hq // hkv
    out = np.zeros(query.shape, np.float32)
    for b in range(nseq):
        n_q, L = int(qsl[b + 1] - qsl[b]), int(sl[b])
        if n_q == 0:
            continue
        fields = unpack_fields(gather_tokens(cache, bt[b], L), fmt)  # per field [hkv, L, ...]
        q = query[qsl[b]: qsl[b + 1]].reshape(n_q, hkv, g, -1).transpose(1, 0, 2, 3).reshape(hkv, n_q * g, -1)
        logits = scale * key_scores(q, fields, fmt)  # [hkv, n_q*g, L]
        pos = (L - n_q + np.arange(n_q)).repeat(g)  # position of each query row
        visible = np.broadcast_to(np.arange(L)[None, None, :] <= pos[None, :, None], logits.shape)
        with np.errstate(invalid="ignore"):
            logits = np.where(visible, logits, -np.inf)
            m = np.max(logits, axis=-1, keepdims=True)
            e = np.exp(logits - m)
            probs = e / np.sum(e, axis=-1, keepdims=True)
        o = value_rows(probs, fields, fmt, visible)  # [hkv, n_q*g, d]
        out[qsl[b]: qsl[b + 1]] = o.reshape(hkv, n_q, g, -1).transpose(1, 0, 2, 3).reshape(n_q, hq, -1)
    return out


def decode_attention(query, cache, block_table, seq_lens, fmt, softmax_scale=None):
    """One query token per sequence (the last of its seq_lens[b] tokens)."""
    return paged_attention(query, cache, block_table, seq_lens, fmt, None, softmax_scale)


def dense_attention(query, key, value, softmax_scale=None, causal_offset=0):
    """Exact float64 attention for one sequence: q [Tq, Hq, d], k/v [T, Hkv, d]
    (the unquantized baseline for fidelity reports)."""
    tq, hq, d = query.shape
    t, hkv, _ = key.shape
    g = hq // hkv
    scale = 1.0 / np.sqrt(d) if softmax_scale is None else softmax_scale
    k = np.repeat(key.astype(np.float64), g, axis=1)
    v = np.repeat(value.astype(np.float64), g, axis=1)
    logits = scale * np.einsum("qhd,thd->hqt", query.astype(np.float64), k)
    pos = causal_offset + np.arange(tq)
    visible = np.broadcast_to(np.arange(t)[None, None, :] <= pos[None, :, None], logits.shape)
    with np.errstate(invalid="ignore"):
        logits = np.where(visible, logits, -np.inf)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
    o = weighted_sum(p, v.transpose(1, 0, 2), visible)  # [hq, tq, d]
    return o.transpose(1, 0, 2).astype(np.float32)

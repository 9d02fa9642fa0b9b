"""Per layer and KV head: attention fidelity under a codec, and key/value statistics.

Fidelity compares exact float64 attention over the captured (post-RoPE) Q/K/V
with attention over the compressed cache.  For TurboQuant presets the
compressed side is the NumPy reference itself: ``encode_slots`` ->
``unpack_fields`` -> ``attention.key_scores`` (scores from the packed codes)
and ``attention.value_rows`` (values accumulated in the rotated domain), i.e.
exactly what ``paged_attention`` computes.  Baselines (bf16, FP8) attend over
their dequantized K/V.  Per KV head (its query heads pooled):

* ``out_rel_err``: ||o~ - o||_F / ||o||_F over all query rows,
* ``kl``: mean over query rows of KL(p || p~) of the attention distributions (nats),
* ``topk_overlap``: mean |top-k(p) ∩ top-k(p~)| / k over rows that see at least k keys.

Key/value statistics (:func:`kv_stats`) describe what the quantizer faces:
per-channel excess kurtosis and max-abs / RMS outliers, and the spread of the
token norms.
"""

from __future__ import annotations

import numpy as np
import torch

from turboquant.quality.activations import LayerActivations
from turboquant.reference.attention import key_scores, value_rows
from turboquant.reference.slot import encode_slots, unpack_fields


def _softmax_causal(logits: np.ndarray, pos: np.ndarray) -> np.ndarray:
    t = logits.shape[-1]
    masked = np.where(np.arange(t)[None, :] <= pos[:, None], logits, -np.inf)
    m = masked.max(-1, keepdims=True)
    e = np.exp(masked - m)
    return e / e.sum(-1, keepdims=True)


def _compressed(q, k, v, codec, layer, scaling, pos):
    """(probs, out) of one sequence: q [Hkv, R, D], k/v [Hkv, T, D]."""
    if hasattr(codec, "layer_format"):  # TurboQuant: the reference's packed-code attention
        fmt = codec.layer_format(layer)
        fields = unpack_fields(encode_slots(k.astype(np.float32), v.astype(np.float32), fmt), fmt)
        p = _softmax_causal(scaling * key_scores(q, fields, fmt), pos)
        return p, value_rows(p, fields, fmt)
    kq, vq = codec(layer, torch.from_numpy(k[None].astype(np.float32)), torch.from_numpy(v[None].astype(np.float32)))
    kq, vq = kq[0].double().numpy(), vq[0].double().numpy()
    p = _softmax_causal(scaling * q @ np.swapaxes(kq, -1, -2), pos)
    return p, p @ vq


def attention_fidelity(act: LayerActivations, codec, topk: int = 8) -> list[dict]:
    """One dict per KV head of ``act.layer``: out_rel_err, kl, topk_overlap (all sequences pooled)."""
    if topk < 1:
        raise ValueError(f"topk={topk} must be >= 1")
    b, hq, t, d = act.q.shape
    hkv, g = act.k.shape[1], act.group
    pos = np.tile(np.arange(t), g)  # row r = j * T + token, j the query head within the group
    err2 = np.zeros(hkv)
    ref2 = np.zeros(hkv)
    kl, overlap = [[] for _ in range(hkv)], [[] for _ in range(hkv)]
    for s in range(b):
        q = act.q[s].reshape(hkv, g * t, d).astype(np.float64)
        k, v = act.k[s].astype(np.float64), act.v[s].astype(np.float64)
        p = _softmax_causal(act.scaling * q @ np.swapaxes(k, -1, -2), pos)
        o = p @ v
        pq, oq = _compressed(q, k, v, codec, act.layer, act.scaling, pos)
        err2 += ((oq - o) ** 2).sum(axis=(1, 2))
        ref2 += (o ** 2).sum(axis=(1, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * (np.log(p) - np.log(pq)), 0.0)
        rows_kl = terms.sum(-1)  # [Hkv, R]
        keep = pos >= topk - 1
        top = np.argpartition(-p[:, keep], topk - 1, axis=-1)[..., :topk]
        topq = np.argpartition(-pq[:, keep], topk - 1, axis=-1)[..., :topk]
        for h in range(hkv):
            kl[h].append(rows_kl[h])
            if keep.any():
                inter = [len(np.intersect1d(a, c, assume_unique=True)) for a, c in zip(top[h], topq[h])]
                overlap[h].append(np.asarray(inter) / topk)
    out = []
    for h in range(hkv):
        out.append({
            "layer": act.layer, "kv_head": h,
            "out_rel_err": float(np.sqrt(err2[h] / ref2[h])),
            "kl": float(np.mean(np.concatenate(kl[h]))),
            "topk_overlap": float(np.mean(np.concatenate(overlap[h]))) if overlap[h] else float("nan"),
        })
    return out


def kv_stats(x: np.ndarray, top: int = 4) -> dict:
    """Statistics of token vectors x [N, D] (one KV head's keys or values)."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x must be [tokens >= 2, head_size], got shape {x.shape}")
    mu = x.mean(0)
    c = x - mu
    var = (c ** 2).mean(0)
    kurt = np.where(var > 0, (c ** 4).mean(0) / np.where(var > 0, var, 1) ** 2 - 3.0, 0.0)
    rms = np.sqrt((x ** 2).mean(0))
    maxabs = np.abs(x).max(0)
    norms = np.linalg.norm(x, axis=1)
    med_rms = np.median(rms)
    return {
        "kurtosis_max": float(kurt.max()), "kurtosis_median": float(np.median(kurt)),
        "top_kurtosis_channels": [int(i) for i in np.argsort(-kurt)[:top]],
        "rms_max_over_median": float(rms.max() / med_rms) if med_rms > 0 else float("inf"),
        "maxabs_max_over_median": float(maxabs.max() / np.median(maxabs)) if np.median(maxabs) > 0 else float("inf"),
        "top_rms_channels": [int(i) for i in np.argsort(-rms)[:top]],
        "channels_rms_over_3x_median": int(np.sum(rms > 3 * med_rms)),
        "norm_mean": float(norms.mean()), "norm_cv": float(norms.std() / norms.mean()) if norms.mean() > 0 else 0.0,
        "norm_max_over_median": float(norms.max() / np.median(norms)) if np.median(norms) > 0 else float("inf"),
    }


def layer_stats(act: LayerActivations) -> list[dict]:
    """kv_stats of keys and values per KV head of one layer (tokens of all sequences pooled)."""
    d = act.head_size
    return [{"layer": act.layer, "kv_head": h,
             "key": kv_stats(act.k[:, h].reshape(-1, d)), "value": kv_stats(act.v[:, h].reshape(-1, d))}
            for h in range(act.k.shape[1])]

"""Perplexity of a causal LM, optionally with TurboQuant-compressed (or baseline) K/V.

With a codec, every attention layer reads ``codec(layer, K, V)`` for all tokens
(store-then-attend) through transformers' attention interface
(:func:`turboquant.quality.kv_attention.compressed_kv`) and computes exact
attention over the dequantized K/V.  Tokens are bytes, so the mean NLL in
bits is bits per byte.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from turboquant.quality.kv_attention import compressed_kv


def window_nll(model, windows: np.ndarray, batch_size: int = 8, codec=None, first_target: int = 1) -> np.ndarray:
    """Mean next-token NLL (nats) of each window [n, T] over the targets at positions
    ``first_target`` .. T-1 (position 0 is context only)."""
    w = np.asarray(windows)
    if w.ndim != 2 or w.shape[1] < 2:
        raise ValueError(f"windows must be [num_windows, tokens >= 2], got shape {w.shape}")
    if not 1 <= first_target < w.shape[1]:
        raise ValueError(f"first_target={first_target} must be in [1, {w.shape[1] - 1}]")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    device = next(model.parameters()).device
    out = []
    with compressed_kv(model, codec), torch.no_grad():
        for i in range(0, w.shape[0], batch_size):
            x = torch.as_tensor(w[i: i + batch_size], dtype=torch.long, device=device)
            logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
            out.append(nll.view(x.shape[0], -1)[:, first_target - 1:].mean(1).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def summarize(nll: np.ndarray) -> dict:
    m = float(np.mean(nll))
    return {"windows": int(nll.size), "nll": m, "ppl": math.exp(m), "bits_per_byte": m / math.log(2)}


def perplexity(model, windows: np.ndarray, batch_size: int = 8, codec=None, first_target: int = 1) -> dict:
    """{'windows', 'nll', 'ppl', 'bits_per_byte', 'window_nll'} over equal-length windows."""
    nll = window_nll(model, windows, batch_size, codec, first_target)
    return {**summarize(nll), "window_nll": nll.tolist()}


def delta(result: dict, base: dict) -> dict:
    """ΔPPL of ``result`` against ``base`` (same windows) with the paired standard error of ΔNLL."""
    a, b = np.asarray(result["window_nll"]), np.asarray(base["window_nll"])
    if a.shape != b.shape:
        raise ValueError(f"results cover different windows: {a.shape} vs {b.shape}")
    d = a - b
    se = float(np.std(d, ddof=1) / math.sqrt(d.size)) if d.size > 1 else float("nan")
    return {"delta_ppl": result["ppl"] - base["ppl"], "delta_nll": float(d.mean()), "delta_nll_se": se}

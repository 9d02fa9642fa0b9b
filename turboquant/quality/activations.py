"""Capture every layer's post-RoPE Q, K and V (what attention reads) from a Hugging Face model.

The capture goes through the attention function of
:mod:`turboquant.quality.kv_attention`: it records the tensors the model's
attention receives (after RoPE) and then attends over them exactly, so the
forward pass is the unquantized model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from turboquant.quality.kv_attention import kv_hook


@dataclass(frozen=True)
class LayerActivations:
    layer: int
    q: np.ndarray  # [batch, num_q_heads, tokens, head_size] float32
    k: np.ndarray  # [batch, num_kv_heads, tokens, head_size]
    v: np.ndarray
    scaling: float  # the model's softmax scale

    @property
    def head_size(self) -> int:
        return self.k.shape[-1]

    @property
    def group(self) -> int:
        return self.q.shape[1] // self.k.shape[1]


def capture(model, input_ids) -> list[LayerActivations]:
    """One forward over ``input_ids`` [batch, tokens] (unpadded); activations per layer, in layer order."""
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got shape {tuple(ids.shape)}")
    device = next(model.parameters()).device
    seen: dict[int, LayerActivations] = {}

    def record(layer, query, key, value, scaling):
        if layer in seen:
            raise RuntimeError(f"layer {layer} was called twice in one forward")
        seen[layer] = LayerActivations(
            layer, *(t.detach().float().cpu().numpy() for t in (query, key, value)), float(scaling))
        return key, value

    with kv_hook(model, record), torch.no_grad():
        model(input_ids=ids.to(device), use_cache=False)
    return [seen[i] for i in sorted(seen)]

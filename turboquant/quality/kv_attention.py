"""Attention over transformed (compressed, or recorded) K/V inside a Hugging Face model.

One function is registered with transformers' ``AttentionInterface`` under
:data:`IMPL_NAME`.  It receives each layer's post-RoPE query, key and value
([batch, heads, tokens, head_dim]), passes K and V through the hook installed
by :func:`kv_hook` (a codec that quantizes and dequantizes them, or a recorder),
and computes exact causal attention in float32 over what the hook returns.

Store-then-attend: every key and value the attention reads, the current
token's own included, is the hook's output, as in a TurboQuant cache where a
step's K/V are stored first and then read back.  Queries are not changed.

Batches must be unpadded (no attention mask is applied beyond causality;
transformers builds none for a custom implementation).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

IMPL_NAME = "turboquant_kv"
_HOOK_ATTR = "_turboquant_kv_hook"


def exact_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor:
    """Causal GQA attention in float32: q [B, Hq, Tq, D], k/v [B, Hkv, Tk, D] -> [B, Tq, Hq, D]
    in the query's dtype.  The Tq queries are the last Tq of the Tk positions."""
    b, hq, tq, d = query.shape
    hkv, tk = key.shape[1], key.shape[2]
    if hq % hkv:
        raise ValueError(f"num_q_heads={hq} must be a multiple of num_kv_heads={hkv}")
    if tq > tk:
        raise ValueError(f"more queries ({tq}) than keys ({tk})")
    q, k, v = query.float(), key.float(), value.float()
    if hkv != hq:
        k = k.repeat_interleave(hq // hkv, dim=1)
        v = v.repeat_interleave(hq // hkv, dim=1)
    if tq == tk:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)
    else:
        pos = torch.arange(tk - tq, tk, device=q.device)
        mask = torch.arange(tk, device=q.device)[None, :] <= pos[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)
    return out.transpose(1, 2).contiguous().to(query.dtype)


def _attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    hook = getattr(module, _HOOK_ATTR, None)
    if hook is None:
        raise RuntimeError(f"attention implementation {IMPL_NAME!r} is active but no hook is installed; "
                           "use turboquant.quality.kv_attention.kv_hook(model, hook)")
    if dropout:
        raise ValueError(f"dropout={dropout} is not supported by {IMPL_NAME!r} (evaluation only)")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    key, value = hook(module.layer_idx, query, key, value, scale)
    return exact_attention(query, key, value, scale), None


def register() -> str:
    """Register the attention function with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(IMPL_NAME, _attention_forward)
    return IMPL_NAME


def attention_modules(model) -> list:
    """The model's attention modules (those with a ``layer_idx`` and q/k/v projections), in layer order."""
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "k_proj")]
    if not mods:
        raise ValueError(f"model {type(model).__name__} has no attention modules with layer_idx and k_proj")
    return sorted(mods, key=lambda m: m.layer_idx)


def _set_impl(model, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # older transformers
        model.config._attn_implementation = name


@contextmanager
def kv_hook(model, hook):
    """Within the block, every attention layer of ``model`` calls
    ``hook(layer, query, key, value, scaling) -> (key, value)`` and attends over its result."""
    if not callable(hook):
        raise TypeError(f"hook must be callable, got {type(hook).__name__}")
    register()
    mods = attention_modules(model)
    previous = model.config._attn_implementation
    for m in mods:
        setattr(m, _HOOK_ATTR, hook)
    _set_impl(model, IMPL_NAME)
    try:
        yield model
    finally:
        _set_impl(model, previous)
        for m in mods:
            if hasattr(m, _HOOK_ATTR):
                delattr(m, _HOOK_ATTR)


@contextmanager
def compressed_kv(model, codec):
    """Within the block, ``model`` attends over ``codec(layer, key, value)`` (store-then-attend)."""
    if codec is None:
        yield model
        return

    def hook(layer, query, key, value, scaling):
        return codec(layer, key, value)

    with kv_hook(model, hook):
        yield model

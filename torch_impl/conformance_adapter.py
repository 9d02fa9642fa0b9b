"""The torch paths behind the conformance suite's NumPy interface (conformance/impls.py), on the CPU
at scale "small" (the CI cases): "torch" (torch_impl.store_kv / paged_attention) and "cpp"
(torch_impl.fused: the C++ kernels; None when they cannot be built here).  Inputs are cast to the case's dtype
(conformance.impls.exact_dtype); outputs come back in it, as the plugin returns them."""

from __future__ import annotations

import numpy as np
import torch

from turboquant.conformance.impls import Implementation, exact_dtype

from . import TorchParams, attention, cpp, fused, store


def _t(x, dtype=None):
    t = torch.from_numpy(np.array(x))
    return t if dtype is None else t.to(dtype)


def torch_implementation(fused_kernels: bool = False) -> Implementation | None:
    """"torch", or with ``fused_kernels`` "cpp" (None when its kernels do not build)."""
    if fused_kernels and cpp.ops() is None:
        return None
    store_kv = fused.store_kv if fused_kernels else store.store_kv
    paged_attention = fused.paged_attention if fused_kernels else attention.paged_attention
    rotated_debug = fused.rotated_debug if fused_kernels else store.rotated_debug

    def store_(cache, key, value, slot_mapping, fmt):
        c = _t(cache)
        store_kv(_t(key, exact_dtype(key)), _t(value, exact_dtype(value)), c,
                 _t(np.asarray(slot_mapping, np.int64)), TorchParams.build(fmt))
        return c.numpy()

    def attend(query, cache, block_table, seq_lens, fmt, query_start_loc=None, softmax_scale=None):
        qsl = None if query_start_loc is None else _t(np.asarray(query_start_loc, np.int32))
        out = paged_attention(_t(query, exact_dtype(query)), _t(cache), _t(np.asarray(block_table, np.int32)),
                              _t(np.asarray(seq_lens, np.int32)), qsl, TorchParams.build(fmt),
                              softmax_scale=softmax_scale)
        return out.float().numpy()

    def rotated(x, fmt, tensor):
        return [y.numpy() for y in rotated_debug(_t(x, exact_dtype(x)), TorchParams.build(fmt), tensor)]

    return Implementation(name="cpp" if fused_kernels else "torch", store=store_, paged_attention=attend,
                          rotated=rotated, scale="small", half_output=True)

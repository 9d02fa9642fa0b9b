"""The torch path behind the conformance suite's NumPy interface (conformance/impls.py):
"torch" on the CPU, at scale "small" (the CI cases).  Inputs are cast to the case's dtype
(conformance.impls.exact_dtype); outputs come back in it, as the plugin returns them."""

from __future__ import annotations

import numpy as np
import torch

from turboquant.conformance.impls import Implementation, exact_dtype

from . import TorchParams, paged_attention, store_kv
from .store import rotated_debug


def _t(x, dtype=None):
    t = torch.from_numpy(np.array(x))
    return t if dtype is None else t.to(dtype)


def torch_implementation() -> Implementation:
    def store(cache, key, value, slot_mapping, fmt):
        c = _t(cache)
        store_kv(_t(key, exact_dtype(key)), _t(value, exact_dtype(value)), c,
                 _t(np.asarray(slot_mapping, np.int64)), TorchParams.build(fmt))
        return c.numpy()

    def attention(query, cache, block_table, seq_lens, fmt, query_start_loc=None, softmax_scale=None):
        qsl = None if query_start_loc is None else _t(np.asarray(query_start_loc, np.int32))
        out = paged_attention(_t(query, exact_dtype(query)), _t(cache), _t(np.asarray(block_table, np.int32)),
                              _t(np.asarray(seq_lens, np.int32)), qsl, TorchParams.build(fmt),
                              softmax_scale=softmax_scale)
        return out.float().numpy()

    def rotated(x, fmt, tensor):
        return [y.numpy() for y in rotated_debug(_t(x, exact_dtype(x)), TorchParams.build(fmt), tensor)]

    return Implementation(name="torch", store=store, paged_attention=attention, rotated=rotated, scale="small",
                          half_output=True)

"""The Triton kernels behind the conformance suite's NumPy interface
(conformance/impls.py).

On a CUDA machine: "triton-cuda" at scale "full".  Without CUDA, with
TRITON_INTERPRET=1 set before triton is imported: "triton-interpret" at scale
"small".  Otherwise None (the kernels cannot run here).

Cases hand over float32 arrays whose values are exact in the case's dtype;
the dtype itself is not passed, so inputs are cast to the narrowest exact
dtype: bfloat16 if every value is exactly representable, else float16, else
float32 (the case's own dtype for every case in cases.py).
"""

from __future__ import annotations

import os

import numpy as np

from turboquant.conformance.impls import exact_dtype


def triton_implementation():
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return None
    from turboquant.conformance.impls import Implementation

    from . import KernelParams, plan_attention, store_kv
    from . import attention as step_attention
    from .store import rotated_debug

    device = torch.device("cuda" if cuda else "cpu")

    def to_dev(x, dtype=None):
        t = torch.from_numpy(np.ascontiguousarray(x))
        return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)

    def store(cache, key, value, slot_mapping, fmt):
        params = KernelParams.build(fmt, device)
        c = to_dev(cache)
        k = to_dev(key, exact_dtype(key))
        v = to_dev(value, exact_dtype(value))
        store_kv(k, v, c, to_dev(np.asarray(slot_mapping, np.int64)), params)
        return c.cpu().numpy()

    def attention(query, cache, block_table, seq_lens, fmt, query_start_loc=None, softmax_scale=None):
        params = KernelParams.build(fmt, device)
        q = to_dev(query, exact_dtype(query))
        if query_start_loc is None:  # one row per sequence
            query_start_loc = np.arange(len(seq_lens) + 1)
        qsl = np.asarray(query_start_loc, np.int32)
        sl = np.asarray(seq_lens, np.int32)
        # the plugin's path: decodes to the decode kernel, prefill rows to the dense path or the
        # packed-tile kernel (triton_impl/tests compares the two prefill paths on these cases)
        plan = plan_attention(torch.from_numpy(qsl), torch.from_numpy(sl), device)
        out = step_attention(q, to_dev(cache), to_dev(np.asarray(block_table, np.int32)), to_dev(sl), to_dev(qsl),
                             params, softmax_scale=softmax_scale, plan=plan)
        return out.float().cpu().numpy()

    def rotated(x, fmt, tensor):
        params = KernelParams.build(fmt, device)
        xt = to_dev(x, exact_dtype(x))
        return [y.cpu().numpy() for y in rotated_debug(xt, params, tensor)]

    return Implementation(
        name="triton-cuda" if cuda else "triton-interpret",
        store=store,
        paged_attention=attention,
        rotated=rotated,
        scale="full" if cuda else "small",
        half_output=True,
    )

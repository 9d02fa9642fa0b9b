"""Implementations under test, behind one NumPy-in / NumPy-out interface.

Each implementation offers the stages the conformance cases compare:

* ``store(cache, key, value, slot_mapping, fmt) -> cache``: a new cache array
  with the tokens written (the input array is not modified);
* ``paged_attention(query, cache, block_table, seq_lens, fmt,
  query_start_loc=None, softmax_scale=None) -> out`` (float32);
* ``rotated(x, fmt, tensor) -> list of y per instance`` (optional; None when
  the implementation has no separate rotation stage to expose).

``available()`` lists the reference, the torch CPU path (``turboquant.torch_impl``), its fused
C++ kernels (``turboquant.torch_impl.fused``, where they build) and, where they can run, the
Triton kernels (CUDA, or the CPU interpreter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from turboquant import format as tqf
from turboquant import reference as ref
from turboquant.reference.quantizer import l2_norm, layer_params, rotate


@dataclass(frozen=True)
class Implementation:
    name: str
    store: Callable
    paged_attention: Callable
    rotated: Callable | None = None
    # Largest case size ("small" under an interpreter, "full" on a device).
    scale: str = "full"
    # True when outputs are rounded to the case's fp16/bf16 dtype (kernels do).
    half_output: bool = False


def _ref_store(cache, key, value, slot_mapping, fmt):
    out = cache.copy()
    ref.store(out, key, value, slot_mapping, fmt)
    return out


def _ref_rotated(x, fmt: tqf.LayerFormat, tensor: str):
    params = layer_params(fmt)
    insts = params.keys if tensor == "key" else params.values
    return [rotate(l2_norm(np.asarray(x, np.float32)[..., p.channels])[1], p.rotation) for p in insts]


REFERENCE = Implementation("reference", _ref_store, ref.paged_attention, _ref_rotated)


def exact_dtype(x: np.ndarray):
    """For the torch implementations: bfloat16 / float16 / float32, the first that holds every
    value of x exactly (each case's own dtype, which the NumPy interface does not pass)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    for dt in (torch.bfloat16, torch.float16):
        back = t.to(dt).to(torch.float32)
        if torch.equal(back, t) or bool(((back == t) | (torch.isnan(back) & torch.isnan(t))).all()):
            return dt
    return torch.float32


def available() -> list[Implementation]:
    """The reference plus every implementation importable on this machine."""
    impls = [REFERENCE]
    try:
        from turboquant.torch_impl.conformance_adapter import torch_implementation
    except ImportError:  # no torch
        return impls
    impls.append(torch_implementation())
    fused = torch_implementation(fused_kernels=True)  # the C++ kernels, where they build
    if fused is not None:
        impls.append(fused)
    try:
        from turboquant.triton_impl.conformance_adapter import triton_implementation
    except ImportError:
        return impls
    impl = triton_implementation()
    if impl is not None:
        impls.append(impl)
    return impls

"""What the launch code needs to know about the GPU: its SM count (cached per device index).
Kept apart from launch.py so that the kernels' own modules (rotate, store_mse) can size persistent
grids without importing the launch layer (launch imports merge, which imports rotate)."""

from __future__ import annotations

import torch

_SM_COUNT: dict = {}


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 elsewhere (the CPU interpreter)."""
    if device.type != "cuda":
        return 1
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]

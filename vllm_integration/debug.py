"""Observe what the TurboQuant attention layers do, in-process (tests, debugging).

    from . import debug
    with debug.recording(callback):
        llm.generate(...)

``callback(event, data)`` is called synchronously inside the layer:

* ``event == "store"`` after the packed K/V of a step were written:
  ``layer_name, fmt, key, value, slot_mapping, kv_cache`` (live tensors: copy
  what you keep);
* ``event == "attention"`` after attention was computed:
  ``layer_name, fmt, query, kv_cache, block_table, seq_lens, query_start_loc,
  output, softmax_scale`` (the rows and requests actually scheduled).

Works only when the engine runs in the calling process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``).  Without a recorder the layers pay one
list check per call.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

_RECORDERS: list[Callable[[str, dict], None]] = []


def active() -> bool:
    return bool(_RECORDERS)


def emit(event: str, **data) -> None:
    for cb in list(_RECORDERS):
        cb(event, data)


@contextmanager
def recording(callback: Callable[[str, dict], None]):
    _RECORDERS.append(callback)
    try:
        yield callback
    finally:
        _RECORDERS.remove(callback)

"""The kernel tests run on CUDA, or on a CPU under Triton's interpreter (TRITON_INTERPRET=1 set
before Python starts); anywhere else every test here is skipped with that reason."""

from __future__ import annotations

import os

import pytest
import torch

RUNNABLE = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config, items):
    if RUNNABLE:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    skip = pytest.mark.skip(reason="needs CUDA or TRITON_INTERPRET=1")
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)

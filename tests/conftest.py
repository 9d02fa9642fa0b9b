"""Fixtures shared by every test directory under tests/."""

from __future__ import annotations

import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def bench_script():
    """Load ``benchmarks/<name>.py`` (scripts, not a package) as a module: ``bench_script("e2e_vllm")``."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load

"""Kernel micro-benchmarks and the pytest-benchmark files (``pytest benchmarks --benchmark-only``)."""

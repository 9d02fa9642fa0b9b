"""Benchmark harness (not part of the installed package).  Run the scripts as modules from the
repository root, e.g. ``python -m benchmarks.micro.bench_decode --help``:

- ``benchmarks.micro``: kernel micro-benchmarks (decode, store, prefill, compile resources, the
  CPU paths, vLLM's kernels as baselines) and the pytest-benchmark files (``nox -s bench``);
- ``benchmarks.e2e``: end-to-end runs through vLLM (quality per byte, serving) and the
  equal-layers comparison;
- ``benchmarks.plots``: plots and markdown reports from recorded results.
"""

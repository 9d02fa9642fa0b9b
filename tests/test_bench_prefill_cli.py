"""benchmarks/micro/bench_prefill.py without a GPU: argument checks, and the table and plot from rows."""

from __future__ import annotations

import argparse
import json

import pytest


def test_shapes_and_store_configs_are_checked(bench_script):
    bench = bench_script("micro.bench_prefill")
    assert bench.parse_shapes("8192x8192,32768x512") == [(8192, 8192), (32768, 512)]
    with pytest.raises(ValueError, match="'8k' is not CONTEXTxQUERY_ROWS"):
        bench.parse_shapes("8k")
    with pytest.raises(ValueError, match="needs 0 < query rows <= cached tokens"):
        bench.parse_shapes("512x1024")
    assert bench.parse_store_configs("tc:32:8") == [("tc", 32, 8, ())]
    assert bench.parse_store_configs("mse:32:4,tc:16:8") == [("mse", 32, 4, ()), ("tc", 16, 8, ())]
    with pytest.raises(ValueError, match=r"'bf16:32:8' is not KIND:BLOCK:WARPS\[:OPTIONS\] with KIND in tc, fma, mse"):
        bench.parse_store_configs("bf16:32:8")
    # store_mse.py's options: '+'-joined variants, pN (programs an SM), rN (register cap), cN (column blocks)
    assert bench.parse_store_configs("mse:64:4:prefetch+lean+p3,mse:128:8:halves+r128") == [
        ("mse", 64, 4, ("prefetch", "lean", "p3")), ("mse", 128, 8, ("halves", "r128"))]
    assert bench.store_options(("prefetch", "lean", "p3")) == {"variant": ("prefetch", "lean"), "programs_per_sm": 3,
                                                               "maxnreg": None, "col_blocks": None}
    assert bench.store_options(("search", "r128")) == {"variant": ("search",), "programs_per_sm": None,
                                                       "maxnreg": 128, "col_blocks": None}
    assert bench.store_options(()) == {"variant": (), "programs_per_sm": None, "maxnreg": None, "col_blocks": None}
    assert bench.parse_store_configs("mse:16:1:prefetch+search+kv+c4") == [
        ("mse", 16, 1, ("prefetch", "search", "kv", "c4"))]
    assert bench.store_options(("search", "kv", "c4")) == {"variant": ("search", "kv"), "programs_per_sm": None,
                                                           "maxnreg": None, "col_blocks": 4}
    with pytest.raises(ValueError, match="option 'c0' is not one of .* or cN"):
        bench.parse_store_configs("mse:16:1:c0")
    assert bench.store_options(("prefetch", "search", "wg", "p2")) == {
        "variant": ("prefetch", "search", "wg"), "programs_per_sm": 2, "maxnreg": None, "col_blocks": None}
    with pytest.raises(ValueError,
                       match="option 'fast' is not one of prefetch, lean, halves, search, kv, wg, balance, pN"):
        bench.parse_store_configs("mse:64:4:prefetch+fast")
    with pytest.raises(ValueError, match="option 'p0' is not one of"):
        bench.parse_store_configs("mse:64:4:p0")
    with pytest.raises(ValueError, match="option 'r' is not one of"):
        bench.parse_store_configs("mse:64:4:r")
    with pytest.raises(ValueError, match="'tc:32:8:lean': OPTIONS apply to KIND mse only"):
        bench.parse_store_configs("tc:32:8:lean")
    assert bench.parse_store_configs("mse:64:4:prefetch+lean+search+kv") == [
        ("mse", 64, 4, ("prefetch", "lean", "search", "kv"))]
    min_tokens = bench.positive_int("store-min-tokens")  # turboquant.cli's
    assert min_tokens("32") == 32
    for bad, why in (("0", "must be > 0, got 0"), ("-1", "must be > 0, got -1"), ("x", "must be an integer, got 'x'")):
        with pytest.raises(argparse.ArgumentTypeError, match=f"--store-min-tokens {why}"):
            min_tokens(bad)
    assert bench.parse_rotate_configs("32:4:2,16:4:3") == [(32, 4, 2), (16, 4, 3)]
    with pytest.raises(ValueError, match="'32:4' is not BR:WARPS:PROGRAMS_PER_SM"):
        bench.parse_rotate_configs("32:4")
    assert bench.parse_dense_rotations("kv,auto") == ["kv", "auto"] and bench.parse_dense_rotations("") == []
    with pytest.raises(argparse.ArgumentTypeError, match="--dense-rotations: 'both' is not supported; allowed "
                                                         "values: query, kv, auto"):
        bench.parse_dense_rotations("kv,both")


def test_report_and_plot_from_rows(bench_script, tmp_path):
    bench = bench_script("micro.bench_prefill")
    base = {"kind": "prefill", "batch": 1, "context": 8192, "query_tokens": 2048, "copy_fraction": None}
    rows = [{"env": True, "device": "TestGPU", "date": "2026-12-03", "torch": "t", "triton": "x"},
            {**base, "impl": "sdpa-bf16", "preset": "bf16", "seconds": 0.002},
            {**base, "impl": "tq3", "preset": "tq3", "seconds": 0.003, "vs_sdpa": 1.5},
            {**base, "kind": "prefill_stage", "impl": "rotate q", "preset": "tq3", "seconds": 1e-4, "vs_sdpa": 0.05},
            {"kind": "store", "impl": "store-tc-bt32-w8", "preset": "tq3", "batch": 1, "context": 8192,
             "query_tokens": 2048, "seconds": 2e-4, "copy_fraction": 0.025, "vs_sdpa": 0.1}]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    md = bench.report([str(path)])
    assert "TestGPU" in md and "timing: eager calls between events" in md
    assert "| 8,192 x 2,048 | 2.00 ms | 3.00 ms (1.50x) |" in md
    assert "| rotate q (tq3) | 8,192 x 2,048 | 100 us | 0.050 |" in md
    assert "| store-tc-bt32-w8 (tq3) | 2,048 | 200 us | 2.5% | 0.100 |" in md
    png = tmp_path / "p.png"
    bench.plot([str(path)], str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

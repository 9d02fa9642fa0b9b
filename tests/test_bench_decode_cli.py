"""benchmarks/micro/bench_decode.py's argument checks, which run before any GPU work."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest


def test_vllm_baselines_need_vllm_up_front(bench_script, monkeypatch):
    bench = bench_script("micro.bench_decode")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(SystemExit, match=r"--vllm needs vLLM importable"):
        bench.main(["--vllm", "--presets", "tq3"])


def test_kernel_specs_set_the_mma_knobs(bench_script):
    bench = bench_script("micro.bench_decode")
    from turboquant.triton_impl import AttnConfig

    base = AttnConfig()
    c = bench.kernel_config("mma@16r128b24576", base)
    assert (c.decode_kernel, c.mma_programs_per_sm, c.mma_maxnreg, c.mma_ring_bytes) == ("mma", 16, 128, 24576)
    c = bench.kernel_config("mma@b57344", base)
    assert (c.mma_programs_per_sm, c.mma_maxnreg, c.mma_ring_bytes) == (base.mma_programs_per_sm, base.mma_maxnreg,
                                                                        57344)
    assert bench.kernel_config("mma@r0", base).mma_maxnreg == 0
    assert bench.kernel_config("mma@t0", base).mma_shared_table is False
    assert bench.kernel_config("mma@t1p2", base).mma_step_tiles == 2
    assert bench.kernel_config("mma@p1", base).mma_step_tiles == 1 and base.mma_step_tiles == 0
    assert bench.kernel_config("mma@t0k1", base).mma_key_table == "single" and base.mma_key_table == "auto"
    assert bench.kernel_config("mma@p2k0", base).mma_key_table == "pair"
    assert bench.kernel_config("mma@r152k2", base).mma_key_table == "prmt"
    assert bench.kernel_config("mma@q1", base).mma_query_rotation == "bf16x2" and base.mma_query_rotation == "auto"
    assert bench.kernel_config("mma@k1q0", base).mma_query_rotation == "fma"
    assert bench.kernel_config("mma@q1w1", base).mma_split_rule == "waves" and base.mma_split_rule == "rounds"
    assert bench.kernel_config("mma@w0", base).mma_split_rule == "fill"
    assert bench.kernel_config("mma@w2", base).mma_split_rule == "rounds"
    assert bench.kernel_config("mma@q1w1o1", base).mma_output_rotation == "bf16x3" and base.mma_output_rotation == "fma"
    assert bench.kernel_config("mma@w1a1", base).mma_page_ahead is True and base.mma_page_ahead is False
    assert bench.kernel_config("mma@a0", base).mma_page_ahead is False
    assert bench.kernel_config("mma@w1g1", base).mma_pdl is True and base.mma_pdl is False
    assert bench.kernel_config("mma@g0", base).mma_pdl is False
    assert bench.kernel_config("mma@o2g1", base).mma_output_rotation == "fused"
    wide = bench.kernel_config("mma@a1v1", base)  # the wide value table brings its own ring
    assert (wide.mma_value_table, wide.mma_ring_bytes, wide.mma_page_ahead) == ("wide", 6144, True)
    assert (bench.kernel_config("mma@v2", base).mma_value_table, bench.kernel_config("mma@v2", base).mma_ring_bytes) \
        == ("single", 8192)
    assert bench.kernel_config("mma@v0", base) == dataclasses.replace(base, decode_kernel="mma", mma_value_table="pair")
    small = bench.kernel_config("mma@r120b4096a1", base)
    assert (small.mma_maxnreg, small.mma_ring_bytes, small.mma_page_ahead) == (120, 4096, True)
    prmt = bench.kernel_config("mma@r168b16384k2v3", base)  # tq4's byte permutes on a 16 KB ring
    assert (prmt.mma_maxnreg, prmt.mma_ring_bytes, prmt.mma_key_table, prmt.mma_value_table) == \
        (168, 16384, "prmt", "prmt")
    assert bench.kernel_config("mma@64s1024", base).max_splits == 1024
    assert bench.kernel_config("split", base).decode_kernel == "split"
    assert bench.kernel_config("auto", base) == base


@pytest.mark.parametrize("spec, match", [
    ("fast", "allowed values: auto, split, mma"),
    ("split@16", "allowed values: auto, split, mma"),
    ("mma@", "after mma@"),
    ("mma@b16384r128", "after mma@"),
    ("mma@s512b24576", "after mma@"),
    ("mma@g1a1", "after mma@"),  # g comes last
    ("mma@g2", "after mma@"),
    ("mma@s0", "max_splits=0 is not supported; allowed values: integers 1 to 4096"),
    ("mma@32x", "after mma@"),
    ("mma@b12288", "mma_ring_bytes=12288 is not supported; allowed values: \\[4096, 8192, 24576, 57344\\]"),
    ("mma@b16384", "mma_value_table='auto' with mma_ring_bytes=16384 is not supported; allowed: .*"
                   "mma_value_table='prmt' with one of \\[8192, 16384\\]"),
    ("mma@b131072", "mma_ring_bytes=131072 is not supported"),
    ("mma@p3", "mma_step_tiles=3 is not supported; allowed values: \\[0, 1, 2\\]"),
    ("mma@p2t0", "after mma@"),
    ("mma@k1p2", "after mma@"),
    ("mma@k3", "after mma@"),
    ("mma@k1t0", "after mma@"),
    ("mma@q1k1", "after mma@"),
    ("mma@q2", "after mma@"),
    ("mma@l2", "after mma@"),
    ("mma@l1", "after mma@"),  # the lean loop is the only one since the twentieth session
])
def test_bad_kernel_specs_are_refused_before_gpu_work(bench_script, spec, match):
    bench = bench_script("micro.bench_decode")
    with pytest.raises(SystemExit):
        bench.main(["--presets", "tq3", "--kernels", f"auto,{spec}"])
    with pytest.raises(ValueError, match=match):
        bench.kernel_config(spec, __import__("turboquant.triton_impl", fromlist=["AttnConfig"]).AttnConfig())


def _row(preset, batch, context, seconds, kind="turboquant"):
    return {"kind": kind, "preset": preset, "slot_bytes": 104, "batch": batch, "context": context,
            "seconds": seconds, "gbps": 1.0, "copy_fraction": 0.5}


def test_plot_speedups_are_against_fa3_bf16_where_the_run_has_it(bench_script, tmp_path):
    """plot_decode: speedups against vLLM's FA3 bf16 when the run has it, else torch SDPA; a --shapes run
    (one context per batch) is drawn as grouped bars."""
    plot = bench_script("plots.plot_decode")
    rows = [_row("torch-sdpa-bf16", 32, 32768, 0.9e-3, "sdpa_bf16"), _row("tq3", 32, 32768, 0.45e-3),
            _row("tq3", 1, 131072, 0.1e-3), _row("torch-sdpa-bf16", 1, 131072, 0.15e-3, "sdpa_bf16")]
    assert plot.baseline(rows) == "torch-sdpa-bf16"
    assert plot.speedups(rows)[("tq3", 32, 32768)] == pytest.approx(2.0)
    rows += [_row("vllm-fa3-bf16", 32, 32768, 1.0e-3, "vllm")]
    assert plot.baseline(rows) == "vllm-fa3-bf16"
    sp = plot.speedups(rows)
    assert sp[("tq3", 32, 32768)] == pytest.approx(1.0 / 0.45)
    assert ("tq3", 1, 131072) not in sp  # no FA3 row for that shape
    res = {"device": "test", "triton": "x", "rows": rows}
    png = tmp_path / "decode.png"
    plot.plot(res, str(png))
    assert png.stat().st_size > 10_000


def test_options_table_compares_each_option_with_its_presets_defaults(bench_script):
    """plot_decode's option table: an option's row against its own preset's row of the same shape (not another
    preset's, not the baseline), a shape the option lacks left empty, no table without option rows."""
    plot = bench_script("plots.plot_decode")
    rows = [_row("torch-sdpa-bf16", 32, 32768, 0.9e-3, "sdpa_bf16"), _row("tq3", 32, 32768, 0.40e-3),
            _row("tq3", 64, 1024, 0.05e-3), _row("tq3+mma@p1", 32, 32768, 0.32e-3),
            _row("tq4", 32, 32768, 0.60e-3), _row("tq4+mma@k2", 32, 32768, 0.75e-3)]
    md = plot.options_md({"rows": rows})
    lines = md.splitlines()
    assert lines[0].startswith("tq3: each option against the defaults")
    assert "| tq3+mma@p1 | 320.0 (1.250x) |  |" in lines  # 0.40 / 0.32; no 64 x 1024 row for the option
    assert "| tq4+mma@k2 | 750.0 (0.800x) |" in lines
    assert "| tq3 | 400.0 | 50.0 |" in lines
    assert plot.options_md({"rows": rows[:3]}) == ""


def test_plot_keeps_and_relabels_the_presets_asked_for(bench_script):
    """plot_decode --presets: only those rows, in that order, under their labels (an option a later commit
    made the default, under the preset's name); a name the run lacks or a label given twice is an error
    that names the run's presets."""
    plot = bench_script("plots.plot_decode")
    rows = [_row("k4v3", 32, 32768, 0.56e-3), _row("k4v3+mma@v1", 32, 32768, 0.54e-3),
            _row("vllm-fa3-bf16", 32, 32768, 0.96e-3, "vllm"),
            {"kind": "store", "preset": "tq3", "tokens": 32, "seconds": 1e-6, "gbps": 1.0, "copy_fraction": 0.1}]
    res = {"device": "test", "triton": "x", "rows": rows}
    got = plot.select(res, "vllm-fa3-bf16,k4v3+mma@v1=k4v3")
    assert [(r["preset"], r["seconds"]) for r in got["rows"] if r["kind"] != "store"] == [
        ("vllm-fa3-bf16", 0.96e-3), ("k4v3", 0.54e-3)]
    assert [r["kind"] for r in got["rows"]].count("store") == 1
    decode = [r for r in got["rows"] if r["kind"] != "store"]
    assert plot.speedups(decode)[("k4v3", 32, 32768)] == pytest.approx(0.96 / 0.54)
    with pytest.raises(SystemExit, match=r"no rows for \['tq4'\]; the run has: k4v3, k4v3\+mma@v1, vllm-fa3-bf16"):
        plot.select(res, "k4v3,tq4")
    with pytest.raises(SystemExit, match="a label appears twice"):
        plot.select(res, "k4v3,k4v3+mma@v1=k4v3")


def test_rounds_give_the_median_row_and_its_spread(bench_script, capsys):
    """--rounds: a row a shape with the median of the rounds' seconds, its bandwidth at that time, and the spread;
    a shape missing from a round (an error there) is left out; --rounds 0 is refused before any GPU work."""
    bench = bench_script("micro.bench_decode")
    runs = [[_row("tq3", 32, 32768, 4e-4), _row("tq3", 1, 131072, 7e-5)],
            [_row("tq3", 32, 32768, 5e-4), _row("tq3", 1, 131072, 8e-5)],
            [_row("tq3", 32, 32768, 4.2e-4)]]
    (row,) = bench.median_rows(runs)
    assert (row["batch"], row["context"], row["rounds"]) == (32, 32768, 3)
    assert row["seconds"] == pytest.approx(4.2e-4)
    assert row["spread"] == pytest.approx(1e-4 / 4.2e-4)
    assert row["gbps"] == pytest.approx(4e-4 / 4.2e-4) and row["copy_fraction"] == pytest.approx(0.5 * 4 / 4.2)
    with pytest.raises(SystemExit):
        bench.main(["--presets", "tq3", "--rounds", "0"])
    assert "--rounds must be > 0, got 0" in capsys.readouterr().err

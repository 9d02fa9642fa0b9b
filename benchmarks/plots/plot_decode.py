"""Plot (and print) bench_decode.py's JSON: decode latency vs context per batch
for every preset and torch SDPA bf16, plus achieved fraction of copy bandwidth.

    python -m benchmarks.plots.plot_decode results.json [--png decode.png] [--md table.md]
        [--presets tq3,k4v3+mma@v1=k4v3,vllm-fa3-bf16]

--presets keeps the rows of those presets (bench_decode's labels, e.g. a kernel option's ``k4v3+mma@v1``),
in that order, each under the label after ``=`` if one is given (e.g. the option a later commit made the
default, under the preset's name).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def table_md(res: dict, ref_gbps: float | None = None) -> str:
    rows = [r for r in res["rows"] if r["kind"] != "store"]
    sdpa = {(r["batch"], r["context"]): r["seconds"] for r in rows if r["kind"] == "sdpa_bf16"}
    out = [f"Card: {res['device']}; torch {res['torch']}, Triton {res['triton']}; copy bandwidth "
           f"{res['copy_gbps']:.0f} GB/s (read+write, measured in the same run); config {res.get('config')}", "",
           "| preset | B/token/head | batch | context | latency us | GB/s (stored bytes) | % of copy BW | "
           + (f"% of {ref_gbps:.0f} GB/s | " if ref_gbps else "") + "vs SDPA bf16 |",
           "|---|--:|--:|--:|--:|--:|--:|" + ("--:|" if ref_gbps else "") + "--:|"]
    for r in rows:
        base = sdpa.get((r["batch"], r["context"]))
        sp = f"{base / r['seconds']:.2f}x" if base else ""
        ref = f"{100 * r['gbps'] / ref_gbps:.1f} | " if ref_gbps else ""
        out.append(f"| {r['preset']} | {r['slot_bytes']} | {r['batch']} | {r['context']} | {r['seconds'] * 1e6:.1f} | "
                   f"{r['gbps']:.0f} | {100 * r['copy_fraction']:.1f} | {ref}{sp} |")
    st = [r for r in res["rows"] if r["kind"] == "store"]
    if st:
        out += ["", "| store preset | tokens x 8 heads | us | GB/s (bf16 K,V read + slots written) | % of copy BW |",
                "|---|--:|--:|--:|--:|"]
        for r in st:
            out.append(f"| {r['preset']} | {r['tokens']} | {r['seconds'] * 1e6:.1f} | {r['gbps']:.0f} | "
                       f"{100 * r['copy_fraction']:.1f} |")
    if res.get("check_rel_err"):
        out += ["", "decode vs float64 attention over the dequantized cache (4 x 3000, bf16 out): "
                + ", ".join(f"{k} {v:.1e}" for k, v in res["check_rel_err"].items())]
    return "\n".join(out)


def options_md(res: dict) -> str:
    """A kernel option's rows (``PRESET+spec``, e.g. ``tq3+mma@p1``) against the preset's own row (the defaults) of
    the same run, one table per preset: microseconds and the default's time / the option's (above 1.00x: the option
    is faster).  Empty when the run has no option rows."""
    rows = [r for r in res["rows"] if r["kind"] != "store"]
    by = {(r["preset"], r["batch"], r["context"]): r["seconds"] for r in rows}
    shapes = list(dict.fromkeys((r["batch"], r["context"]) for r in rows))
    out = []
    for preset in dict.fromkeys(r["preset"] for r in rows if "+" not in r["preset"]):
        options = list(dict.fromkeys(r["preset"] for r in rows if r["preset"].startswith(preset + "+")))
        cols = [sh for sh in shapes if (preset, *sh) in by]
        if not options or not cols:
            continue
        out += ["", f"{preset}: each option against the defaults (`{preset}`), same run (us; default / option, above "
                "1.00x the option is faster)", "",
                "| kernel | " + " | ".join(f"{b} x {c}" for b, c in cols) + " |", "|---|" + "--:|" * len(cols)]
        for name in [preset] + options:
            cells = []
            for sh in cols:
                t = by.get((name, *sh))
                cells.append("" if t is None else f"{t * 1e6:.1f}" if name == preset
                             else f"{t * 1e6:.1f} ({by[(preset, *sh)] / t:.3f}x)")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out).lstrip("\n")


def baseline(rows: list) -> str:
    """The bf16 attention the speedups are taken against: vLLM's FA3 bf16 where the run has it, else torch SDPA."""
    kinds = {r["preset"] for r in rows}
    return "vllm-fa3-bf16" if "vllm-fa3-bf16" in kinds else "torch-sdpa-bf16"


def speedups(rows: list) -> dict:
    """{(preset, batch, context): baseline seconds / preset seconds} for the shapes the baseline has."""
    ref = baseline(rows)
    base = {(r["batch"], r["context"]): r["seconds"] for r in rows if r["preset"] == ref}
    return {(r["preset"], r["batch"], r["context"]): base[(r["batch"], r["context"])] / r["seconds"]
            for r in rows if (r["batch"], r["context"]) in base}


def plot_shapes(res: dict, path: str) -> None:
    """A --shapes run (one context per batch): grouped bars per batch x context, speed against bf16
    attention (above) and fraction of copy bandwidth on the stored bytes (below)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res["rows"] if r["kind"] != "store"]
    shapes = list(dict.fromkeys((r["batch"], r["context"]) for r in rows))
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    sp, ref = speedups(rows), baseline(rows)
    by = {(r["preset"], r["batch"], r["context"]): r for r in rows}
    width = 0.8 / len(presets)
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 2.6 * len(shapes)), 7.5), squeeze=False)
    for k, p in enumerate(presets):
        xs = [i + (k - (len(presets) - 1) / 2) * width for i in range(len(shapes))]
        axes[0][0].bar(xs, [sp.get((p, *sh), 0.0) for sh in shapes], width, label=p)
        axes[1][0].bar(xs, [100 * by[(p, *sh)]["copy_fraction"] if (p, *sh) in by else 0.0 for sh in shapes],
                       width, label=p)
    for ax in axes[:, 0]:
        ax.set_xticks(range(len(shapes)), [f"{b} x {c:,}" for b, c in shapes])
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].axhline(1.0, color="k", lw=1)
    axes[0][0].set_ylabel(f"speed vs {ref} (x, higher is faster)")
    axes[1][0].set_ylabel("% of copy bandwidth (stored bytes)")
    axes[1][0].set_xlabel("batch x context (tokens)")
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"Decode attention, Llama-3-8B geometry, {res['device']} (Triton {res['triton']}), one process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot(res: dict, path: str) -> None:
    rows = [r for r in res["rows"] if r["kind"] != "store"]
    contexts = defaultdict(set)
    for r in rows:
        contexts[r["batch"]].add(r["context"])
    if all(len(c) == 1 for c in contexts.values()):
        return plot_shapes(res, path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(2, len(batches), figsize=(4.2 * len(batches), 7.5), squeeze=False)
    series = defaultdict(list)
    for r in rows:
        series[(r["preset"], r["batch"])].append(r)
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    for j, b in enumerate(batches):
        for p in presets:
            pts = sorted(series.get((p, b), []), key=lambda r: r["context"])
            if not pts:
                continue
            style = dict(color="k", lw=2.5) if p == "torch-sdpa-bf16" else {}
            axes[0][j].plot([r["context"] for r in pts], [r["seconds"] * 1e6 for r in pts], "o-", label=p,
                            ms=3, **style)
            axes[1][j].plot([r["context"] for r in pts], [100 * r["copy_fraction"] for r in pts], "o-", label=p,
                            ms=3, **style)
        for i in range(2):
            axes[i][j].set_xscale("log", base=2)
            axes[i][j].grid(alpha=0.3)
        axes[0][j].set_yscale("log")
        axes[0][j].set_title(f"batch {b}")
        axes[1][j].set_xlabel("context (tokens)")
    axes[0][0].set_ylabel("decode latency (us)")
    axes[1][0].set_ylabel("% of copy bandwidth (stored bytes)")
    axes[1][0].axhline(70, color="r", ls="--", lw=1)
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Decode attention, Llama-3-8B geometry, {res['device']} (Triton {res['triton']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def select(res: dict, spec: str) -> dict:
    """res with only the rows of --presets's comma-separated ``name[=label]`` entries, relabelled, in that
    order (store rows kept); a name without rows is an error that lists the run's presets."""
    entries = [e.partition("=") for e in spec.split(",") if e]
    have = list(dict.fromkeys(r["preset"] for r in res["rows"] if r["kind"] != "store"))
    missing = [name for name, _, _ in entries if name not in have]
    if missing or not entries:
        raise SystemExit(f"--presets {spec!r}: no rows for {missing or 'any'}; the run has: {', '.join(have)}")
    labels = [label or name for name, _, label in entries]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"--presets {spec!r}: a label appears twice: {labels}")
    rows = [r for r in res["rows"] if r["kind"] == "store"]
    for name, _, label in entries:
        rows += [{**r, "preset": label or name} for r in res["rows"] if r["kind"] != "store" and r["preset"] == name]
    return {**res, "rows": rows}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--png", default=None)
    ap.add_argument("--md", default=None)
    ap.add_argument("--ref-copy-gbps", type=float, default=None,
                    help="extra column: fraction of this copy bandwidth (e.g. 4223 from the shared notes)")
    ap.add_argument("--presets", default=None, help="name[=label],...: only these rows, relabelled, in this order")
    args = ap.parse_args(argv)
    res = json.load(open(args.json))
    if args.presets:
        res = select(res, args.presets)
    md = table_md(res, args.ref_copy_gbps)
    if opts := options_md(res):
        md += "\n\n" + opts
    print(md)
    if args.md:
        open(args.md, "w").write(md + "\n")
    if args.png:
        plot(res, args.png)


if __name__ == "__main__":
    main()

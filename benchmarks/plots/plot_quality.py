#!/usr/bin/env python3
"""Plot quality against KV-cache bytes per token from a quality-harness result file.

    python -m benchmarks.plots.plot_quality build/quality/results.json --out build/quality/quality.png

One point per codec (every TurboQuant preset, the bf16 and FP8 baselines, the
fp32 reference): ΔPPL against the bf16 cache, the attention-output relative
error (mean over layers and KV heads) and, when the results have it, needle
retrieval accuracy, each against bytes per token per KV head.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def load(path: str) -> dict:
    with open(path) as f:
        rep = json.load(f)
    if not rep.get("results"):
        raise SystemExit(f"{path}: no 'results' (write it with python -m turboquant.quality.harness)")
    return rep


def panels(rep: dict) -> list[tuple[str, str, callable]]:
    out = []
    if all("delta_vs_bf16" in r for r in rep["results"]):
        out.append(("ΔPPL vs bf16 cache", "symlog", lambda r: r["delta_vs_bf16"]["delta_ppl"]))
    out.append(("attention output rel. error", "linear", lambda r: r["fidelity_mean"]["out_rel_err"]))
    ctxs = sorted({c for r in rep["results"] if "retrieval" in r for c in r["retrieval"]["by_context"]}, key=int)
    for c in ctxs:
        out.append((f"needle accuracy @ {c} tokens", "linear",
                    lambda r, c=c: r.get("retrieval", {}).get("by_context", {}).get(c)))
    return out


def plot(rep: dict, out: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = panels(rep)
    fig, axes = plt.subplots(1, len(ps), figsize=(5.2 * len(ps), 4.4), squeeze=False)
    for ax, (title, scale, get) in zip(axes[0], ps):
        for r in rep["results"]:
            y = get(r)
            if y is None:
                continue
            x = r["bytes_per_token_per_kv_head"]
            base = r["codec"] in ("fp32", "bf16", "fp8_e4m3")
            ax.scatter([x], [y], marker="s" if base else "o", color="tab:gray" if base else "tab:blue", zorder=3)
            ax.annotate(r["codec"], (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xscale("log", base=2)
        if scale == "symlog":
            ax.set_yscale("symlog", linthresh=0.01)
        ax.set_xlabel("bytes per token per KV head (K+V)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    ed = rep.get("eval_data", {})
    fig.suptitle(f"{os.path.basename(rep.get('model', 'model'))}: held-out stdlib text, "
                 f"{ed.get('ppl_windows', '?')} windows x {ed.get('context', '?')} tokens", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="JSON written by python -m turboquant.quality.harness")
    p.add_argument("--out", default=None, help="PNG path (default: next to the results, quality.png)")
    args = p.parse_args(argv)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.results)), "quality.png")
    print(f"wrote {plot(load(args.results), out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tables and plot of ``serving.py`` rows: several runs (JSONL files) merged into one report.

Ratios compare rows of the same sizes: against bf16 / fp8 of the same run where that run measured
them, else of the latest other run that did (the last in the order the files are given: list them
oldest first; marked ``*``).  Throughput ratios are config / baseline (higher is
better); TTFT, TPOT ratios are config / baseline time (lower is better); capacity is tokens /
baseline tokens.

The prefill bound: prefill compute does not depend on the KV format, so no config serves a
workload in less time than its prefill takes, which is at least bf16's (the prefill_only run of the
same prompts, one output token).  A config's total-time speedup over bf16 -- its output tok/s
ratio, since the output token count is the same -- is therefore at most T_bf16(workload) /
T_bf16(prefill only) ("bound" column).
"""

from __future__ import annotations

import json
import os

BASELINES = ("bf16", "fp8")
WORKLOAD_ORDER = {"M": 0, "L": 1, "G": 2}


def load_runs(paths: list[str]) -> tuple[list[dict], list[dict]]:
    """(environment rows, measurement rows) of every file, in file order."""
    envs, rows = [], []
    for path in paths:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"--report: {path}:{n} is not a JSON line ({e})") from None
                (envs if r.get("env") else rows).append(r)
    if not rows:
        raise ValueError(f"--report: no measurement rows in {', '.join(paths)}")
    return envs, rows


def size_key(r: dict) -> tuple:
    """What must match for two rows to be compared."""
    m = r["measurement"]
    if m in ("throughput", "prefill_only"):
        return (r["geometry"], m, r["workload"], r["requests"], r["prompt_len"], r["output_len"])
    if m == "ttft":
        return (r["geometry"], m, r["prompt_len"])
    if m == "tpot":
        return (r["geometry"], m, r["batch"], r["context"], r["steps"])
    return (r["geometry"], m)


def measured(r: dict) -> bool:
    return "error" not in r and "skipped" not in r


VALUE = {"engine": "kv_tokens", "throughput": "output_tok_s", "prefill_only": "seconds", "ttft": "seconds",
         "tpot": "seconds_per_token"}


class Index:
    """Baseline lookup: the same run first, else the latest run that has it (the last in file order)."""

    def __init__(self, rows: list[dict]):
        self.by = {}
        for r in rows:
            if measured(r) and r["measurement"] in VALUE:
                self.by.setdefault((r["config"], size_key(r)), []).append(r)

    def find(self, config: str, row: dict, measurement: str | None = None) -> tuple[dict | None, bool]:
        key = size_key(row)
        if measurement:  # e.g. the prefill_only row of a throughput row's prompts
            key = (key[0], measurement, *key[2:5], 1)
        cands = self.by.get((config, key), [])
        same = [c for c in cands if c["run_id"] == row["run_id"]]
        if same:
            return same[-1], True
        return (cands[-1], False) if cands else (None, False)

    def ratio(self, config: str, row: dict) -> str:
        if not measured(row):
            return "-"
        base, same = self.find(config, row)
        if base is None:
            return "-"
        v = VALUE[row["measurement"]]
        return f"{row[v] / base[v]:.2f}x" + ("" if same else "*")


def label(config: str) -> str:
    from turboquant.vllm_integration.engine_configs import VLLM_TQ

    return f"vLLM `{config}`" if config in VLLM_TQ else f"`{config}`" + ("" if config in BASELINES else " (ours)")


def _status(r: dict) -> str | None:
    if "error" in r:
        return "failed: " + r["error"][:100].replace("|", "/")
    if "skipped" in r:
        return "skipped: " + r["skipped"][:100].replace("|", "/")
    return None


def _cells(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def capacity_table(rows: list[dict], ix: Index) -> list[str]:
    eng = [r for r in rows if r["measurement"] == "engine"]
    workloads = sorted({w for r in eng if measured(r) for w in r["max_concurrency"] if w != "max_model_len"},
                       key=lambda w: WORKLOAD_ORDER.get(w, 9))
    head = ["config", "run", "KV tokens (blocks x size)", "vs bf16", "vs fp8", "max concurrency at max_model_len",
            *(f"max concurrency {w}" for w in workloads), "engine start (s)", "CUDA graphs"]
    lines = [_cells(head), "|" + "---|" * 2 + "--:|" * (len(head) - 3) + "---|"]
    for r in eng:
        s = _status(r)
        if s:
            lines.append(_cells([label(r["config"]), r["run_id"], s, *[""] * (len(head) - 3)]))
            continue
        mc = r["max_concurrency"]
        lines.append(_cells([label(r["config"]), r["run_id"],
                             f"{r['kv_tokens']:,} ({r['num_gpu_blocks']:,} x {r['block_size']})",
                             ix.ratio("bf16", r), ix.ratio("fp8", r), f"{mc['max_model_len']:,.2f}x",
                             *(f"{mc[w]:,.2f}x ({r['request_tokens'][w]:,} tok)" if w in mc else "-"
                               for w in workloads),
                             str(r["engine_start_s"]), "yes" if r["cuda_graphs"] else "no"]))
    return lines


def bound(ix: Index, r: dict) -> str:
    """T_bf16(workload) / T_bf16(prefill only), same sizes."""
    if not measured(r):
        return "-"
    total, same_t = ix.find("bf16", r)
    prefill, same_p = ix.find("bf16", r, "prefill_only")
    if total is None or prefill is None:
        return "-"
    return f"{total['seconds'] / prefill['seconds']:.2f}x" + ("" if same_t and same_p else "*")


def throughput_table(rows: list[dict], ix: Index) -> list[str]:
    lines = ["| workload | config | run | seconds | output tok/s | total tok/s | vs bf16 | vs fp8 | bound vs bf16 "
             "| prefill only (s) |", "|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    tp = [r for r in rows if r["measurement"] == "throughput"]
    for r in sorted(tp, key=lambda r: (WORKLOAD_ORDER.get(r["workload"], 9), r["requests"], r["prompt_len"])):
        what = f"{r['workload']}: {r['requests']} x ({r['prompt_len']:,} + {r['output_len']:,})"
        s = _status(r)
        if s:
            lines.append(f"| {what} | {label(r['config'])} | {r['run_id']} | {s} |||||||")
            continue
        if not r.get("complete", True):
            what += f" (only {r['output_tokens']:,} output tokens came back)"
        pre, _ = ix.find(r["config"], r, "prefill_only")
        pre_s = f"{pre['seconds']:.4g}" if pre else "-"
        lines.append(f"| {what} | {label(r['config'])} | {r['run_id']} | {r['seconds']:.4g} | {r['output_tok_s']:,.0f} "
                     f"| {r['total_tok_s']:,.0f} | {ix.ratio('bf16', r)} | {ix.ratio('fp8', r)} | {bound(ix, r)} "
                     f"| {pre_s} |")
    return lines


def latency_table(rows: list[dict], ix: Index) -> list[str]:
    lines = ["| measurement | config | run | value | vs bf16 | vs fp8 | detail |", "|---|---|---|--:|--:|--:|---|"]
    lat = [r for r in rows if r["measurement"] in ("ttft", "tpot")]
    for r in sorted(lat, key=lambda r: (r["measurement"], r.get("prompt_len", r.get("context", 0)))):
        if r["measurement"] == "ttft":
            what = f"TTFT, one {r['prompt_len']:,}-token prompt"
            val = f"{r['seconds']:.3f} s" if measured(r) else "-"
            detail = "median of " + ", ".join(f"{x:.3f}" for x in r["samples"]) if measured(r) else _status(r)
        else:
            what = f"TPOT, {r['batch']} x {r['context']:,} context, {r['steps']} steps"
            val = f"{1000 * r['seconds_per_token']:.2f} ms" if measured(r) else "-"
            detail = (f"first tokens after {r['first_token_s']:.1f} s" if measured(r) else _status(r))
        lines.append(f"| {what} | {label(r['config'])} | {r['run_id']} | {val} | {ix.ratio('bf16', r)} "
                     f"| {ix.ratio('fp8', r)} | {detail} |")
    return lines


def short_commit(commit) -> str:
    """A row's git_commit for the table: 12 hex digits, keeping a '+dirty' mark (the tree that ran was
    not that commit: a copied tree whose .git is older, unless TQ_GIT_COMMIT named the commit)."""
    text = str(commit if commit is not None else "?")
    head, plus, rest = text.partition("+")
    return head[:12] + plus + rest


def report_markdown(envs: list[dict], rows: list[dict], paths: str) -> str:
    ix = Index(rows)
    runs = "; ".join(f"`{e.get('run_id')}`: {e.get('date', '?')}, {e.get('device', '?')}, vLLM {e.get('vllm', '?')}, "
                     f"torch {e.get('torch', '?')}, Triton {e.get('triton', '?')}, commit "
                     f"{short_commit(e.get('git_commit'))}, geometry {e.get('geometry', '?')}" for e in envs)
    out = ["### Serving through vLLM (benchmarks/e2e/serving.py)", "",
           f"Weights are random (vLLM `load_format=\"dummy\"`): only speed and capacity mean anything here. "
           f"Runs: {runs or '(no environment rows)'}; raw rows: `{paths}`.", "",
           *capacity_table(rows, ix), ""]
    if any(r["measurement"] == "throughput" for r in rows):
        out += [*throughput_table(rows, ix), "",
                "Throughput: all requests submitted at once to one `generate` after a warm-up request; vs bf16 / "
                "fp8 = output tok/s ratio. Bound vs bf16 = T_bf16(workload) / T_bf16(prefill only, same prompts, "
                "one output token): prefill does not depend on the KV format, so no config's speedup over bf16 "
                "on that workload exceeds it.", ""]
    if any(r["measurement"] in ("ttft", "tpot") for r in rows):
        out += [*latency_table(rows, ix), "", "TTFT, TPOT: vs bf16 / fp8 = time ratio (lower is better)."]
    if any(r["measurement"] == "step_profile" for r in rows):
        from .step_profile import table as step_table

        out += ["", *step_table(rows, label)]
    crashed = [r for r in rows if r["measurement"] == "worker"]
    if crashed:
        out += ["", "Workers that ended without finishing (their earlier rows are in the tables): "
                + "; ".join(f"{label(r['config'])} in `{r['run_id']}`: {r['error']}" for r in crashed) + "."]
    if any(("*" in line) for line in out[4:]):
        out += ["", "`*`: against a baseline measured in another run (same sizes)."]
    return "\n".join(out)


def plot(envs: list[dict], rows: list[dict], out: str) -> str:
    """Output tok/s per workload, KV capacity, time to first token and time per output token, per
    config (the last measured row of each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(r["config"] for r in rows))
    color = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(configs)}  # one colour per config
    tp = {}
    for r in rows:
        if r["measurement"] == "throughput" and measured(r):
            tp[(f"{r['workload']}: {r['requests']}x({r['prompt_len']}+{r['output_len']})", r["config"])] = r
    cap = {r["config"]: r for r in rows if r["measurement"] == "engine" and measured(r)}
    ttft = {(r["prompt_len"], r["config"]): r for r in rows if r["measurement"] == "ttft" and measured(r)}
    tpot = {(f"{r['batch']} x {r['context']:,}", r["config"]): r for r in rows
            if r["measurement"] == "tpot" and measured(r)}
    workloads = sorted({w for w, _ in tp}, key=lambda w: (WORKLOAD_ORDER.get(w[0], 9), w))
    fig, (a1, a2, a3, a4) = plt.subplots(1, 4, figsize=(19, 4.8), gridspec_kw={"width_ratios": [2, 1, 1.2, 1]})

    def grouped(ax, groups, table, value):
        """Bars per group, one per config that has a row there (skipped configs leave no empty bar)."""
        shown = [c for c in configs if any((g, c) in table for g in groups)]
        width = 0.8 / max(1, len(shown))
        for k, c in enumerate(shown):
            xs = [i + k * width for i, g in enumerate(groups) if (g, c) in table]
            ax.bar(xs, [value(table[(g, c)]) for g in groups if (g, c) in table], width, label=c, color=color[c])
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
        return shown

    if grouped(a1, workloads, tp, lambda r: r["output_tok_s"]):
        a1.legend(fontsize=7)
    a1.set_xticklabels(workloads, fontsize=8)
    a1.set_ylabel("output tokens / s")
    a1.set_title("throughput per workload (higher is better)")
    cs = [c for c in configs if c in cap]
    a2.bar(range(len(cs)), [cap[c]["kv_tokens"] for c in cs], color=[color[c] for c in cs])
    a2.set_xticks(range(len(cs)), cs, rotation=30, ha="right", fontsize=8)
    a2.set_ylabel("KV-cache capacity (tokens)")
    a2.set_title("KV capacity")
    lens = sorted({n for n, _ in ttft})
    if grouped(a3, lens, ttft, lambda r: r["seconds"]):
        a3.legend(fontsize=7)
    a3.set_xticklabels([f"{n:,} tokens" for n in lens], fontsize=8)
    a3.set_ylabel("seconds")
    a3.set_title("time to first token, one prompt (lower is better)")
    shapes = sorted({g for g, _ in tpot})
    if grouped(a4, shapes, tpot, lambda r: 1e3 * r["seconds_per_token"]):
        a4.legend(fontsize=7)
        for bars in a4.containers:  # values on the bars: vLLM's TurboQuant is ~10x the others
            a4.bar_label(bars, fmt="%.1f", fontsize=7)
    a4.set_xticklabels([f"batch x context {g}" for g in shapes], fontsize=8)
    a4.set_ylabel("ms per output token")
    a4.set_title("time per output token (lower is better)")
    runs: dict[str, list[str]] = {}  # one entry per (vLLM, card), naming its runs: the title stays one line
    for e in envs:
        runs.setdefault(f"vLLM {e.get('vllm', '?')} on {e.get('device', '?')}", []).append(str(e.get("run_id")))
    where = "; ".join(f"{k}, runs {', '.join(v)}" for k, v in runs.items())
    fig.suptitle(f"serving through vLLM ({where}); random weights: only speed and capacity mean anything",
                 fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(args) -> int:
    paths = [p for p in args.report.split(",") if p]
    envs, rows = load_runs(paths)
    md = report_markdown(envs, rows, "`, `".join(paths))
    print(md)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + md + "\n")
    if args.plot:
        plot(envs, rows, args.plot)
    return 0

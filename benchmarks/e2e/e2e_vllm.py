"""End-to-end comparison through vLLM on one model: KV capacity, quality, decode throughput.

For each config (bf16, fp8, vLLM's built-in TurboQuant presets, our presets) one engine is built
with the same settings and measured on the same held-out data:

* KV capacity: vLLM's ``num_gpu_blocks x block_size`` tokens at the same memory fraction;
* perplexity of held-out text windows (prompt logprobs), scored on positions >= CHUNK so that
  every scored token attends a history that went through the cache in every config (prefill is
  chunked at CHUNK tokens; vLLM's TurboQuant attends exact K/V inside a first chunk only);
* needle retrieval accuracy by context length and depth (greedy answers, held-out tasks);
* decode throughput: output tokens per second for NSEQ greedy sequences.

    python -m benchmarks.e2e.e2e_vllm --model models/tiny-llama --out e2e.json
        [--configs bf16,fp8,turboquant_4bit_nc,turboquant_3bit_nc,tq4,tq3,tq3_qjl,tq3+k4v3@2]

MAIN+BOUNDARY@N is MAIN with the first N and last N layers in BOUNDARY (SPEC 7.1; the option
``boundary_layers`` / ``boundary_preset``).

Every engine gets the same fixed KV pool (--kv-mib), so capacity = pool / page size even when
engines share the card.  --jobs N starts N engines concurrently (engine start is mostly compile
work) while measurements still run one engine at a time, and no engine starts while decode
throughput is being timed (file locks next to --out).

Needs vLLM (on the GPU machine: tools/gpu-vllm) and this package installed (the plugin).
Writes one JSON line per config as it goes (partial results survive a timeout).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

import numpy as np

from turboquant.vllm_integration.engine_configs import (
    BASELINES,
    VLLM_TQ,
    bytes_per_token,
    config_kwargs,
    memory_kwargs,
    on_cuda,
    parse_boundary,
)

CHUNK = 128  # max_num_batched_tokens: prefill chunk size (= vLLM TurboQuant's continuation threshold)


def environment() -> dict:
    """The first line of a results file: the machine and the versions."""
    import platform

    import torch
    import vllm

    from turboquant.quality import corpus

    ev = corpus.load_corpus("eval")
    # the held-out text is the running Python's standard library: another Python version, other text
    env = {"env": True, "date": time.strftime("%Y-%m-%d"), "vllm": vllm.__version__, "torch": torch.__version__,
           "python": platform.python_version(), "eval_corpus_sha256": ev.manifest_sha256, "eval_corpus_root": ev.root}
    if on_cuda():
        env["device"] = torch.cuda.get_device_name(0)
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        env["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return env


def engine_kwargs(config: str, model: str, args) -> dict:
    kw = dict(model=model, dtype="bfloat16", max_model_len=args.max_len, max_num_seqs=args.nseq,
              max_num_batched_tokens=CHUNK, enable_chunked_prefill=True, enable_prefix_caching=False,
              enforce_eager=args.eager, seed=0, block_size=32)
    # a fixed pool on every platform: capacity is pool / page size, whatever else shares the card
    kw.update(memory_kwargs(args.mem, kv_mib(args) << 20, fixed_gpu_pool=True))
    preset = config.removesuffix(CAL)
    # "+cal": outlier channels calibrated on this model (training split)
    kw.update(config_kwargs(preset, calibration_file(model, preset, args) if config.endswith(CAL) else None))
    return kw


def kv_mib(args) -> int:
    return args.kv_mib if args.kv_mib is not None else (16384 if on_cuda() else 256)


@contextlib.contextmanager
def flocked(path: str | None, exclusive: bool = True):
    """An flock on ``path`` (nothing without a path).  With --jobs the workers share two files:
    ``<out>.lock``, held exclusively while an engine is measured (one measurement at a time), and
    ``<out>.starts``, held shared while an engine starts and exclusively while decode throughput
    is timed, so that no other engine compiles or captures graphs during that timing."""
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def starts_lock(args) -> str | None:
    return args.lock + ".starts" if args.lock else None


CAL = "+cal"  # config suffix: the preset with `turboquant calibrate` outlier channels


def calibration_file(model: str, preset: str, args) -> str:
    from turboquant.quality import calibrate

    name = f"calib-{os.path.basename(os.path.normpath(model))}-{preset}.json"
    path = os.path.join(os.path.dirname(os.path.abspath(args.out)), name)
    if not os.path.exists(path):
        calibrate.save(calibrate.calibrate_model(model, preset, windows=4, context=512), path, preset)
    return path


def bytes_per_token_head(config: str, head_size: int, num_layers: int, skipped: int) -> float:
    """Average stored bytes per token per KV head over the model's layers."""
    if config in VLLM_TQ:
        from vllm.model_executor.layers.quantization.turboquant.config import TQ_PRESETS, TurboQuantConfig

        p = TQ_PRESETS[config]
        slot = TurboQuantConfig(head_dim=head_size, key_quant_bits=p["key_quant_bits"],
                                value_quant_bits=p["value_quant_bits"]).slot_size_aligned
        return (skipped * bytes_per_token("bf16", head_size) + (num_layers - skipped) * slot) / num_layers
    return bytes_per_token(config.removesuffix(CAL), head_size, num_layers)


def measure(config: str, args, text_ids, tasks) -> dict:
    from vllm import LLM

    with flocked(starts_lock(args), exclusive=False):
        t0 = time.time()
        llm = LLM(**engine_kwargs(config, args.model, args))
        start_s = time.time() - t0
    vc = llm.llm_engine.vllm_config
    cc = vc.cache_config
    hf = vc.model_config.hf_config
    row = {"config": config, "engine_start_s": round(start_s, 1), "num_blocks": int(cc.num_gpu_blocks),
           "block_size": int(cc.block_size), "kv_tokens": int(cc.num_gpu_blocks) * int(cc.block_size),
           "skipped_layers": list(getattr(cc, "kv_cache_dtype_skip_layers", []) or [])}
    if parse_boundary(config):  # ours (SPEC 7.1): those layers are in the boundary preset, not in bf16
        row["boundary_layers"] = row.pop("skipped_layers")
        row["skipped_layers"] = []
    row["bytes_per_token_per_kv_head"] = bytes_per_token_head(
        config, hf.head_dim, hf.num_hidden_layers, len(row["skipped_layers"]) if config in VLLM_TQ else 0)
    try:
        with flocked(args.lock):
            evaluate(llm, row, args, text_ids, tasks)
    finally:
        from turboquant.vllm_integration.compat import shutdown_llm

        shutdown_llm(llm)
    return row


def evaluate(llm, row: dict, args, text_ids, tasks) -> None:
    """PPL, needle retrieval and decode throughput of a started engine, into ``row``."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    # perplexity on held-out windows, positions >= CHUNK
    from turboquant.quality import corpus
    from turboquant.quality.needles import BOS_ID

    wins = corpus.windows(text_ids, args.window, args.windows, BOS_ID, spread=True)
    prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in w]) for w in wins]
    sp = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    t0 = time.time()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    nll = []
    for p, o in zip(prompts, outs):
        ids = p["prompt_token_ids"]
        for pos in range(CHUNK, len(ids)):
            nll.append(-o.prompt_logprobs[pos][ids[pos]].logprob)
    row["ppl"] = float(np.exp(np.mean(nll)))
    row["ppl_tokens"] = len(nll)
    row["ppl_s"] = round(time.time() - t0, 1)

    # retrieval
    from turboquant.quality.needles import VALUE_LEN

    sp = SamplingParams(max_tokens=VALUE_LEN, temperature=0.0)
    outs = llm.generate([TokensPrompt(prompt_token_ids=[int(t) for t in task.ids[:-VALUE_LEN]]) for task in tasks],
                        sp, use_tqdm=False)
    acc: dict = {}
    for task, o in zip(tasks, outs):
        ok = list(o.outputs[0].token_ids[:VALUE_LEN]) == [int(t) for t in task.answer]
        acc.setdefault(str(task.context), {}).setdefault(str(task.depth), []).append(ok)
    row["retrieval"] = {c: {d: float(np.mean(v)) for d, v in ds.items()} for c, ds in acc.items()}
    flat = [o for ds in acc.values() for v in ds.values() for o in v]
    row["retrieval_mean"] = float(np.mean(flat))
    row["needles_solved"], row["needles_total"] = int(sum(flat)), len(flat)

    # decode throughput
    prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in wins[0][:32]])] * args.nseq
    sp = SamplingParams(max_tokens=args.gen, temperature=0.0, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)  # warm-up
    with flocked(starts_lock(args)):
        t0 = time.time()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        dt = time.time() - t0
    row["decode_tokens_per_s"] = round(sum(len(o.outputs[0].token_ids) for o in outs) / dt, 1)
    row["greedy_tokens"] = [list(o.outputs[0].token_ids[:64]) for o in outs[:1]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/tiny-llama")
    ap.add_argument("--configs", default="bf16,fp8,turboquant_4bit_nc,turboquant_k3v4_nc,turboquant_3bit_nc,"
                                         "tq4,k4g4,k4v3,tq3,tq3_qjl,tq2")
    ap.add_argument("--out", default="e2e.jsonl")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--contexts", default="512,1024,2000")
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--nseq", type=int, default=64)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--mem", type=float, default=0.25)
    ap.add_argument("--kv-mib", type=int, default=None,
                    help="KV-cache memory per engine, fixed (default 256 on a CPU, 16384 on a GPU)")
    ap.add_argument("--jobs", type=int, default=1, help="engines started concurrently (configs split round-robin); "
                    "measurements still run one engine at a time")
    ap.add_argument("--deadline", type=float, default=None,
                    help="with --jobs: stop the workers after this many seconds and merge the rows written")
    ap.add_argument("--lock", default=None, help=argparse.SUPPRESS)  # set by --jobs for the workers
    ap.add_argument("--eager", action="store_true")
    ap.add_argument("--report", metavar="JSONL", help="format existing results instead of measuring (comma-separated "
                    "files of runs on the same machine are merged into one table)")
    ap.add_argument("--append", metavar="MD", help="with --report: append the table to this markdown file")
    ap.add_argument("--plot", metavar="PNG", help="with --report: write quality against bytes as a PNG")
    ap.add_argument("--exclude", default="", help="with --report: configs to leave out (say why next to the table)")
    args = ap.parse_args(argv)
    if args.report:
        env, rows, notes = merge_results(args.report.split(","))
        rows = [r for r in rows if r["config"] not in args.exclude.split(",")]
        md = report_markdown(env, rows, args.report.replace(",", "`, `"))
        if notes:
            md += "\n\nSame config in several runs (a check that the runs compare): " + "; ".join(notes) + "."
        print(md)
        if args.append:
            with open(args.append, "a") as f:
                f.write("\n" + md + "\n")
        if args.plot:
            plot_results(env, rows, args.plot)
        return 0
    if args.jobs > 1:
        return run_jobs(args, argv if argv is not None else sys.argv[1:])
    from turboquant.quality import corpus
    from turboquant.quality.retrieval import EVAL_SEED, eval_grid

    text = corpus.load_corpus("eval").ids
    tasks = eval_grid(EVAL_SEED, text, [int(c) for c in args.contexts.split(",")], [0.0, 0.25, 0.5, 0.75, 1.0],
                      args.trials)
    with open(args.out, "a") as f:
        f.write(json.dumps({**environment(), "argv": argv if argv is not None else sys.argv[1:]}) + "\n")
        for config in args.configs.split(","):
            try:
                row = measure(config, args, text, tasks)
            except Exception as e:  # recorded, never replaced by numbers
                row = {"config": config, "error": repr(e)[:2000]}
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(json.dumps({k: v for k, v in row.items() if k not in ("retrieval", "greedy_tokens")}), flush=True)
    return 0


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill a worker and its children (vLLM's engine-core process holds the GPU memory)."""
    try:
        import psutil

        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
    except Exception:  # no psutil, or the process is already gone: the worker itself still goes
        pass
    proc.kill()


def run_jobs(args, argv: list[str]) -> int:
    """--jobs N: N worker processes of this script, configs dealt round-robin, one lock file; their
    rows are merged into --out in the order of --configs under one environment line."""
    configs = args.configs.split(",")
    jobs = min(args.jobs, len(configs))
    lock = args.out + ".lock"
    procs, parts = [], []
    for k in range(jobs):
        part = f"{args.out}.part{k}"
        if os.path.exists(part):
            os.remove(part)
        parts.append(part)
        # the worker runs this file by path: it imports no sibling module, so needs no package context
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--jobs", "1", "--lock", lock, "--out", part,
               "--configs", ",".join(configs[k::jobs])]
        procs.append(subprocess.Popen(cmd))
    t_end = time.time() + args.deadline if args.deadline else None
    stopped = False
    while any(p.poll() is None for p in procs):
        if t_end is not None and time.time() > t_end:
            print(f"e2e: --deadline {args.deadline} s reached; stopping the workers, keeping their rows", flush=True)
            for p in procs:
                if p.poll() is None:
                    _kill_tree(p)
            stopped = True
            break
        time.sleep(1)
    codes = [p.wait() for p in procs]
    rc = 1 if stopped else next((c for c in codes if c != 0), 0)
    env, rows = None, {}
    for part in parts:
        if not os.path.exists(part):
            continue
        with open(part) as f:
            for line in f:
                r = json.loads(line)
                if r.get("env"):
                    env = env or r
                else:
                    rows[r["config"]] = r
    with open(args.out, "a") as f:
        f.write(json.dumps({**(env or environment()), "argv": argv, "jobs": jobs}) + "\n")
        for c in configs:
            f.write(json.dumps(rows.get(c, {"config": c, "error": "no row: the worker stopped before it"})) + "\n")
    return rc


def load_results(path: str) -> tuple[dict, list[dict]]:
    """The last run in a results file: its environment line and the config rows after it."""
    env, rows = {}, []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if r.get("env"):
                env, rows = r, []
            else:
                rows.append(r)
    if not rows:
        raise SystemExit(f"{path}: no config rows")
    return env, rows


def merge_results(paths: list[str]) -> tuple[dict, list[dict], list[str]]:
    """Several results files (runs of the same script on the same machine) as one table: the
    first file's environment; per config the first row that measured it (a failed row gives way
    to a later measurement).  Also returns notes on configs measured in more than one file."""
    env, order, best, seen = {}, [], {}, {}
    for path in paths:
        e, rows = load_results(path)
        env = env or e
        for r in rows:
            c = r["config"]
            if c not in best:
                order.append(c)
            if c not in best or ("error" in best[c] and "error" not in r):
                best[c] = r
            if "ppl" in r:
                seen.setdefault(c, []).append(r)
    notes = [f"`{c}` measured in {len(rs)} runs: PPL " + " / ".join(f"{r['ppl']:.4f}" for r in rs)
             + ", KV capacity " + " / ".join(f"{r['kv_tokens']:,}" for r in rs)
             for c, rs in seen.items() if len(rs) > 1]
    return env, [best[c] for c in order], notes


def _label(config: str) -> str:
    return f"vLLM `{config}`" if config in VLLM_TQ else f"`{config}`" + ("" if config in BASELINES else " (ours)")


def report_markdown(env: dict, rows: list[dict], path: str) -> str:
    base = next((r for r in rows if r.get("config") == "bf16" and "ppl" in r), None)
    lines = [f"### End to end through vLLM ({env.get('date', '?')}, {env.get('device', '?')})", "",
             f"vLLM {env.get('vllm', '?')}, torch {env.get('torch', '?')}"
             + (f", Triton {env['triton']}" if env.get("triton") else "") + f"; raw rows: `{path}`.", "",
             "| config | avg B/token/KV head | KV capacity (tokens) | vs bf16 | PPL | ΔPPL | needles | decode tok/s "
             "| engine start (s) |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {_label(r['config'])} | failed: {r['error'][:120]} |||||||| ")
            continue
        cap = f"{r['kv_tokens'] / base['kv_tokens']:.2f}x" if base else "-"
        dppl = f"{r['ppl'] - base['ppl']:+.4f}" if base else "-"
        needles = (f"{r['needles_solved']}/{r['needles_total']}" if "needles_total" in r
                   else f"{100 * r['retrieval_mean']:.1f}%")
        lines.append(f"| {_label(r['config'])} | {r['bytes_per_token_per_kv_head']:.0f} | {r['kv_tokens']:,} | {cap} "
                     f"| {r['ppl']:.4f} | {dppl} | {needles} | {r['decode_tokens_per_s']:,.0f} "
                     f"| {r['engine_start_s']} |")
    skipped = [r for r in rows if r.get("skipped_layers")]
    if skipped:
        lines.append("")
        lines.append("vLLM's TurboQuant leaves layers " + ", ".join(sorted({str(x) for r in skipped
                                                                            for x in r["skipped_layers"]}))
                     + " in bf16 (boundary protection); the byte column averages over all layers.")
    return "\n".join(lines)


def plot_results(env: dict, rows: list[dict], out: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "ppl" in r]
    base = next((r for r in rows if r["config"] == "bf16"), None)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    panels = [("ΔPPL vs bf16 cache (symlog)", lambda r: r["ppl"] - base["ppl"] if base else r["ppl"]),
              ("needle accuracy", lambda r: r["retrieval_mean"])]
    for ax, (title, val) in zip(axes, panels):
        pts = sorted(rows, key=lambda r: (r["bytes_per_token_per_kv_head"], val(r)))
        for r in pts:
            ours = r["config"] not in VLLM_TQ and r["config"] not in BASELINES
            ax.scatter(r["bytes_per_token_per_kv_head"], val(r), marker="o" if ours else "s",
                       color="tab:blue" if ours else ("tab:red" if r["config"] in VLLM_TQ else "gray"))
        ax.set_xscale("log", base=2)
        if title.startswith("ΔPPL"):
            ax.set_yscale("symlog", linthresh=0.01)
        ax.margins(x=0.08, y=0.12)
        ax.autoscale_view()
        # labels of points that sit close together on screen are stacked instead of drawn over each other
        placed: list[tuple[float, float]] = []
        for r in pts:
            x, y = r["bytes_per_token_per_kv_head"], val(r)
            px, py = ax.transData.transform((x, y))
            near = 0
            while any(abs(qx - px) < 70 and abs(qy - (py - 11 * near)) < 10 for qx, qy in placed):
                near += 1
            placed.append((px, py - 11 * near))
            ax.annotate(r["config"], (x, y), fontsize=7.5, xytext=(5, -3 - 11 * near), textcoords="offset points",
                        arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5"} if near else None)
        ax.set_xlabel("bytes per token per KV head (average over layers)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    where = f"vLLM {env.get('vllm', '?')} on {env.get('device', '?')} ({env.get('date', '?')})"
    fig.suptitle(f"end to end through {where}: ours (blue), vLLM TurboQuant (red), baselines (gray)", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


if __name__ == "__main__":
    raise SystemExit(main())

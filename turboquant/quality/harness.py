"""The CPU quality report (``nox -s quality``): every preset and two baselines on the trained model.

    python -m turboquant.quality.harness --model models/tiny-llama --out build/quality/results.json

Steps (all on CPU, float32 model):

1. calibration: capture Q/K/V on training-split text, pick the outlier channels
   of tq2.5 and tq3.5 per layer (:mod:`turboquant.quality.calibrate`);
2. statistics of the captured keys and values per layer and KV head;
3. attention fidelity per layer and KV head on held-out text, TurboQuant through
   the reference's packed-code attention (:mod:`turboquant.quality.metrics`);
4. perplexity on held-out windows with every codec (store-then-attend, all
   K/V compressed), ΔPPL against the bf16 cache with the paired standard error;
5. optionally (``--retrieval-contexts``), needle retrieval accuracy with every codec.

Codecs: fp32 (the model's own K/V), bf16, fp8_e4m3 (per-tensor scale), every
TurboQuant preset (uncalibrated outlier channels for tq2.5/tq3.5) and
tq2.5+cal / tq3.5+cal (calibrated).  Results go to a JSON file that
``benchmarks/plots/plot_quality.py`` plots.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time

import numpy as np

from turboquant import format as tqf
from turboquant.quality import activations, calibrate, codecs, corpus, metrics, ppl, retrieval
from turboquant.quality.tokenizer import BOS_ID

BASELINES = ("fp32", "bf16", "fp8_e4m3")
CALIBRATED = ("tq2.5", "tq3.5")


def default_codecs() -> list[str]:
    return list(BASELINES) + list(tqf.PRESETS) + [p + "+cal" for p in CALIBRATED]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/tiny-llama", help="Hugging Face model directory")
    p.add_argument("--out", default="build/quality/results.json", help="JSON results file")
    p.add_argument("--codecs", default=",".join(default_codecs()),
                   help="comma-separated: fp32, bf16, fp8_e4m3, preset names, tq2.5+cal, tq3.5+cal")
    p.add_argument("--context", type=int, default=512, help="perplexity / fidelity window length")
    p.add_argument("--windows", type=int, default=16, help="held-out perplexity windows")
    p.add_argument("--batch", type=int, default=8, help="windows per forward")
    p.add_argument("--fidelity-windows", type=int, default=1, help="held-out windows for attention fidelity")
    p.add_argument("--calib-windows", type=int, default=2, help="training-split windows for calibration")
    p.add_argument("--retrieval-contexts", default="", help="comma-separated context lengths (default: none)")
    p.add_argument("--retrieval-depths", default="0,0.25,0.5,0.75,1")
    p.add_argument("--retrieval-trials", type=int, default=4, help="tasks per (context, depth)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--stdlib", default=None, help="text root (default: the running Python's stdlib)")
    args = p.parse_args(argv)
    for name in ("context", "windows", "batch", "fidelity_windows", "calib_windows", "retrieval_trials", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    allowed = set(default_codecs())
    args.codec_list = [c for c in args.codecs.split(",") if c]
    bad = [c for c in args.codec_list if c not in allowed]
    if bad or not args.codec_list:
        raise SystemExit(f"--codecs has unsupported entries {bad}; allowed: {sorted(allowed)}")
    return args


def load_model(path: str):
    import torch
    from transformers import LlamaForCausalLM

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise SystemExit(f"--model={path!r} has no config.json")
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model


def build_codec(name: str, head_size: int, calibration: dict):
    if name.endswith("+cal"):
        preset = name[: -len("+cal")]
        return codecs.TurboQuantCodec(preset, head_size, calibration[preset], name=name)
    return codecs.make_codec(name, head_size)


def _file_sha256(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def run(args) -> dict:
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    t_start = time.time()
    model = load_model(args.model)
    cfg = model.config
    head_size = cfg.head_dim
    tr = corpus.load_corpus("train", args.stdlib)
    ev = corpus.load_corpus("eval", args.stdlib)
    n_ppl = min(args.windows, ev.ids.size // args.context)
    ppl_windows = corpus.windows(ev.ids, args.context, n_ppl, BOS_ID, spread=True)
    # fidelity: windows spread over the held-out text too, a subset of the perplexity windows
    fid_windows = ppl_windows[np.linspace(0, n_ppl - 1, min(args.fidelity_windows, n_ppl)).astype(int)]
    calib_windows = corpus.windows(tr.ids, args.context, args.calib_windows, BOS_ID, spread=True)

    log = lambda msg: print(f"[{time.time() - t_start:6.1f}s] {msg}", flush=True)  # noqa: E731
    calib_acts = activations.capture(model, calib_windows)
    calibration = {p: calibrate.calibrate(calib_acts, p) for p in CALIBRATED}
    del calib_acts
    acts = activations.capture(model, fid_windows)
    stats = [row for a in acts for row in metrics.layer_stats(a)]
    log(f"captured activations: {len(acts)} layers, calibration of {list(CALIBRATED)}")

    contexts = [int(c) for c in args.retrieval_contexts.split(",") if c]
    depths = [float(d) for d in args.retrieval_depths.split(",") if d]
    tasks = (retrieval.eval_grid(retrieval.EVAL_SEED, ev.ids, contexts, depths, args.retrieval_trials)
             if contexts else [])

    results = []
    for name in args.codec_list:
        t0 = time.time()
        codec = build_codec(name, head_size, calibration)
        fid = [row for a in acts for row in metrics.attention_fidelity(a, codec)]
        pr = ppl.perplexity(model, ppl_windows, args.batch, None if name == "fp32" else codec)
        entry = {"codec": name, "bytes_per_token_per_kv_head": codec.bytes_per_token(head_size),
                 "ppl": pr, "fidelity": fid,
                 "fidelity_mean": {k: _mean(fid, k) for k in ("out_rel_err", "kl", "topk_overlap")}}
        if tasks:
            ok = retrieval.solved(model, tasks, batch_size=args.batch, codec=None if name == "fp32" else codec)
            entry["retrieval"] = retrieval.accuracy_table(tasks, ok)
        results.append(entry)
        log(f"{name:12s} ppl {pr['ppl']:.4f}  attn out rel err {entry['fidelity_mean']['out_rel_err']:.4f}"
            f"  ({time.time() - t0:.1f}s)")
    base = next((r for r in results if r["codec"] == "bf16"), None)
    for r in results:
        if base is not None:
            r["delta_vs_bf16"] = ppl.delta(r["ppl"], base["ppl"])
    return {
        "model": os.path.abspath(args.model),
        "model_sha256": _file_sha256(os.path.join(args.model, "model.safetensors")),
        "settings": {k: v for k, v in vars(args).items() if k not in ("codec_list",)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "numpy": np.__version__},
        "model_config": {"layers": cfg.num_hidden_layers, "q_heads": cfg.num_attention_heads,
                         "kv_heads": cfg.num_key_value_heads, "head_size": head_size},
        "eval_data": {"stdlib_root": ev.root, "files": len(ev.files), "bytes": ev.n_bytes,
                      "manifest_sha256": ev.manifest_sha256, "ppl_windows": n_ppl, "context": args.context,
                      "windows": "evenly spaced over the held-out text"},
        "calibration_data": {"split": "train", "windows": args.calib_windows, "manifest_sha256": tr.manifest_sha256},
        "calibration": {p: {str(layer): {"key": list(k), "value": list(v)} for layer, (k, v) in c.items()}
                        for p, c in calibration.items()},
        "kv_stats": stats,
        "results": results,
        "wall_s": round(time.time() - t_start, 1),
    }


def format_report(rep: dict) -> str:
    lines = []
    ed = rep["eval_data"]
    lines.append(f"model {rep['model']}  ({rep['model_config']})")
    lines.append(f"held-out text: {ed['files']} stdlib files ({ed['bytes']} B) of {ed['stdlib_root']}; "
                 f"{ed['ppl_windows']} windows x {ed['context']} tokens")
    ret_ctx = sorted({c for r in rep["results"] if "retrieval" in r for c in r["retrieval"]["by_context"]}, key=int)
    head = f"{'codec':12s} {'B/tok/head':>10s} {'PPL':>8s} {'dPPL vs bf16':>15s} {'attn rel err':>12s} " \
           f"{'KL':>8s} {'top8':>6s}" + "".join(f" {'needle@' + c:>11s}" for c in ret_ctx)
    lines += ["", head, "-" * len(head)]
    for r in rep["results"]:
        d = r.get("delta_vs_bf16")
        dtxt = f"{d['delta_ppl']:+.4f}±{d['delta_nll_se'] * r['ppl']['ppl']:.4f}" if d else "-"
        fm = r["fidelity_mean"]
        row = f"{r['codec']:12s} {r['bytes_per_token_per_kv_head']:10.0f} {r['ppl']['ppl']:8.4f} {dtxt:>15s} " \
              f"{fm['out_rel_err']:12.4f} {fm['kl']:8.5f} {fm['topk_overlap']:6.3f}"
        for c in ret_ctx:
            acc = r.get("retrieval", {}).get("by_context", {}).get(c)
            row += f" {acc:11.3f}" if acc is not None else f" {'-':>11s}"
        lines.append(row)
    lines.append("(dPPL ± paired standard error over windows; attn rel err / KL / top8: mean over layers and KV heads"
                 + ("; needle@L: share of needle tasks of context L solved)" if ret_ctx else ")"))
    layers = sorted({f["layer"] for f in rep["results"][0]["fidelity"]})
    lines += ["", "attention output relative error per layer (mean over KV heads)",
              f"{'codec':12s} " + " ".join(f"{'L' + str(i):>7s}" for i in layers)]
    for r in rep["results"]:
        per = [np.mean([f["out_rel_err"] for f in r["fidelity"] if f["layer"] == i]) for i in layers]
        lines.append(f"{r['codec']:12s} " + " ".join(f"{x:7.4f}" for x in per))
    lines += ["", "key / value statistics (held-out tokens)",
              f"{'layer':>5s} {'head':>4s} | {'K kurt max':>10s} {'K rms max/med':>13s} {'K norm cv':>9s} | "
              f"{'V kurt max':>10s} {'V rms max/med':>13s} {'V norm cv':>9s}"]
    for s in rep["kv_stats"]:
        k, v = s["key"], s["value"]
        lines.append(f"{s['layer']:5d} {s['kv_head']:4d} | {k['kurtosis_max']:10.2f} {k['rms_max_over_median']:13.2f} "
                     f"{k['norm_cv']:9.3f} | {v['kurtosis_max']:10.2f} {v['rms_max_over_median']:13.2f} "
                     f"{v['norm_cv']:9.3f}")
    lines.append(f"\nwall time {rep['wall_s']} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    rep = run(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rep, f, indent=1)
    print(format_report(rep))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

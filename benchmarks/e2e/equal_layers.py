"""Our presets with vLLM's layer split: the equal-layers comparison the vLLM run cannot make.

vLLM's TurboQuant presets keep some layers in bf16 (on the 6-layer tiny model: 0, 1, 4, 5), so
against them our presets compress three times as many layers. This script measures our presets
with the same layers kept in bf16, on the same held-out windows and scored positions as
``benchmarks/e2e/e2e_vllm.py``, through the NumPy reference on the CPU (turboquant.quality: exact
attention over the dequantized K/V, store-then-attend, as our backend). It also measures our
presets on every layer, which checks this pipeline against the vLLM run (those rows should agree
with the vLLM ΔPPL of the same presets), and prints vLLM's rows from the given e2e results.

    python -m benchmarks.e2e.equal_layers \\
        --vllm-rows results/2026-12-03-h200-e2e-tiny-llama/e2e-h200-2026-12-03-tiny-llama-baselines.jsonl \\
        [--presets tq3,k4v3,tq4] [--windows 16 --window 1024 --first-target 128] [--out equal_layers.json]

The layers kept in bf16 are the ``skipped_layers`` of the vLLM rows (or --bf16-layers).

Boundary rows (SPEC 7.1, the serving option ``boundary_layers`` / ``boundary_preset``): with
``--boundary 1,2`` each n adds, for every format of ``--boundary-presets`` (a preset or bf16, the
"native" cache of a bf16 model), a row with the first n and last n layers in that format and the rest
in ``--main``; ``--vllm-rows`` is then optional:

    python -m benchmarks.e2e.equal_layers --presets tq3,k4v3,tq4 --boundary 1,2 --windows 24 --out boundary.json

``--needle-context 2048`` adds needle retrieval (turboquant.quality.retrieval, held-out filler, 5 depths x
``--needle-trials``) for every config; ``--only`` keeps the named configs; ``--windows 0`` skips perplexity.
"""

from __future__ import annotations

import argparse
import json
import time


def vllm_rows(path: str) -> tuple[dict, list[dict]]:
    from .e2e_vllm import load_results

    return load_results(path)


def boundary_configs(ns: list, boundary_presets: list[str], main: str, cfg) -> list[tuple[str, object]]:
    """(name, codec) of the boundary rows: for each n (or explicit layer list) and boundary format, the first n
    and last n layers (turboquant.format.boundary_layer_indices, as the serving option) in that format, the
    rest in ``main``."""
    from turboquant import format as tqf
    from turboquant.quality import codecs

    rows = []
    for n in ns:
        layers = tqf.boundary_layer_indices(cfg.num_hidden_layers, n)
        for b in boundary_presets:
            outer = codecs.make_codec(b, cfg.head_dim)
            rows.append((f"{main} + {b} layers {','.join(map(str, layers))}",
                         codecs.LayerSplitCodec(codecs.make_codec(main, cfg.head_dim), layers, cfg.num_hidden_layers,
                                                outer=outer)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/tiny-llama")
    ap.add_argument("--vllm-rows", default=None,
                    help="an e2e_vllm.py results file with bf16 and vLLM TurboQuant rows (required without --boundary)")
    ap.add_argument("--presets", default="tq3,k4v3,tq4")
    ap.add_argument("--bf16-layers", default=None, help="default: the vLLM rows' skipped_layers")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--first-target", type=int, default=128, help="score targets at positions >= this (e2e: CHUNK)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--boundary", default="", help="comma-separated n: boundary rows, first n and last n layers")
    ap.add_argument("--boundary-lists", default="",
                    help="'|'-separated explicit boundary layer lists, e.g. '1|1,4' (the option's list form)")
    ap.add_argument("--boundary-presets", default="k4v3,tq4,bf16", help="formats of the boundary layers")
    ap.add_argument("--main", default="tq3", help="preset of the other layers in the boundary rows")
    ap.add_argument("--only", default="", help="'|'-separated config names to keep (default: all)")
    ap.add_argument("--needle-context", type=int, default=0, help="needle retrieval at this context (0: none)")
    ap.add_argument("--needle-trials", type=int, default=4, help="needle tasks per depth")
    ap.add_argument("--out", default=None, help="write the rows as JSON")
    args = ap.parse_args(argv)
    if args.windows == 0 and not args.needle_context:
        ap.error("--windows 0 needs --needle-context")
    boundary_ns = [int(x) for x in args.boundary.split(",") if x]
    boundary_ns += [[int(y) for y in x.split(",")] for x in args.boundary_lists.split("|") if x.strip()]
    if args.vllm_rows is None and not boundary_ns:
        ap.error("--vllm-rows is required unless --boundary is given")

    import platform

    import torch

    from turboquant.quality import codecs, corpus, ppl
    from turboquant.quality.harness import load_model
    from turboquant.quality.needles import BOS_ID
    from turboquant.vllm_integration.engine_configs import VLLM_TQ

    env, vrows = vllm_rows(args.vllm_rows) if args.vllm_rows else ({}, [])
    vbase = next((r for r in vrows if r["config"] == "bf16" and "ppl" in r), None)
    if vbase is None and args.vllm_rows:
        raise SystemExit(f"--vllm-rows={args.vllm_rows!r} has no bf16 row")
    vtq = [r for r in vrows if r["config"] in VLLM_TQ and "ppl" in r]
    if args.bf16_layers is not None:
        keep = [int(x) for x in args.bf16_layers.split(",") if x]
    elif not args.vllm_rows:
        keep = []
    else:
        splits = {tuple(sorted(int(x) for x in r["skipped_layers"])) for r in vtq}
        if len(splits) != 1:
            raise SystemExit(f"the vLLM rows keep different layers in bf16 ({splits}); pass --bf16-layers")
        keep = list(splits.pop())

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    cfg = model.config
    ev = corpus.load_corpus("eval")
    wins = corpus.windows(ev.ids, args.window, args.windows, BOS_ID, spread=True) if args.windows else []
    configs = [("bf16", codecs.Bf16Codec())]
    for p in [p for p in args.presets.split(",") if p]:
        inner = codecs.make_codec(p, cfg.head_dim)
        configs.append((p, inner))
        if keep:
            configs.append((f"{p} + bf16 layers {','.join(map(str, keep))}",
                            codecs.LayerSplitCodec(inner, keep, cfg.num_hidden_layers)))
    configs += boundary_configs(boundary_ns, [b for b in args.boundary_presets.split(",") if b], args.main, cfg)
    if args.only:
        only = [x.strip() for x in args.only.split("|") if x.strip()]
        missing = sorted(set(only) - {n for n, _ in configs})
        if missing:
            ap.error(f"--only names unknown configs {missing}; allowed: {[n for n, _ in configs]}")
        configs = [(n, c) for n, c in configs if n in only]
    tasks = []
    if args.needle_context:
        from turboquant.quality import retrieval

        tasks = retrieval.eval_grid(retrieval.EVAL_SEED, ev.ids, [args.needle_context], [0, 0.25, 0.5, 0.75, 1],
                                    args.needle_trials)
    # the same held-out text and scored tokens as the vLLM rows, or the comparison says it is not
    same, notes = [], []
    theirs, here_py = env.get("eval_corpus_sha256"), platform.python_version()
    if theirs is None and env.get("python") == here_py:
        notes.append(f"the vLLM rows predate corpus hashes; same Python {here_py}, so the same stdlib text assumed")
    elif theirs != ev.manifest_sha256:
        same.append(f"held-out text differs (vLLM rows: Python {env.get('python', '?')}, corpus "
                    f"{str(theirs)[:12]}; here: Python {here_py}, corpus {ev.manifest_sha256[:12]})")
    n_tokens = len(wins) * (args.window - args.first_target)
    if vbase is not None and vbase.get("ppl_tokens") != n_tokens:
        same.append(f"scored tokens differ ({vbase.get('ppl_tokens')} in the vLLM rows, {n_tokens} here)")
    rows, base = [], None
    t0 = time.time()
    for name, codec in configs:
        row = {"config": name, "bytes_per_token_per_kv_head": codec.bytes_per_token(cfg.head_dim)}
        if args.windows:
            r = ppl.perplexity(model, wins, args.batch, codec, first_target=args.first_target)
            base = base or r
            row.update(ppl=r["ppl"], delta_ppl=r["ppl"] - base["ppl"], delta_nll_se=ppl.delta(r, base)["delta_nll_se"],
                       window_nll=r["window_nll"])
        if tasks:
            from turboquant.quality import retrieval

            ok = retrieval.solved(model, tasks, batch_size=args.batch, codec=codec)
            row.update(needles_solved=int(ok.sum()), needles_tasks=len(tasks), needle_context=args.needle_context)
        rows.append(row)
        print(f"[{time.time() - t0:6.1f}s] {name}: " + (f"PPL {row['ppl']:.4f} " if "ppl" in row else "")
              + (f"needles {row['needles_solved']}/{row['needles_tasks']}" if tasks else ""), flush=True)

    import transformers

    lines = [f"Equal layers: {len(wins)} held-out windows of {args.window} tokens, targets at positions >= "
             f"{args.first_target}; NumPy reference on the CPU ({platform.processor() or platform.machine()}), torch "
             f"{torch.__version__}, transformers {transformers.__version__}, float32 model, K/V through each codec. " +
             (f"vLLM rows: `{args.vllm_rows}` ({env.get('device', '?')}, vLLM {env.get('vllm', '?')})."
              if args.vllm_rows else "No vLLM rows."), "",
             "| config | avg B/token/KV head | PPL | ΔPPL vs bf16 (± s.e.) | measured by |", "|---|--:|--:|--:|---|"]
    for r in rows:
        ppl_cells = (f"{r['ppl']:.4f} | {r['delta_ppl']:+.4f} (± {r['ppl'] * r['delta_nll_se']:.4f})" if "ppl" in r
                     else "- | -")
        needles = f" needles {r['needles_solved']}/{r['needles_tasks']} at {r['needle_context']} tokens;" \
            if "needles_solved" in r else ""
        lines.append(f"| `{r['config']}` | {r['bytes_per_token_per_kv_head']:.0f} | {ppl_cells} "
                     f"|{needles} reference, CPU |")
    for r in ([vbase] + vtq) if vbase is not None else []:
        label = "bf16" if r is vbase else r["config"]
        lines.append(f"| vLLM `{label}` (layers {','.join(map(str, r.get('skipped_layers', []))) or 'none'} in bf16) | "
                     f"{r['bytes_per_token_per_kv_head']:.0f} | {r['ppl']:.4f} | {r['ppl'] - vbase['ppl']:+.4f} | "
                     f"vLLM, {env.get('device', '?')} |")
    if vbase is None:
        lines += ["", f"Held-out corpus {ev.manifest_sha256[:12]}, {n_tokens} scored tokens; boundary rows: first n "
                  "and last n layers in the named format (SPEC 7.1), the others in the main preset."]
    elif same:
        lines += ["", "**Not comparable with the vLLM rows above:** " + "; ".join(same)
                  + ". Only ΔPPL within each source compares."]
    else:
        lines += ["", "Same held-out text and scored tokens as the vLLM rows (corpus "
                  f"{ev.manifest_sha256[:12]}, {n_tokens} tokens)" + "".join(f"; {n}" for n in notes) + "."]
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"settings": vars(args), "bf16_layers": keep, "rows": rows, "comparable": not same,
                       "caveats": same, "eval_corpus_sha256": ev.manifest_sha256, "python": platform.python_version(),
                       "vllm_env": env, "vllm_rows": ([vbase] + vtq) if vbase is not None else []}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

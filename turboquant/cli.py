"""The ``turboquant`` command: codebooks, presets, distortion, and the demo report."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from turboquant import format as tqf


def positive_int(name):
    """argparse type: an integer > 0, its errors naming --NAME."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name} must be an integer, got {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"--{name} must be > 0, got {v}")
        return v

    return parse


# ------------------------------------------------------------------ codebook
def cmd_codebook(args) -> int:
    from turboquant.reference import codebook as cbk

    tqf.check_choice("--bits", args.bits, tqf.SUPPORTED_BITS)
    if args.dim < 3:
        raise ValueError(f"--dim must be >= 3, got {args.dim}")
    cb = cbk.lloyd_max(args.dim, args.bits)
    data = {"dim": args.dim, "bits": args.bits, "centroids": [float(c) for c in cb.centroids],
            "boundaries": [float(b) for b in cb.boundaries], "mse_total": cb.mse_total}
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        print(f"Lloyd-Max codebook for one coordinate of a unit vector in R^{args.dim}, {args.bits} bits")
        print(f"centroids:  {np.array2string(cb.centroids, precision=6, max_line_width=100)}")
        print(f"boundaries: {np.array2string(cb.boundaries, precision=6, max_line_width=100)}")
        print(f"D_mse (d * E[(x - Q(x))^2]) = {cb.mse_total:.6f}")
    return 0


# ------------------------------------------------------------------ presets
def cmd_presets(args) -> int:
    from turboquant.report import text_table

    rows = tqf.preset_table(args.dim)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"Presets at head_size={args.dim} (bf16: {tqf.bf16_slot_bytes(args.dim)} B per token per KV head)")
    print(text_table(rows, ["preset", "bytes_per_token_per_kv_head", "compression_vs_bf16", "key_bits_per_coord",
                        "value_bits_per_coord", "description", "error"]))
    return 0


# ------------------------------------------------------------------ distortion
def cmd_distortion(args) -> int:
    from turboquant.report import distortion

    r = distortion(args.dim, args.bits, args.mode, args.n, args.seed)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"{r['metric']} at d={r['dim']}, b={r['bits']}, {r['n']} random unit vectors (seed {r['seed']})")
        print(f"  empirical   {r['empirical']:.6g}")
        print(f"  paper lower {r['lower_bound']:.6g}")
        print(f"  paper upper {r['upper_bound']:.6g}   within bounds: {r['within_bounds']}")
        if "mean_error" in r:
            print(f"  mean error  {r['mean_error']:.3g} +- {r['mean_error_stderr']:.2g} (unbiased: ~0)")
    return 0


# ------------------------------------------------------------------ report / demo
def cmd_report(args) -> int:
    from turboquant.report import run_report

    return run_report(seed=args.seed, quick=args.quick)


def cmd_calibrate(args) -> int:
    from turboquant.quality import calibrate

    channels = calibrate.calibrate_model(args.model, args.preset, windows=args.windows, context=args.context)
    calibrate.save(channels, args.out, args.preset)
    print(f"{args.out}: outlier channels of {len(channels)} layers for preset {args.preset} "
          f"(use with additional_config={{'turboquant': {{'preset': '{args.preset}', "
          f"'outlier_channels': '{args.out}'}}}})")
    return 0


def cmd_demo(args) -> int:
    from turboquant.vllm_integration.demo import DemoSettings, builtin_model, run_demo

    configs = tuple(c.strip() for c in args.configs.split(",") if c.strip())
    s = DemoSettings(model=args.model or builtin_model(), configs=configs, prompts=args.prompts,
                     prompt_chars=args.prompt_chars, max_tokens=args.max_tokens, max_model_len=args.max_model_len,
                     dtype=args.dtype, kv_mib=args.kv_mib, gpu_memory_utilization=args.gpu_memory_utilization,
                     seed=args.seed)
    try:
        run_demo(s, out_json=args.json_out)
    except RuntimeError as e:
        print(f"turboquant demo: error: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="turboquant", description="TurboQuant KV-cache compression tools")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("codebook", help="Lloyd-Max codebook for unit vectors in R^D")
    p.add_argument("--dim", type=positive_int("dim"), required=True)
    p.add_argument("--bits", type=int, required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_codebook)
    p = sub.add_parser("presets", help="named presets with bytes per token per KV head")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_presets)
    p = sub.add_parser("distortion", help="empirical distortion against the paper's bounds")
    p.add_argument("--dim", type=positive_int("dim"), required=True)
    p.add_argument("--bits", type=int, required=True)
    p.add_argument("--mode", default="mse")
    p.add_argument("--n", type=positive_int("n"), default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_distortion)
    p = sub.add_parser("calibrate", help="outlier channels of a local model for the 2.5 / 3.5-bit presets "
                                         "(needs torch + transformers)")
    p.add_argument("--model", required=True, help="local Hugging Face causal-LM directory")
    p.add_argument("--preset", default="tq3.5", help="a preset with an outlier split (tq3.5, tq2.5)")
    p.add_argument("--windows", type=positive_int("windows"), default=4)
    p.add_argument("--context", type=positive_int("context"), default=512)
    p.add_argument("--out", required=True, help="JSON file for the plugin's outlier_channels option")
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("report", help="the NumPy reference on a synthetic workload: presets, distortions, "
                                      "attention fidelity (no torch or vLLM needed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smaller workload")
    p.set_defaults(func=cmd_report)
    from turboquant.vllm_integration.demo import DEFAULT_CONFIGS, DemoSettings

    d = DemoSettings.__dataclass_fields__
    p = sub.add_parser("demo", help="the main job: serve a model through vLLM with bf16 and TurboQuant KV caches; "
                                    "KV capacity, greedy agreement, throughput")
    p.add_argument("--model", default=None, help="local Hugging Face model directory (default: models/tiny-llama)")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help="comma-separated: bf16, fp8 and TurboQuant presets (see `turboquant presets`)")
    p.add_argument("--prompts", type=int, default=d["prompts"].default)
    p.add_argument("--prompt-chars", type=int, default=d["prompt_chars"].default)
    p.add_argument("--max-tokens", type=int, default=d["max_tokens"].default)
    p.add_argument("--max-model-len", type=int, default=d["max_model_len"].default)
    p.add_argument("--dtype", default=d["dtype"].default)
    p.add_argument("--kv-mib", type=int, default=d["kv_mib"].default, help="CPU: KV-cache memory per engine")
    p.add_argument("--gpu-memory-utilization", type=float, default=d["gpu_memory_utilization"].default)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default=None, help="also write the results as JSON")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"turboquant {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

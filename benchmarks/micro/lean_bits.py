"""Where the mma decode kernel's lean tile loop gives other bits than its default loop (a GPU diagnostic).

For each page size, split count and seed: a conformance case (conformance.cases: bf16 keys with outlier
channels, values, a random permuted block table) stored by the reference, one query row per sequence, decoded
with ``--option`` (bench_decode's ``mma@`` spec, default ``mma@l1``: the lean loop with the other defaults) and
with the same spec's default loop (``l0``); prints, per case, the sequences whose outputs differ, the largest
difference, and each side's relative error to the reference.  A rounding difference stays at a bf16 ulp with
both errors equal; a wrong tile shows as an error that grows past the other side's.

    python -m benchmarks.micro.lean_bits --preset k4v3 --page-sizes 16,32,64 --splits 1-9 --seeds 0,1,2

(test_decode_mma's LEAN_K4V3_PAIRS once differed by one ulp in one output: k4v3, pages of 32 tokens, 7 splits,
the 4,100-token sequence of 1, 17, 300, 2,049, 4,100.)
"""

from __future__ import annotations

import argparse
import sys

SEQ_LENS = (1, 17, 300, 2049, 4100)


def parse_ints(text: str, name: str, least: int = 1) -> list[int]:
    """'1-4,7' -> [1, 2, 3, 4, 7]: comma-separated integers and inclusive ranges, each at least ``least``."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected comma-separated integers or ranges like 1-9") from None
    if not out or min(out) < least:
        raise ValueError(f"{name}={text!r}: expected integers >= {least}")
    return out


def lean_and_default(spec: str) -> tuple[str, str]:
    """The bench spec with the lean loop (as given, ``l1`` added if it names none) and with the default loop."""
    if not spec.startswith("mma@"):
        spec = "mma@" + spec
    lean = spec if spec.endswith(("l0", "l1")) else spec + "l1"
    return lean, lean[:-2] + "l0"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="k4v3")
    ap.add_argument("--option", default="mma@l1", help="bench_decode's mma@ spec of the lean side (default mma@l1)")
    ap.add_argument("--page-sizes", default="16,32,64")
    ap.add_argument("--splits", default="1-9")
    ap.add_argument("--seeds", default="0")
    args = ap.parse_args(argv)
    page_sizes = parse_ints(args.page_sizes, "--page-sizes")
    splits = parse_ints(args.splits, "--splits")
    seeds = parse_ints(args.seeds, "--seeds", least=0)
    lean_spec, default_spec = lean_and_default(args.option)

    import torch

    from turboquant import reference as ref
    from turboquant.conformance.cases import Case, make_inputs
    from turboquant.conformance.compare import rel_err
    from turboquant.triton_impl import AttnConfig, KernelParams, decode_attention

    from .bench_decode import kernel_config

    if not torch.cuda.is_available():
        print("lean_bits: needs a CUDA GPU (the mma decode kernel is Gluon)", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    lean_cfg = kernel_config(lean_spec, AttnConfig())
    base_cfg = kernel_config(default_spec, AttnConfig())
    print(f"{args.preset}: {lean_spec} against {default_spec}; sequences {SEQ_LENS}, 2 KV heads x 4 query heads")
    print(f"{'page':>5} {'seed':>5} {'splits':>6}  {'differ':<14} {'max |diff|':>10} {'err lean':>9} "
          f"{'err default':>11}")
    for bs in page_sizes:
        for seed in seeds:
            case = Case(args.preset, 128, 2, 4, bs, SEQ_LENS, (1,) * len(SEQ_LENS), seed=seed)
            x = make_inputs(case)
            cache = ref.new_cache(case.fmt, x["num_blocks"], bs, 2)
            ref.store(cache, x["key"], x["value"], x["slot_mapping"], case.fmt)
            want = ref.paged_attention(x["query"], cache, x["block_table"], x["seq_lens"], case.fmt,
                                       x["query_start_loc"])
            t = (torch.from_numpy(x["query"]).to(torch.bfloat16).to(dev), torch.from_numpy(cache).to(dev),
                 torch.from_numpy(x["block_table"]).to(dev), torch.from_numpy(x["seq_lens"]).to(dev),
                 KernelParams.build(case.fmt, dev))
            for s in splits:
                got = decode_attention(*t, num_splits=s, config=lean_cfg).float()
                base = decode_attention(*t, num_splits=s, config=base_cfg).float()
                diff = (got - base).abs().flatten(1).amax(1)
                rows = sorted(set(torch.nonzero(diff > 0).flatten().tolist()))
                print(f"{bs:>5} {seed:>5} {s:>6}  {str(rows) if rows else '-':<14} {diff.max().item():>10.3g} "
                      f"{rel_err(got.cpu().numpy(), want):>9.3g} {rel_err(base.cpu().numpy(), want):>11.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

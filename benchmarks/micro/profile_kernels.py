"""Run one kernel configuration a few times so that a profiler can pick one launch of it.

A target for ``ncu`` (``tools/gpu_profile.sh`` wraps it): the decode step or the store at the
benchmark's Llama-3-8B geometry (32 query heads, 8 KV heads, d 128, block 16), on the same data
as ``bench_decode`` (every slot a real encoded token, random permuted block tables).  Each target
runs ``--launches`` times after one warm-up (compilation) call, with a CUDA synchronize between
calls, so ``ncu --launch-skip`` can pass the warm-up and profile a launch whose inputs are not in
L2 from the previous one only if the cache is larger than L2 (it is, at the default shapes).

    python -m benchmarks.micro.profile_kernels decode:tq3:32x32768 store:tq3:32768 [--launches 3]

Targets: ``decode:PRESET:BATCHxCONTEXT`` (``decode_attention``: query rotation, the mma or split
kernel, the merge) and ``store:PRESET:TOKENS`` (``store_kv`` of that many tokens x 8 KV heads at
random slots).  Prints one line per target with the kernel names it launched (for ``ncu -k``).

``--trace`` runs the calls under ``torch.profiler`` instead (no ``ncu``) and prints, per target, each
kernel's mean device time, so the fixed costs around the main kernel (query rotation, merge, inverse
rotation) are visible, and the span of one call (first launch's start to last launch's end).  The
calls are eager: the span includes the host's launch gaps, which a CUDA-graph replay does not have.
"""

from __future__ import annotations

import argparse
import sys

TARGETS = ("decode", "store")


def parse_target(text: str) -> tuple[str, str, tuple[int, ...]]:
    """'decode:tq3:32x32768' -> ('decode', 'tq3', (32, 32768)); 'store:tq3:32768' -> ('store', 'tq3', (32768,))."""
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in TARGETS:
        raise ValueError(f"target {text!r}: expected decode:PRESET:BATCHxCONTEXT or store:PRESET:TOKENS")
    kind, preset, shape = parts
    try:
        dims = tuple(int(x) for x in shape.split("x"))
    except ValueError:
        raise ValueError(f"target {text!r}: the shape must be integers (BATCHxCONTEXT or TOKENS)") from None
    if len(dims) != (2 if kind == "decode" else 1) or min(dims) < 1:
        raise ValueError(f"target {text!r}: {kind} takes "
                         f"{'BATCHxCONTEXT' if kind == 'decode' else 'TOKENS'}, each >= 1")
    if kind == "decode" and dims[1] % 16:
        raise ValueError(f"target {text!r}: the context must be a multiple of the block size 16")
    from turboquant import format as tqf

    tqf.get_preset(preset)  # raises with the list of presets
    return kind, preset, dims


def summarize(launches: list[list[tuple[str, float, float]]]) -> tuple[list[tuple[str, int, float]], float]:
    """Per-call kernel records [(name, start_us, duration_us), ...] -> ([(name, launches a call, mean
    device us a call)], mean span of a call in us).  Kernels keep their order of first appearance."""
    if not launches or any(not call for call in launches):
        raise ValueError("summarize needs at least one call, each with at least one kernel")
    names: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    spans = []
    for call in launches:
        per: dict[str, float] = {}
        for name, _, dur in call:
            per[name] = per.get(name, 0.0) + dur
            counts[name] = counts.get(name, 0) + 1
        for name in per:
            names.setdefault(name, []).append(per[name])
        spans.append(max(s + d for _, s, d in call) - min(s for _, s, _ in call))
    n = len(launches)
    rows = [(name, round(counts[name] / n), sum(v) / n) for name, v in names.items()]
    return rows, sum(spans) / n


def trace(call, launches: int) -> list[list[tuple[str, float, float]]]:
    """Each call's CUDA kernels as (name, start_us, duration_us), from torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    per_call = []
    for _ in range(launches):
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize()
        kernels = [(e.name, float(e.time_range.start), float(e.time_range.end - e.time_range.start))
                   for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        per_call.append(kernels)
    return per_call


def run(kind: str, preset: str, dims: tuple[int, ...], launches: int, traced: bool = False) -> None:
    import torch

    from turboquant import format as tqf
    from turboquant.triton_impl import KernelParams, decode_attention, store_kv

    from .bench_decode import BS, HKV, HQ, D, block_tables, filled_cache, random_kv

    gen = torch.Generator(device="cuda").manual_seed(0)
    fmt = tqf.LayerFormat(tqf.get_preset(preset), D)
    params = KernelParams.build(fmt, "cuda")
    if kind == "decode":
        b, ctx = dims
        nb = b * ctx // BS
        cache = filled_cache(fmt, params, nb, gen)
        bt = block_tables(nb, b, ctx, 1, gen)[0]
        sl = torch.full((b,), ctx, dtype=torch.int32, device="cuda")
        q = torch.randn((b, HQ, D), generator=gen, device="cuda").to(torch.bfloat16)
        out = torch.empty_like(q)

        def call():
            decode_attention(q, cache, bt, sl, params, out=out)
    else:
        (n,) = dims
        nb = 4 * n // BS + 1
        cache = torch.zeros(fmt.cache_shape(nb, BS, HKV), dtype=torch.uint8, device="cuda")
        k, v = random_kv(n, gen)
        slots = torch.randperm(nb * BS, generator=gen, device="cuda")[:n]

        def call():
            store_kv(k, v, cache, slots, params)
    call()  # compile
    torch.cuda.synchronize()
    name = f"{kind}:{preset}:{'x'.join(map(str, dims))}"
    if traced:
        rows, span = summarize(trace(call, launches))
        print(f"profile_kernels: {name}, {launches} traced calls: eager span of a call {span:.1f} us, "
              f"kernel time {sum(r[2] for r in rows):.1f} us", flush=True)
        for kname, count, us in rows:
            print(f"  {us:9.1f} us  x{count}  {kname[:110]}", flush=True)
        return
    for _ in range(launches):
        call()
        torch.cuda.synchronize()
    print(f"profile_kernels: {name} ran {launches} + 1 times", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="+", help="decode:PRESET:BATCHxCONTEXT or store:PRESET:TOKENS")
    ap.add_argument("--launches", type=int, default=3, help="timed-free calls after the warm-up (>= 1)")
    ap.add_argument("--trace", action="store_true",
                    help="time each launch with torch.profiler and print a table (no ncu needed)")
    args = ap.parse_args(argv)
    if args.launches < 1:
        ap.error(f"--launches must be >= 1, got {args.launches}")
    try:
        targets = [parse_target(t) for t in args.targets]
    except (ValueError, KeyError) as e:
        ap.error(str(e))
    import torch

    if not torch.cuda.is_available():
        sys.exit("profile_kernels needs a CUDA GPU (it is a profiler target)")
    for t in targets:
        run(*t, args.launches, args.trace)


if __name__ == "__main__":
    main()

"""Prefill / extend attention and the store on one GPU, both sides in one process.

One sequence, Llama-3-8B geometry (32 query heads, 8 KV heads, head size 128, bf16), block size
16, a random permuted block table.  For each (cached tokens, query rows) -- a whole prompt when they
are equal, else a chunk over a history -- the median time of:

* ``sdpa-bf16``: torch SDPA, causal (bottom-right aligned), on dense bf16 K/V of the same tokens;
* ``flash-bf16``: vLLM's FlashAttention varlen on the same dense K/V (when vLLM is importable);
* ``<preset>``: ``triton_impl.attention`` over the packed cache with a precomputed plan (the
  plugin's prefill path: tiles decoded once into a dense workspace, then the dense kernel above);
* ``<preset>-tiles``: the packed-tile kernel (``AttnConfig(dense_prefill=False)``), the old path;
* ``store-<rotation>-bt<tokens>-w<warps>``: ``store_kv`` of the query rows' K/V, with its copy
  bandwidth fraction on bytes read (bf16 K, V) + written (slots).

Timing (``--timing``): ``graph`` (default) captures GRAPH_CALLS calls of each timed function in a
CUDA graph and times its replays with events, so host-side launch overhead (Python argument checks,
Triton's launcher) stays out and the rows are GPU time, for SDPA and ours alike; a function that
cannot be captured is timed eagerly and its row says ``"timing": "events"``.  ``events`` times eager
calls between two events (GPU time plus whatever host time the call leaves the GPU idle: at 2k
tokens this dominates the store).  Inputs are not rotated among copies: the store's K/V are the
ones the projection just wrote in serving too, so an L2-resident input is the realistic case.

Rows are JSON lines in the decode benchmark's schema (``kind``, ``preset``, ``batch``,
``context``, ``seconds``, ``copy_fraction``) plus ``query_tokens`` and ``impl``; ``--report``
turns them into a markdown table and ``--plot`` into a PNG.

    python -m benchmarks.micro.bench_prefill --out prefill.jsonl
    python -m benchmarks.micro.bench_prefill --report prefill.jsonl --plot prefill.png > prefill.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import numpy as np

from turboquant.cli import positive_int

SHAPES = ((8192, 8192), (32768, 32768), (32768, 2048), (131072, 2048), (32768, 512))
PRESETS = ("tq3", "k4v3", "tq4")
HQ, HKV, D, BS = 32, 8, 128, 16


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """"8192x8192,32768x2048" -> [(8192, 8192), (32768, 2048)] (cached tokens x query rows)."""
    out = []
    for part in text.split(","):
        try:
            ctx, nq = (int(x) for x in part.lower().split("x"))
        except ValueError:
            raise ValueError(f"shapes: {part!r} is not CONTEXTxQUERY_ROWS (e.g. 32768x2048)") from None
        if not 0 < nq <= ctx:
            raise ValueError(f"shapes: {part!r} needs 0 < query rows <= cached tokens")
        out.append((ctx, nq))
    return out


def _events_median(fn, reps: int, warmup: int = 2) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return float(np.median(ts))


GRAPH_CALLS = 5  # calls of the timed function per captured graph


def _graph_median(fn, reps: int, warmup: int = 2) -> float:
    """Median GPU time of one call of fn, from replays of a CUDA graph holding GRAPH_CALLS calls."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compilation, autotuning, allocations) off the capture
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(GRAPH_CALLS):
            fn()
    t = _events_median(g.replay, reps, warmup=1) / GRAPH_CALLS
    del g
    return t


def _timer(mode: str):
    """time(fn, reps) -> (seconds, timing) with timing 'graph' or 'events' (capture failed / asked)."""

    def time_it(fn, reps: int) -> tuple[float, str]:
        if mode == "graph":
            try:
                return _graph_median(fn, reps), "graph"
            except Exception as e:  # not capturable: eager timing, said in the row
                print(f"# graph capture failed ({type(e).__name__}: {str(e)[:120]}): timing eagerly", flush=True)
                import torch
                torch.cuda.synchronize()
        return _events_median(fn, reps), "events"

    return time_it


def _reps(seconds_guess: float) -> int:
    return int(min(20, max(3, 0.5 / max(seconds_guess, 1e-6))))


def run(args) -> None:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention.bias import causal_lower_right

    from turboquant import format as tqf
    from turboquant.triton_impl import AttnConfig, KernelParams, attention, plan_attention, store_kv
    from turboquant.triton_impl.prefill import _flash_varlen

    from . import bench_decode  # copy bandwidth, random data, filled caches
    gen = torch.Generator(device="cuda").manual_seed(0)
    time_it = _timer(args.timing)
    out = open(args.out, "a") if args.out else None

    def emit(row):
        line = json.dumps(row)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    import triton

    emit({"env": True, "date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(0),
          "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
          "flash": _flash_varlen() is not None, "timing": args.timing})
    copy_bw = bench_decode.copy_bandwidth()
    emit({"copy_bandwidth_gbps": copy_bw / 1e9})
    fa = _flash_varlen()
    stored = set()  # (preset, query rows) whose store is timed
    for ctx, nq in args.shapes:
        base = {"kind": "prefill", "batch": 1, "context": ctx, "query_tokens": nq}
        k, v = bench_decode.random_kv(ctx, gen)  # [ctx, HKV, D] bf16
        q = torch.randn((nq, HQ, D), generator=gen, device="cuda").to(torch.bfloat16)
        qs, ks, vs = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
        mask = None if nq == ctx else causal_lower_right(nq, ctx)

        def sdpa():
            if mask is None:
                return F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
            return F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)

        t_sdpa, how = time_it(sdpa, _reps(ctx * nq / 2e11))
        emit({**base, "impl": "sdpa-bf16", "preset": "bf16", "seconds": t_sdpa, "copy_fraction": None, "timing": how})
        if fa is not None:
            fn, ver = fa
            cq = torch.tensor([0, nq], dtype=torch.int32, device="cuda")
            ck = torch.tensor([0, ctx], dtype=torch.int32, device="cuda")
            t, how = time_it(lambda: fn(q=q, k=k, v=v, max_seqlen_q=nq, cu_seqlens_q=cq, max_seqlen_k=ctx,
                                        cu_seqlens_k=ck, causal=True, fa_version=ver), _reps(t_sdpa))
            emit({**base, "impl": f"flash-bf16 (FA{ver})", "preset": "bf16", "seconds": t, "copy_fraction": None,
                  "timing": how})
        del ks, vs
        nb = ctx // BS + 2
        bt = torch.randperm(nb, generator=gen, device="cuda")[: ctx // BS].to(torch.int32)[None]
        pos = torch.arange(ctx, device="cuda")
        slots = bt[0, pos // BS].to(torch.int64) * BS + pos % BS
        sl = torch.tensor([ctx], dtype=torch.int32, device="cuda")
        qsl = torch.tensor([0, nq], dtype=torch.int32, device="cuda")
        plan = plan_attention(torch.tensor([0, nq]), torch.tensor([ctx]), "cuda")
        for preset in args.presets:
            fmt = tqf.LayerFormat(tqf.get_preset(preset), D)
            params = KernelParams.build(fmt, "cuda")
            cache = torch.empty(fmt.cache_shape(nb, BS, HKV), dtype=torch.uint8, device="cuda")
            store_kv(k, v, cache, slots, params)
            t, how = time_it(lambda: attention(q, cache, bt, sl, qsl, params, plan=plan), _reps(t_sdpa))
            emit({**base, "impl": preset, "preset": preset, "seconds": t, "copy_fraction": None,
                  "vs_sdpa": t / t_sdpa, "timing": how})
            for side in args.dense_rotations:  # the dense path's rotations on the side asked for
                scfg = dataclasses.replace(AttnConfig(), dense_rotation=side)
                t, how = time_it(lambda: attention(q, cache, bt, sl, qsl, params, plan=plan, config=scfg),
                                 _reps(t_sdpa))
                emit({**base, "impl": f"{preset}[{side}]", "preset": preset, "seconds": t, "copy_fraction": None,
                      "vs_sdpa": t / t_sdpa, "timing": how})
            if preset == args.presets[0] and args.stages:
                emit_stages(base, q, cache, bt, sl, params, plan.prefill, D ** -0.5, t_sdpa, emit, time_it,
                            args.rotate_configs)
            if preset in args.tiles:
                cfg = dataclasses.replace(AttnConfig(), dense_prefill=False)
                t, how = time_it(lambda: attention(q, cache, bt, sl, qsl, params, plan=plan, config=cfg), 3)
                emit({**base, "impl": f"{preset}-tiles", "preset": preset, "seconds": t, "copy_fraction": None,
                      "vs_sdpa": t / t_sdpa, "timing": how})
            if nq >= args.store_min_tokens and (preset, nq) not in stored:  # the rows matter, not the history
                stored.add((preset, nq))
                kq, vq = k[-nq:], v[-nq:]
                moved = nq * HKV * (2 * D * 2 + fmt.slot_bytes)
                refs = {}  # the first mse config's bytes of each kernel family (store_mse's launches, store_wg's)
                timed = []  # (label, fn) of the configs that stored
                for rot, bts, warps, opts in args.store_configs:
                    kern = "mse" if rot == "mse" else "generic"
                    label = f"store-{rot}-bt{bts}-w{warps}" + (f"-{'+'.join(opts)}" if opts else "")
                    kw = {"rotation": "tc" if rot == "mse" else rot, "kernel": kern, "block_tokens": bts,
                          "num_warps": warps, **store_options(opts)}
                    try:
                        def fn(kw=kw):
                            store_kv(kq, vq, cache, slots[-nq:], params, **kw)

                        if rot == "mse":  # the bytes, once, untimed: every mse config must store its family's first's
                            cache.zero_()
                            fn()
                            family = "wg" in opts
                            first = next(iter(refs.values()), None)
                            if family not in refs:
                                refs[family] = (label, cache.clone())
                                if first is not None:  # store_wg against store_mse: within SPEC §10, not equal
                                    differ = (cache != first[1]).any(dim=-1).sum().item() / (nq * HKV)  # of the slots
                                    emit({"kind": "store_diff", "impl": label, "preset": preset, "query_tokens": nq,
                                          "slots_differ": differ, "against": first[0]})
                            elif not torch.equal(cache, refs[family][1]):
                                emit({"kind": "store_error", "impl": label, "preset": preset,
                                      "error": f"stored bytes differ from {refs[family][0]}'s"})
                        time_it(fn, 1)  # compiled and capturable before the rounds
                    except Exception as e:  # a tile that does not fit the SM: recorded, not fatal
                        emit({"kind": "store_error", "impl": label, "error": repr(e)[:300]})
                        continue
                    timed.append((label, fn))
                # --store-rounds: every config timed once a round, in turn, so that a drift of the card's clock
                # between configs shows as spread rather than as a difference between them
                times = {label: [] for label, _ in timed}
                for _ in range(args.store_rounds):
                    for label, fn in timed:
                        t, how = time_it(fn, 10)
                        times[label].append(t)
                for label, ts in times.items():
                    t, spread = bench_decode.median_spread(ts)
                    emit({"kind": "store", "impl": label, "preset": preset, "batch": 1,
                          "context": ctx, "query_tokens": nq, "seconds": t, "copy_fraction": moved / t / copy_bw,
                          "vs_sdpa": t / t_sdpa, "timing": how, "rounds": len(ts), "spread": spread})
            del cache
        del k, v, q
        torch.cuda.empty_cache()
    if out:
        out.close()


def emit_stages(base, q, cache, bt, sl, params, pp, scale, t_sdpa, emit, time_it, rotate_configs=()) -> None:
    """The dense path's launches timed one by one (prefill.prefill_attention's steps); then the two
    rotations on the one-tile-per-program kernel and on the persistent kernel at each of
    rotate_configs (rows per tile, warps, programs per SM)."""
    import torch

    from turboquant.triton_impl import prefill as pf
    from turboquant.triton_impl import rotate as rot

    w = pf.dense_width(params)
    qd = torch.empty((q.shape[0], q.shape[1], w), dtype=q.dtype, device=q.device)
    kd, vd = pf.dense_kv(cache, bt, sl, params, pp, q.dtype)
    od = pf.dense_attention(qd, kd, vd, pp, scale)
    o = torch.empty_like(q)
    n, hkv, d = kd.shape[0], kd.shape[1], q.shape[2]
    k, v = (torch.empty((n, hkv, d), dtype=q.dtype, device=q.device) for _ in range(2))
    steps = {"rotate q": lambda: pf.rotate_rows(q, params, qd, inverse=False),
             "decode K, V": lambda: pf.dense_kv(cache, bt, sl, params, pp, q.dtype),
             "dense attention": lambda: pf.dense_attention(qd, kd, vd, pp, scale),
             "rotate back": lambda: pf.rotate_rows(od, params, o, inverse=True),
             # dense_rotation="kv": the workspace rotated back instead of q and the output
             "rotate K', V' back": lambda: (pf.rotate_rows(kd, params, k, inverse=True, tensor="key"),
                                            pf.rotate_rows(vd, params, v, inverse=True))}
    for name, fn in steps.items():
        t, how = time_it(fn, _reps(t_sdpa))
        emit({**base, "kind": "prefill_stage", "impl": name, "preset": params.fmt.preset.name, "seconds": t,
              "copy_fraction": None, "vs_sdpa": t / t_sdpa, "timing": how})
    if not rotate_configs:
        return
    variants = [("per-tile", None)] + [(f"persistent-{b}:{w}:{pps}", (b, w, pps)) for b, w, pps in rotate_configs]
    moved = 2 * q.numel() * q.element_size()  # each rotation reads and writes q's bytes
    for label, cfg in variants:
        kw = {"persistent": cfg is not None, "tiling": cfg}
        for name, fn in {"rotate q": lambda: rot.rotate_rows(q, params, qd, inverse=False, **kw),
                         "rotate back": lambda: rot.rotate_rows(od, params, o, inverse=True, **kw)}.items():
            t, how = time_it(fn, _reps(t_sdpa))
            emit({**base, "kind": "prefill_stage", "impl": f"{name} [{label}]",
                  "preset": params.fmt.preset.name, "seconds": t, "copy_fraction": None, "vs_sdpa": t / t_sdpa,
                  "timing": how, "gbps": moved / t / 1e9})


def load_rows(paths) -> tuple[list[dict], list[dict]]:
    envs, rows = [], []
    for p in paths:
        with open(p) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    r = json.loads(line)
                    (envs if r.get("env") else rows).append(r)
    return envs, rows


def report(paths) -> str:
    """Markdown: one row per (context, query rows), one column per implementation (ms and x SDPA)."""
    envs, rows = load_rows(paths)
    att = [r for r in rows if r.get("kind") == "prefill"]
    impls = list(dict.fromkeys(r["impl"] for r in att))
    shapes = list(dict.fromkeys((r["context"], r["query_tokens"]) for r in att))
    lines = []
    for e in envs:
        timing = {"graph": "GPU time from CUDA graph replays", "events": "eager calls between events"}.get(
            e.get("timing", "events"), e.get("timing"))
        lines.append(f"{e.get('device')}, {e.get('date')}, torch {e.get('torch')}, Triton {e.get('triton')}; "
                     f"timing: {timing}")
    eager = [r["impl"] for r in rows if r.get("timing") == "events" and any(e.get("timing") == "graph" for e in envs)]
    if eager:
        lines.append(f"(not capturable, timed eagerly: {', '.join(dict.fromkeys(eager))})")
    lines += ["", "| cached tokens x query rows | " + " | ".join(impls) + " |",
              "|---|" + "--:|" * len(impls)]
    for ctx, nq in shapes:
        cells = []
        sd = next((r["seconds"] for r in att if (r["context"], r["query_tokens"], r["impl"]) == (ctx, nq, "sdpa-bf16")),
                  None)
        for i in impls:
            r = next((r for r in att if (r["context"], r["query_tokens"], r["impl"]) == (ctx, nq, i)), None)
            if r is None:
                cells.append("–")
            elif sd and i != "sdpa-bf16":
                cells.append(f"{r['seconds'] * 1e3:.2f} ms ({r['seconds'] / sd:.2f}x)")
            else:
                cells.append(f"{r['seconds'] * 1e3:.2f} ms")
        lines.append(f"| {ctx:,} x {nq:,} | " + " | ".join(cells) + " |")
    tables = {
        "prefill_stage": ("| dense path stage | cached tokens x query rows | time | x SDPA attention of the shape |",
                          lambda r: f"| {r['impl']} ({r['preset']}) | {r['context']:,} x {r['query_tokens']:,} | "
                                    f"{r['seconds'] * 1e6:.0f} us | {r['vs_sdpa']:.3f} |"),
        "store": ("| store | query rows | time | copy bandwidth | x SDPA attention of the shape |",
                  lambda r: f"| {r['impl']} ({r['preset']}) | {r['query_tokens']:,} | {r['seconds'] * 1e6:.0f} us | "
                            f"{r['copy_fraction']:.1%} | {r['vs_sdpa']:.3f} |"),
    }
    for kind, (head, row) in tables.items():
        sel = [r for r in rows if r.get("kind") == kind]
        if sel:
            lines += ["", head, "|---|" + "--:|" * (head.count("|") - 2)] + [row(r) for r in sel]
    return "\n".join(lines)


def plot(paths, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, rows = load_rows(paths)
    att = [r for r in rows if r.get("kind") == "prefill" and r["impl"] != "sdpa-bf16" and "vs_sdpa" in r]
    shapes = list(dict.fromkeys((r["context"], r["query_tokens"]) for r in att))
    impls = list(dict.fromkeys(r["impl"] for r in att))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    w = 0.8 / max(len(impls), 1)
    for j, i in enumerate(impls):
        ys = [next((r["vs_sdpa"] for r in att if (r["context"], r["query_tokens"], r["impl"]) == (*s, i)), np.nan)
              for s in shapes]
        ax.bar(np.arange(len(shapes)) + j * w, ys, w, label=i)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.25, color="grey", lw=0.8, ls="--", label="target 1.25x")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(shapes)) + 0.4 - w / 2)
    ax.set_xticklabels([f"{c // 1024}k x {q // 1024 if q >= 1024 else q}{'k' if q >= 1024 else ''}" for c, q in shapes])
    ax.set_ylabel("time / torch SDPA bf16 (log)")
    ax.set_title("Prefill attention over the packed cache vs bf16 SDPA (one sequence, Llama-3-8B heads)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


# store_mse's numbered OPTIONS: the letter, then N -> the store_kv keyword
NUMBERED_STORE_OPTIONS = {"p": "programs_per_sm", "r": "maxnreg", "c": "col_blocks"}


def _numbered(o: str) -> bool:
    return o[:1] in NUMBERED_STORE_OPTIONS and o[1:].isdigit()


def parse_store_configs(text: str) -> list[tuple[str, int, int, tuple[str, ...]]]:
    """"tc:32:4,fma:16:4,mse:64:4,mse:64:4:prefetch+lean+p3" -> [("tc", 32, 4, ()), ..., ("mse", 64, 4,
    ("prefetch", "lean", "p3"))]: rotation:block_tokens:num_warps of the generic kernel, or
    mse:block_rows:num_warps[:OPTIONS] of store_mse.py, OPTIONS '+'-joined names of its VARIANTS,
    pN (N programs an SM in its persistent grid), rN (a register cap of N per thread) or cN (each row
    tile's coordinates over N programs: col_blocks)."""
    from turboquant.triton_impl.store_mse import VARIANTS

    out = []
    for part in text.split(","):
        bits = part.split(":")
        if not (3 <= len(bits) <= 4) or bits[0] not in ("tc", "fma", "mse") or not bits[1].isdigit() \
                or not bits[2].isdigit():
            raise ValueError(f"store configs: {part!r} is not KIND:BLOCK:WARPS[:OPTIONS] with KIND in tc, fma, mse")
        opts = tuple(bits[3].split("+")) if len(bits) == 4 else ()
        if opts and bits[0] != "mse":
            raise ValueError(f"store configs: {part!r}: OPTIONS apply to KIND mse only")
        for o in opts:
            if o not in VARIANTS and not (_numbered(o) and int(o[1:]) > 0):
                raise ValueError(f"store configs: {part!r}: option {o!r} is not one of {', '.join(VARIANTS)}, "
                                 "pN (programs an SM, N > 0), rN (register cap, 24 <= N <= 255) or cN (column "
                                 "blocks a row tile: 1, 2, 4)")
        out.append((bits[0], int(bits[1]), int(bits[2]), opts))
    return out


def store_options(opts: tuple[str, ...]) -> dict:
    """parse_store_configs' OPTIONS as store_kv keywords (variant=..., programs_per_sm=..., maxnreg=...,
    col_blocks=...)."""
    kw = {"variant": tuple(o for o in opts if not _numbered(o))}
    for letter, name in NUMBERED_STORE_OPTIONS.items():  # the last one given counts
        kw[name] = next((int(o[1:]) for o in reversed(opts) if o[:1] == letter and _numbered(o)), None)
    return kw


def parse_rotate_configs(text: str) -> list[tuple[int, int, int]]:
    """"32:4:2,16:4:3" -> [(32, 4, 2), (16, 4, 3)] (rows per tile, warps, programs per SM)."""
    out = []
    for part in text.split(",") if text else []:
        bits = part.split(":")
        if len(bits) != 3 or not all(b.isdigit() and int(b) > 0 for b in bits):
            raise ValueError(f"rotate configs: {part!r} is not BR:WARPS:PROGRAMS_PER_SM (positive integers)")
        out.append(tuple(int(b) for b in bits))
    return out


def parse_dense_rotations(text: str) -> list[str]:
    """"kv,auto" -> ["kv", "auto"] (AttnConfig.dense_rotation values)."""
    sides = [x for x in text.split(",") if x]
    bad = [x for x in sides if x not in ("query", "kv", "auto")]
    if bad:
        raise argparse.ArgumentTypeError(f"--dense-rotations: {bad[0]!r} is not supported; allowed values: query, kv, "
                                         "auto")
    return sides



def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="append JSON rows here")
    ap.add_argument("--shapes", type=parse_shapes, default=list(SHAPES), help="CONTEXTxQUERY_ROWS,...")
    ap.add_argument("--presets", type=lambda s: s.split(","), default=list(PRESETS))
    ap.add_argument("--tiles", type=lambda s: s.split(",") if s else [], default=["tq3"],
                    help="presets also timed on the packed-tile kernel")
    ap.add_argument("--store-configs", type=parse_store_configs,
                    default=parse_store_configs("tc:32:8,mse:64:4,mse:64:4:prefetch+lean,mse:128:8,mse:32:4"))
    ap.add_argument("--store-rounds", type=positive_int("store-rounds"), default=1,
                    help="time every store config this many times, one config after the other a round; each row "
                         "gives the median and the spread (max - min) / median of its rounds (default 1)")
    ap.add_argument("--store-min-tokens", type=positive_int("store-min-tokens"), default=2048,
                    help="time the store configs at shapes of at least this many query rows (default 2048; "
                         "32: a decode step's store of 32 sequences)")
    ap.add_argument("--timing", choices=("graph", "events"), default="graph",
                    help="graph: GPU time from CUDA graph replays; events: eager calls between events")
    ap.add_argument("--rotate-configs", type=parse_rotate_configs, default=[],
                    help="with --stages: BR:WARPS:PROGRAMS_PER_SM,... of the persistent rotation kernel")
    ap.add_argument("--stages", action="store_true", help="also time the dense path's launches one by one")
    ap.add_argument("--dense-rotations", type=parse_dense_rotations, default=["query", "kv"],
                    help="also time each preset with AttnConfig.dense_rotation set to these (query, kv, auto; "
                         "rows PRESET[SIDE] beside PRESET, the default config); '' for none")
    ap.add_argument("--report", help="comma-separated JSONL files: print the markdown table")
    ap.add_argument("--plot", help="with --report: write this PNG")
    args = ap.parse_args(argv)
    if args.report:
        paths = args.report.split(",")
        print(report(paths))
        if args.plot:
            plot(paths, args.plot)
        return
    run(args)


if __name__ == "__main__":
    main()

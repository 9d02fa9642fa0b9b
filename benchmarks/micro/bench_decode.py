"""Decode-attention and store benchmarks of the Triton kernels on one GPU.

Llama-3-8B geometry: 32 query heads, 8 KV heads, head size 128, bf16 queries,
block size 16, random permuted block tables, every sequence at the full
context.  For every preset and (batch, context): median latency of CUDA-graph
replays, GB/s on the bytes actually stored (batch * context * 8 * slot_bytes),
and that as a fraction of the device-to-device copy bandwidth measured in the
same run (bytes read + written).  torch SDPA bf16 on a dense cache is measured
in the same run.  Small problems rotate over several disjoint caches so that
the working set exceeds L2 (else the timing measures L2, not HBM).  Writes JSON (``--out``); plot it with
benchmarks/plots/plot_decode.py.

    python -m benchmarks.micro.bench_decode --out results.json            # full table
    python -m benchmarks.micro.bench_decode --sweep --presets tq3         # tune the split kernel
    python -m benchmarks.micro.bench_decode --vllm                        # + vLLM baseline rows (hook)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import platform
import re
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from turboquant import format as tqf
from turboquant.cli import positive_int
from turboquant.triton_impl import AttnConfig, KernelParams, decode_attention, store_kv
from turboquant.triton_impl.decode import decode_splits
from turboquant.triton_impl.decode_mma import RING_BYTES, SPLIT_RULES, VALUE_TABLES, wide_ring_bytes

HQ, HKV, D, BS = 32, 8, 128, 16
L2_ROTATE_BYTES = 512 << 20  # rotate inputs until a graph touches at least this much
MAX_ROTATE = 16


# ------------------------------------------------------------------ timing
def time_graph(fns, reps: int = 15, warmup: int = 2) -> float:
    """Median seconds per call of the calls in ``fns`` (one CUDA graph replays them all)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup):
            for f in fns:
                f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns:
            f()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    del g
    return float(np.median(ts)) / len(fns)


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB: (bytes read + written) / median time, the
    best of (a) torch copy_ replayed in a CUDA graph and (b) an elementwise SM
    kernel (torch.mul by 1).  v1 runs measured only (a), with uint8 and then
    float32 elements: 2.74-2.76 TB/s on an H200, while SDPA streamed 4.5 TB/s
    and the shared notes measured 4.22 TB/s; a captured copy_ is a graph memcpy
    node (likely the copy engine).  (b) is not yet measured on a device."""
    n = 1 << 28
    src = torch.randn((n,), dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    t_copy = time_graph([lambda: dst.copy_(src)], reps=20)
    t_mul = time_graph([lambda: torch.mul(src, 1.0, out=dst)], reps=20)
    del src, dst
    print(json.dumps({"copy_graph_gbps": 8 * n / t_copy / 1e9, "copy_mul_kernel_gbps": 8 * n / t_mul / 1e9}))
    return 2 * 4 * n / min(t_copy, t_mul)


# ------------------------------------------------------------------ data
def random_kv(n: int, gen: torch.Generator):
    scale = torch.exp(torch.randn(D, generator=gen, device="cuda") * 0.6)
    bias = torch.randn(D, generator=gen, device="cuda") * 0.3
    k = (torch.randn((n, HKV, D), generator=gen, device="cuda") * scale + bias).to(torch.bfloat16)
    v = torch.randn((n, HKV, D), generator=gen, device="cuda").to(torch.bfloat16)
    return k, v


def filled_cache(fmt: tqf.LayerFormat, params: KernelParams, num_blocks: int, gen: torch.Generator):
    """A cache whose every slot holds a real encoded token: encode a pool of
    random tokens with store_kv, then tile those pages over the whole cache."""
    cache = torch.empty(fmt.cache_shape(num_blocks, BS, HKV), dtype=torch.uint8, device="cuda")
    pool_blocks = min(num_blocks, 4096)
    n = pool_blocks * BS
    k, v = random_kv(n, gen)
    store_kv(k, v, cache, torch.arange(n, device="cuda", dtype=torch.int64), params)
    done = pool_blocks
    while done < num_blocks:
        c = min(done, num_blocks - done)
        cache[done:done + c].copy_(cache[:c])
        done += c
    return cache


def block_tables(num_blocks: int, batch: int, ctx: int, copies: int, gen: torch.Generator):
    """``copies`` block tables [batch, ctx/BS] over disjoint random blocks."""
    per = batch * (ctx // BS)
    perm = torch.randperm(num_blocks, generator=gen, device="cuda")[: per * copies].to(torch.int32)
    return [perm[i * per:(i + 1) * per].view(batch, ctx // BS) for i in range(copies)]


def n_rotate(bytes_per_call: int) -> int:
    return int(max(1, min(MAX_ROTATE, math.ceil(L2_ROTATE_BYTES / max(bytes_per_call, 1)))))


# ------------------------------------------------------------------ measurements
def check_preset(preset: str, gen, batch: int = 4, ctx: int = 3000) -> float:
    """rel. error of decode_attention against float64 attention over the
    dequantized cache (dequantize()), at a benchmark-like shape on this GPU."""
    from turboquant.triton_impl import dequantize

    fmt = tqf.LayerFormat(tqf.get_preset(preset), D)
    params = KernelParams.build(fmt, "cuda")
    nb = batch * -(-ctx // BS) + 3
    cache = filled_cache(fmt, params, nb, gen)
    k, v = random_kv(batch * ctx, gen)
    bt = torch.randperm(nb, generator=gen, device="cuda")[: batch * -(-ctx // BS)].to(torch.int32).view(batch, -1)
    pos = torch.arange(ctx, device="cuda")
    slots = (bt[:, pos // BS].to(torch.int64) * BS + pos % BS).reshape(-1)
    store_kv(k, v, cache, slots, params)
    sl = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    q = torch.randn((batch, HQ, D), generator=gen, device="cuda").to(torch.bfloat16)
    out = decode_attention(q, cache, bt, sl, params).double()
    kd, vd = dequantize(cache, bt, sl, params)  # [B, L, HKV, D]
    kd = kd.double().repeat_interleave(HQ // HKV, 2)
    vd = vd.double().repeat_interleave(HQ // HKV, 2)
    logits = torch.einsum("bhd,blhd->bhl", q.double(), kd) / math.sqrt(D)
    want = torch.einsum("bhl,blhd->bhd", torch.softmax(logits, -1), vd)
    return float((out - want).norm() / want.norm())


def bench_preset(preset: str, shapes, cfg: AttnConfig, gen, copy_bw: float, rows: list, log, label: str = ""):
    fmt = tqf.LayerFormat(tqf.get_preset(preset), D)
    params = KernelParams.build(fmt, "cuda")
    need = max(b * c * n_rotate(b * c * HKV * fmt.slot_bytes) for b, c in shapes) // BS
    cache = filled_cache(fmt, params, need, gen)
    for b, c in shapes:
        nbytes = b * c * HKV * fmt.slot_bytes
        r = n_rotate(nbytes)
        bts = block_tables(need, b, c, r, gen)
        sl = torch.full((b,), c, dtype=torch.int32, device="cuda")
        q = torch.randn((b, HQ, D), generator=gen, device="cuda").to(torch.bfloat16)
        outs = [torch.empty_like(q) for _ in range(r)]
        fns = [lambda bt=bt, o=o: decode_attention(q, cache, bt, sl, params, out=o, config=cfg)
               for bt, o in zip(bts, outs)]
        t = time_graph(fns)
        splits = decode_splits(params, cfg, b * HKV, c, torch.device("cuda"), mma=cfg.decode_kernel != "split")
        # the timed config against the default one on the same cache and query (a sweep config
        # that computes something else must not win on speed)
        ref = decode_attention(q, cache, bts[0], sl, params)
        diff = float((outs[0].float() - ref.float()).abs().max())
        row = {"kind": "turboquant", "preset": label or preset, "slot_bytes": fmt.slot_bytes, "batch": b, "context": c,
               "seconds": t, "bytes": nbytes, "gbps": nbytes / t / 1e9, "copy_fraction": nbytes / t / copy_bw,
               "rotate": r, "splits": splits, "max_diff_vs_default_config": diff}
        rows.append(row)
        log(row)
    del cache
    torch.cuda.empty_cache()


def bench_sdpa(shapes, gen, copy_bw: float, rows: list, log):
    for b, c in shapes:
        nbytes = b * c * HKV * D * 2 * 2
        r = n_rotate(nbytes)
        q = torch.randn((b, HQ, 1, D), generator=gen, device="cuda").to(torch.bfloat16)
        kv = [(torch.randn((b, HKV, c, D), generator=gen, device="cuda", dtype=torch.bfloat16),
               torch.randn((b, HKV, c, D), generator=gen, device="cuda", dtype=torch.bfloat16)) for _ in range(r)]
        note = "enable_gqa"
        try:
            fns = [lambda k=k, v=v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True) for k, v in kv]
            t = time_graph(fns)
        except Exception as e:  # older torch: expand KV (reads 4x the bytes; noted)
            note = f"expanded KV ({type(e).__name__})"
            fns = [lambda k=k, v=v: F.scaled_dot_product_attention(q, k.repeat_interleave(HQ // HKV, 1),
                                                                    v.repeat_interleave(HQ // HKV, 1)) for k, v in kv]
            t = time_graph(fns)
        row = {"kind": "sdpa_bf16", "preset": "torch-sdpa-bf16", "slot_bytes": 4 * D, "batch": b, "context": c,
               "seconds": t, "bytes": nbytes, "gbps": nbytes / t / 1e9, "copy_fraction": nbytes / t / copy_bw,
               "rotate": r, "note": note}
        rows.append(row)
        log(row)
        del kv
        torch.cuda.empty_cache()


def bench_store(preset: str, gen, copy_bw: float, rows: list, log, n_tokens: int = 32768):
    fmt = tqf.LayerFormat(tqf.get_preset(preset), D)
    params = KernelParams.build(fmt, "cuda")
    nb = 4 * n_tokens // BS
    cache = torch.zeros(fmt.cache_shape(nb, BS, HKV), dtype=torch.uint8, device="cuda")
    k, v = random_kv(n_tokens, gen)
    slots = torch.randperm(nb * BS, generator=gen, device="cuda")[:n_tokens]
    t = time_graph([lambda: store_kv(k, v, cache, slots, params)])
    nbytes = n_tokens * HKV * (2 * D * 2 + fmt.slot_bytes)
    row = {"kind": "store", "preset": preset, "slot_bytes": fmt.slot_bytes, "tokens": n_tokens, "seconds": t,
           "bytes": nbytes, "gbps": nbytes / t / 1e9, "copy_fraction": nbytes / t / copy_bw}
    rows.append(row)
    log(row)


def vllm_baseline_rows(shapes, gen, copy_bw: float) -> list[dict]:
    """vLLM baselines (FA3 bf16 / FP8 paged decode, vLLM's TurboQuant 4bit_nc /
    3bit_nc) with the same shapes, timer (time_graph), input rotation and copy
    bandwidth: benchmarks/micro/vllm_baselines.py.  Needs vLLM (tools/gpu-vllm)."""
    from .vllm_baselines import vllm_rows

    return vllm_rows(shapes, gen, copy_bw, time_graph, n_rotate, hq=HQ, hkv=HKV, d=D)


# ------------------------------------------------------------------ sweep
SWEEP = [
    AttnConfig(block_tokens=64, num_warps=4, num_stages=2, lookup=0),
    AttnConfig(block_tokens=64, num_warps=4, num_stages=2, lookup=1),
    AttnConfig(block_tokens=64, num_warps=4, num_stages=3, lookup=0),
    AttnConfig(block_tokens=128, num_warps=4, num_stages=2, lookup=0),
    AttnConfig(block_tokens=128, num_warps=8, num_stages=2, lookup=1),
    AttnConfig(block_tokens=128, num_warps=8, num_stages=3, lookup=0),
    AttnConfig(block_tokens=32, num_warps=4, num_stages=3, lookup=0),
    AttnConfig(block_tokens=64, num_warps=8, num_stages=2, lookup=1),
    # LOOKUP=2 (2026-12-03, not yet measured): centroids as cubics in the magnitude index, no gathers
    AttnConfig(block_tokens=64, num_warps=8, num_stages=2, lookup=2),
    AttnConfig(block_tokens=32, num_warps=4, num_stages=3, lookup=2),
    AttnConfig(block_tokens=128, num_warps=8, num_stages=3, lookup=2),
]


SWEEP_TOL = 2e-2  # max |out - out(default config)|: bf16 outputs, split reductions in another order


def sweep(presets, gen, copy_bw, log, shapes=((32, 32768), (1, 131072))):
    best, rows = None, []
    for cfg in SWEEP:
        tot = 0.0
        for p in presets:
            r: list = []
            try:
                bench_preset(p, shapes, cfg, gen, copy_bw, r, lambda x: None)
            except Exception as e:  # a config that does not compile / run is skipped
                log({"sweep_error": repr(e)[:300], "config": dataclasses.asdict(cfg)})
                tot = math.inf
                break
            wrong = [x["max_diff_vs_default_config"] for x in r if not x["max_diff_vs_default_config"] <= SWEEP_TOL]
            if wrong:
                log({"sweep_error": f"output differs from the default config by {max(wrong)} > {SWEEP_TOL}",
                     "config": dataclasses.asdict(cfg)})
                tot = math.inf
            for x in r:
                x["config"] = dataclasses.asdict(cfg)
                rows.append(x)
                log({"sweep": x["preset"], "batch": x["batch"], "context": x["context"],
                     "us": round(x["seconds"] * 1e6, 1), "copy%": round(100 * x["copy_fraction"], 1),
                     "diff": x["max_diff_vs_default_config"],
                     **dataclasses.asdict(cfg)})
            tot += sum(x["seconds"] / x["bytes"] for x in r)  # equal weight per shape
        if best is None or tot < best[0]:
            best = (tot, cfg)
    return best[1], rows


def median_spread(ts: list[float]) -> tuple[float, float]:
    """(median, (slowest - fastest) / median) of several rounds' seconds of one configuration."""
    t = float(np.median(ts))
    return t, (max(ts) - min(ts)) / t


def median_rows(runs: list[list[dict]]) -> list[dict]:
    """One row a shape from several rounds' rows of one kernel (``runs``: a list of rows a round, a row a
    shape): the first round's row with the median of the rounds' seconds (and its bandwidth), ``rounds`` and
    ``spread`` = (slowest - fastest) / median.  A shape missing from any round is left out."""
    out = []
    for row in runs[0]:
        key = (row["batch"], row["context"])
        ts = [x["seconds"] for r in runs for x in r if (x["batch"], x["context"]) == key]
        if len(ts) != len(runs):
            continue
        t, spread = median_spread(ts)
        gbps = row["gbps"] * row["seconds"] / t
        out.append({**row, "seconds": t, "gbps": gbps, "copy_fraction": row["copy_fraction"] * row["seconds"] / t,
                    "rounds": len(ts), "spread": spread})
    return out


# ------------------------------------------------------------------ main
def table(rows, sdpa) -> str:
    lines = [f"{'kind/preset':<18} {'B/tok':>5} {'batch':>5} {'ctx':>7} {'us':>9} {'GB/s':>7} {'copy%':>6} "
             f"{'vs SDPA':>7}"]
    for x in rows:
        if x["kind"] == "store":
            continue
        base = sdpa.get((x["batch"], x["context"]))
        sp = f"{base / x['seconds']:.2f}x" if base else ""
        lines.append(f"{x['preset']:<18} {x['slot_bytes']:>5} {x['batch']:>5} {x['context']:>7} "
                     f"{x['seconds'] * 1e6:>9.1f} {x['gbps']:>7.0f} {100 * x['copy_fraction']:>5.1f}% {sp:>7}")
    for x in rows:
        if x["kind"] == "store":
            lines.append(f"{'store ' + x['preset']:<18} {x['slot_bytes']:>5} {'':>5} {x['tokens']:>7} "
                         f"{x['seconds'] * 1e6:>9.1f} {x['gbps']:>7.0f} {100 * x['copy_fraction']:>5.1f}%")
    return "\n".join(lines)


def kernel_config(spec: str, cfg: AttnConfig) -> AttnConfig:
    """--kernels entry -> the AttnConfig it times: 'auto', 'split', 'mma', or 'mma@' followed by any of
    N (mma_programs_per_sm), rR (mma_maxnreg), bB (mma_ring_bytes), sS (max_splits), t0 / t1
    (mma_shared_table), p0 / p1 / p2 (mma_step_tiles),
    k1 (mma_key_table "single"; k0: "pair"; k2: "prmt"; neither: "auto"),
    q1 (mma_query_rotation "bf16x2"; q0: "fma"; neither: "auto"), w1 (mma_split_rule "waves"; w2: "rounds";
    w0: "fill"), o1 (mma_output_rotation "bf16x3"; o0: "fma"; o2: "fused", in the merge's programs), a1
    (mma_page_ahead: pages loaded a step ahead; a0: not), v1 (mma_value_table "wide", with its 6,144-byte ring,
    8,192 beside k2, unless bB says otherwise; v2: "single"; v3: "prmt"; v0: "pair"), g1 (mma_pdl: programmatic
    dependent launches; g0: not) in that order: mma@32r128b24576s512t0p2k1q1w1o1a1, mma@v1, mma@r152k2, mma@w1g1."""
    kern, at, opts = spec.partition("@")
    if kern not in ("auto", "mma", "split") or (at and kern != "mma"):
        raise ValueError(f"--kernels entry {spec!r}: allowed values: auto, split, mma, "
                         "mma@[N][rR][bB][sS][t0|t1][p0|p1|p2][k0|k1|k2][q0|q1][w0|w1|w2][o0|o1|o2][a0|a1][v0|v1|v2|v3]"
                         "[g0|g1]")
    m = re.fullmatch(r"(\d+)?(?:r(\d+))?(?:b(\d+))?(?:s(\d+))?(?:t([01]))?(?:p(\d+))?(?:k([012]))?(?:q([01]))?"
                     r"(?:w([012]))?(?:o([012]))?(?:a([01]))?(?:v([0123]))?(?:g([01]))?", opts)
    if m is None or (at and not any(m.groups())):
        raise ValueError(f"--kernels entry {spec!r}: after mma@ give N (programs per SM), rR (register cap), "
                         f"bB (ring bytes), sS (most splits), t0|t1 (one pair table for keys and values) and/or "
                         "p0|p1|p2 (tiles per softmax step), k0|k1|k2 (pair or single-code key table, or byte "
                         "permutes), q0|q1 (query rotation in fp32 FMA or bf16x2 tensor cores), w0|w1|w2 (split count "
                         "filling, in whole waves or by scheduler rounds), o0|o1|o2 (output rotation in fp32 FMA, "
                         "bf16x3 tensor cores, or fused into the merge), a0|a1 (block-table pages loaded when used "
                         "or a step ahead), "
                         "v0|v1|v2|v3 (value table pair, wide, single, byte permutes), g0|g1 (programmatic dependent "
                         "launches), "
                         "e.g. mma@32r128b24576s512t0p2k1q1w1o1a1")
    ppsm, nreg, ring, splits, table, step, key, qrot, waves, orot, ahead, vtab, pdl = m.groups()
    kcfg = dataclasses.replace(cfg, decode_kernel=kern)
    if ppsm:
        kcfg = dataclasses.replace(kcfg, mma_programs_per_sm=int(ppsm))
    if nreg:
        kcfg = dataclasses.replace(kcfg, mma_maxnreg=int(nreg))
    if ring and not vtab:
        kcfg = dataclasses.replace(kcfg, mma_ring_bytes=int(ring))  # AttnConfig checks it
    if splits:
        kcfg = dataclasses.replace(kcfg, max_splits=int(splits))
    if table:
        kcfg = dataclasses.replace(kcfg, mma_shared_table=table == "1")
    if step:
        kcfg = dataclasses.replace(kcfg, mma_step_tiles=int(step))  # AttnConfig checks it
    if key:
        kcfg = dataclasses.replace(kcfg, mma_key_table=("pair", "single", "prmt")[int(key)])
    if qrot:
        kcfg = dataclasses.replace(kcfg, mma_query_rotation="bf16x2" if qrot == "1" else "fma")
    if waves:
        kcfg = dataclasses.replace(kcfg, mma_split_rule=SPLIT_RULES[int(waves)])  # w0 fill, w1 waves, w2 rounds
    if orot:
        kcfg = dataclasses.replace(kcfg, mma_output_rotation={"0": "fma", "1": "bf16x3", "2": "fused"}[orot])
    if ahead:
        kcfg = dataclasses.replace(kcfg, mma_page_ahead=ahead == "1")
    if pdl:
        kcfg = dataclasses.replace(kcfg, mma_pdl=pdl == "1")
    if vtab:  # the wide table comes with its own ring (AttnConfig checks the pair)
        kcfg = dataclasses.replace(kcfg, mma_value_table=VALUE_TABLES[1 + int(vtab)],  # v0 pair, v1 wide, v2 single
                                   mma_ring_bytes=int(ring) if ring else wide_ring_bytes(kcfg.mma_key_table)
                                   if vtab == "1" else RING_BYTES)
    return kcfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=",".join(tqf.PRESETS))
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--contexts", default="1024,8192,32768,131072")
    ap.add_argument("--out", default="bench_decode.json")
    ap.add_argument("--sweep", action="store_true", help="tune AttnConfig on tq3 first, then use the best")
    ap.add_argument("--no-table", action="store_true")
    ap.add_argument("--no-store", action="store_true")
    ap.add_argument("--vllm", action="store_true", help="add vLLM baseline rows (vllm_baseline_rows hook)")
    ap.add_argument("--budget", type=float, default=1e9, help="stop starting new presets after this many seconds")
    ap.add_argument("--smoke", action="store_true", help="only check_preset for --presets; exit 1 on any error")
    ap.add_argument("--rounds", type=positive_int("rounds"), default=1,
                    help="time every --kernels entry this many times, one after the other a round; each row gives "
                         "the median of its rounds and their spread (max - min) / median (default 1)")
    ap.add_argument("--shapes", default="", help="explicit batch x context list, e.g. 32x32768,1x131072")
    ap.add_argument("--kernels", default="auto",
                    help="decode kernels to time (AttnConfig.decode_kernel: auto, mma, split; mma@N: with "
                         "mma_programs_per_sm=N; mma@NrR: and mma_maxnreg=R; ...bB: and mma_ring_bytes=B; ...sS: and "
                         "max_splits=S; ...t0: mma_shared_table=False; ...p2: mma_step_tiles=2; ...k1: mma_key_table="
                         "'single'; ...q1: mma_query_rotation='bf16x2'; ...w1: mma_split_rule='waves' (w2: "
                         "'rounds'; w0: 'fill'); ...o1: mma_output_rotation='bf16x3', e.g. "
                         "mma@64b24576s512t0p2k1q1w1); rows of a "
                         "kernel other than auto are named PRESET+KERNEL")
    ap.add_argument("--batch-invariant", default="", metavar="PRESETS",
                    help="also these presets in batch-invariant mode (fixed-length splits; rows named PRESET+bi)")
    args = ap.parse_args(argv)
    try:
        kernel_specs = [k for k in args.kernels.split(",") if k]
        for spec in kernel_specs:
            kernel_config(spec, AttnConfig())
    except ValueError as e:
        ap.error(str(e))
    if args.smoke:
        gen = torch.Generator(device="cuda")
        gen.manual_seed(1)
        bad = 0
        for p in [p for p in args.presets.split(",") if p]:
            t0 = time.time()
            try:
                print(json.dumps({"smoke": p, "rel_err": check_preset(p, gen), "s": round(time.time() - t0, 1)}),
                      flush=True)
            except Exception as e:
                bad += 1
                print(json.dumps({"smoke": p, "error": repr(e)[:2000]}), flush=True)
        return 1 if bad else 0
    if args.vllm and importlib.util.find_spec("vllm") is None:
        # before any timing: a run without its baselines compares nothing with vLLM
        raise SystemExit("--vllm needs vLLM importable (tools/gpu-vllm: install the kit first, then set "
                         "PYTHONPATH=/tmp/site); not found on this machine")
    t_start = time.time()
    presets = [p for p in args.presets.split(",") if p]
    shapes = [(int(b), int(c)) for c in args.contexts.split(",") for b in args.batches.split(",")]
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    gen = torch.Generator(device="cuda")
    gen.manual_seed(0)
    import triton

    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "python": platform.python_version(), "geometry": {"q_heads": HQ, "kv_heads": HKV, "head_size": D,
                                                                 "block_size": BS},
              "date": time.strftime("%Y-%m-%d"), "rows": [], "sweep": []}

    def log(x):
        print(json.dumps(x), flush=True)

    def save():
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    bw = copy_bandwidth()
    result["copy_gbps"] = bw / 1e9
    log({"copy_gbps": round(bw / 1e9, 1)})
    cfg = AttnConfig()
    if args.sweep:
        cfg, srows = sweep(["tq3"], gen, bw, log)
        result["sweep"] = srows
        save()
    result["config"] = dataclasses.asdict(cfg)
    log({"config": result["config"]})
    rows = result["rows"]
    if not args.no_store:  # first: quick, and the budget below only limits the decode presets
        for p in presets:
            try:
                bench_store(p, gen, bw, rows, log)
            except Exception as e:
                log({"error": "store " + p, "what": repr(e)[:500]})
        save()
    if not args.no_table:
        bench_sdpa(shapes, gen, bw, rows, log)
        save()
        for p in presets:
            if time.time() - t_start > args.budget:
                log({"skipped_for_budget": p})
                continue
            try:
                err = check_preset(p, gen)
                result.setdefault("check_rel_err", {})[p] = err
                log({"check": p, "decode_vs_fp64_dequant_rel_err": err})
            except Exception as e:
                log({"error": p, "what": repr(e)[:500]})
            runs: dict = {}  # label -> one list of rows (a row a shape) a round
            for _ in range(args.rounds):  # every kernel once a round, in turn: a clock drift shows as spread
                for spec in kernel_specs:
                    kcfg = kernel_config(spec, cfg)
                    label = p if spec == "auto" else f"{p}+{spec}"
                    r: list = []
                    try:
                        bench_preset(p, shapes, kcfg, gen, bw, r, log if args.rounds == 1 else (lambda x: None),
                                     label=label)
                    except Exception as e:
                        log({"error": f"{p}+{kcfg.decode_kernel}", "what": repr(e)[:500]})
                        continue
                    runs.setdefault(label, []).append(r)
            for rs in runs.values():
                for row in median_rows(rs) if args.rounds > 1 else rs[0]:
                    rows.append(row)
                    if args.rounds > 1:
                        log(row)
            save()
    for p in [p for p in args.batch_invariant.split(",") if p]:
        bi = dataclasses.replace(cfg, batch_invariant=True)
        try:
            bench_preset(p, shapes, bi, gen, bw, rows, log, label=f"{p}+bi")
        except Exception as e:
            log({"error": f"{p}+bi", "what": repr(e)[:500]})
        save()
    if args.vllm:
        try:
            rows.extend(vllm_baseline_rows(shapes, gen, bw))
        except Exception as e:  # recorded, never replaced by numbers
            log({"error": "vllm baselines", "what": repr(e)[:2000]})
        save()
    sdpa = {(x["batch"], x["context"]): x["seconds"] for x in rows if x["kind"] == "sdpa_bf16"}
    print(f"\n{result['device']}  torch {result['torch']}  triton {result['triton']}  "
          f"copy {result['copy_gbps']:.0f} GB/s  config {result['config']}")
    print(table(rows, sdpa))
    save()


if __name__ == "__main__":
    sys.exit(main())

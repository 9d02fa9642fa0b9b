#!/usr/bin/env python3
"""On a CPU, the plugin's three implementations of one layer call side by side: the Triton kernels
under the interpreter (TRITON_INTERPRET=1, set here), the NumPy reference path, and the torch path
(what store_impl / attention_impl "auto" picks on a CPU).  Prints one table of median wall times.

    python -m benchmarks.micro.cpu_paths [--preset tq3] [--head-size 64] [--context 100] [--repeats 5]

Shape: 2 sequences, 2 KV heads x 2 query heads each, block size 32; store of 4 tokens (a decode
step) and of 2 x context tokens (a prefill); decode attention over ``context`` tokens.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from turboquant import format as tqf  # noqa: E402
from turboquant import torch_impl as ti  # noqa: E402
from turboquant import triton_impl as tk  # noqa: E402
from turboquant.vllm_integration import reference_path as rp  # noqa: E402


def _median(fn, repeats: int) -> float:
    fn()  # warm-up (compiles / caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tq3")
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--context", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    d, h, bs, ctx = args.head_size, 2, 32, args.context
    fmt = tqf.LayerFormat(tqf.get_preset(args.preset), d)
    params = tk.KernelParams.build(fmt, torch.device("cpu"))
    tparams = ti.TorchParams.build(fmt, "cpu")
    nbk = -(-ctx // bs)
    cache = torch.zeros(fmt.cache_shape(2 * nbk + 1, bs, h), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(2 * ctx, h, d, generator=g), torch.randn(2 * ctx, h, d, generator=g)
    slots = torch.arange(2 * ctx)
    bt = torch.arange(2 * nbk).reshape(2, nbk).to(torch.int32)
    sl = torch.tensor([ctx, ctx - 10], dtype=torch.int32)
    q = torch.randn(2, 2 * h, d, generator=g).to(torch.bfloat16)
    qsl = torch.tensor([0, 1, 2], dtype=torch.int32)
    out = torch.empty_like(q)
    rows = [
        ("store, 4 tokens", lambda: tk.store_kv(k[:4], v[:4], cache, slots[:4], params),
         lambda: rp.store_kv(k[:4], v[:4], cache, slots[:4], fmt),
         lambda: ti.store_kv(k[:4], v[:4], cache, slots[:4], tparams)),
        (f"store, {2 * ctx} tokens", lambda: tk.store_kv(k, v, cache, slots, params),
         lambda: rp.store_kv(k, v, cache, slots, fmt), lambda: ti.store_kv(k, v, cache, slots, tparams)),
        (f"decode, 2 x {ctx} tokens", lambda: tk.decode_attention(q, cache, bt, sl, params, out=out),
         lambda: rp.paged_attention(q, cache, bt, sl, qsl, fmt, None, out),
         lambda: ti.decode_attention(q, cache, bt, sl, tparams, out=out)),
    ]
    print(f"{args.preset}, head size {d}, torch {torch.__version__}, {os.cpu_count()} CPU cores; "
          f"median of {args.repeats}")
    print("| call | Triton interpreter (ms) | NumPy reference (ms) | torch (ms) | interpreter / reference |")
    print("|---|--:|--:|--:|--:|")
    for name, tri, ref, tor in rows:
        a, b, c = _median(tri, args.repeats), _median(ref, args.repeats), _median(tor, args.repeats)
        print(f"| {name} | {1e3 * a:.1f} | {1e3 * b:.1f} | {1e3 * c:.2f} | {a / b:.0f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

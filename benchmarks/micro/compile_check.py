"""Compile every kernel launch of the public API for a GPU target without a GPU
(sm_90 by default) and report registers / spills / shared memory from ptxas.

Catches front-end and lowering errors before spending device time, and gives
the resource numbers (registers, spills, shared memory) worth reading before any timing.  Needs Triton with its
bundled ptxas; no CUDA driver.  Do NOT set TRITON_INTERPRET.

    python -m benchmarks.micro.compile_check [--presets tq3,tq4] [--arch 90]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

CALLS = []
_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.uint8: "u8",
          torch.int32: "i32", torch.int64: "i64", torch.int16: "i16"}


def _record(self, *args, grid, warmup, **kwargs):
    CALLS.append((self, args, kwargs))


def _sig(fn: JITFunction, args, kwargs):
    sig, const = {}, {}
    names = fn.arg_names
    vals = dict(zip(names, args))
    vals.update({k: v for k, v in kwargs.items() if k in names})
    for i, name in enumerate(names):
        v = vals[name]
        p = fn.params[i]
        if p.is_constexpr:
            sig[name] = "constexpr"
            const[name] = v
        elif isinstance(v, torch.Tensor):
            sig[name] = "*" + _TYPES[v.dtype]
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, int):
            sig[name] = "i32" if -(2**31) <= v < 2**31 else "i64"
        elif isinstance(v, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{name}: {type(v)}")
    opts = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages")}
    return sig, const, opts


def compile_calls(arch: int):
    target = GPUTarget("cuda", arch, 32)
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    seen, rows = set(), []
    for fn, args, kwargs in CALLS:
        sig, const, opts = _sig(fn, args, kwargs)
        key = (fn.__name__, tuple(sorted(sig.items())), tuple(sorted((k, str(v)) for k, v in const.items())),
               tuple(sorted(opts.items())))
        if key in seen:
            continue
        seen.add(key)
        t0 = time.time()
        k = triton.compile(ASTSource(fn, sig, const), target=target, options=opts)
        dt = time.time() - t0
        cuobjdump = os.path.join(os.path.dirname(ptxas), "cuobjdump")
        with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
            f.write(k.asm["cubin"])
        r = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True)
        os.unlink(f.name)
        info = r.stdout + r.stderr
        if os.environ.get("SHOW_PTXAS"):
            print(info)
        regs = re.search(r"REG:(\d+)", info)
        stack = re.search(r"STACK:(\d+)", info)
        spill = re.findall(r"LOCAL:(\d+)", info)
        rows.append((fn.__name__, const.get("BT", ""), opts, int(regs[1]) if regs else -1,
                     sum(int(x) for x in spill), int(stack[1]) if stack else -1, k.metadata.shared, dt))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--configs", action="store_true", help="also the benchmark sweep configs (tq3)")
    ap.add_argument("--head-size", type=int, default=128)
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET")
    import turboquant.triton_impl.store as st
    from turboquant import format as tqf
    from turboquant.triton_impl import (
        AttnConfig,
        KernelParams,
        decode_attention,
        dequantize_slots,
        paged_attention,
        store_kv,
    )

    st.STORE_BT = 16

    JITFunction.run = _record
    presets = [p for p in args.presets.split(",") if p] or list(tqf.PRESETS)
    for name in presets:
        d = args.head_size
        fmt = tqf.LayerFormat(tqf.get_preset(name), d)
        p = KernelParams.build(fmt, "cpu")
        cache = torch.zeros(fmt.cache_shape(64, 16, 8), dtype=torch.uint8)
        kv = torch.zeros((40, 8, d), dtype=torch.bfloat16)
        store_kv(kv, kv, cache, torch.arange(40), p)
        q = torch.zeros((4, 32, d), dtype=torch.bfloat16)
        bt = torch.zeros((4, 16), dtype=torch.int32)
        sl = torch.full((4,), 200, dtype=torch.int32)
        decode_attention(q, cache, bt, sl, p, config=AttnConfig())
        paged_attention(q, cache, bt, sl, torch.arange(5, dtype=torch.int32), p, config=AttnConfig())
        dequantize_slots(cache, torch.arange(10), p)
    if args.configs:
        from .bench_decode import SWEEP

        fmt = tqf.LayerFormat(tqf.get_preset("tq3"), 128)
        p = KernelParams.build(fmt, "cpu")
        cache = torch.zeros(fmt.cache_shape(64, 16, 8), dtype=torch.uint8)
        for cfg in SWEEP:
            decode_attention(torch.zeros((4, 32, 128), dtype=torch.bfloat16), cache,
                             torch.zeros((4, 16), dtype=torch.int32), torch.full((4,), 200, dtype=torch.int32), p,
                             config=cfg)
    rows = compile_calls(args.arch)
    print(f"{'kernel':<24} {'BT':>4} {'opts':<34} {'regs':>5} {'spill B':>8} {'stack':>6} {'smem':>7} {'compile s':>9}")
    for r in rows:
        print(f"{r[0]:<24} {str(r[1]):>4} {str(r[2]):<34} {r[3]:>5} {r[4]:>8} {r[5]:>6} {r[6]:>7} {r[7]:>9.1f}")


if __name__ == "__main__":
    main()

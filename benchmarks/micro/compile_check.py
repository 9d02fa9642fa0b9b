"""Compile every kernel launch of the public API for a GPU target without a GPU
(sm_90 by default) and report registers / spills / shared memory from ptxas, the SASS instruction
count and the length of the longest loop (for the mma decode kernel: one 16-token tile).

Catches front-end and lowering errors before spending device time, and gives
the resource numbers (registers, spills, shared memory) worth reading before any timing.  Needs Triton with its
bundled ptxas; no CUDA driver.  Do NOT set TRITON_INTERPRET.

    python -m benchmarks.micro.compile_check [--presets tq3,tq4] [--arch 90]
    python -m benchmarks.micro.compile_check --presets k4v3 --kernels _decode_mma_kernel --mma k1,t0k1
    python -m benchmarks.micro.compile_check --presets tq3 --kernels _store_mse_kernel \
        --store mse:128:8:prefetch+lean+search+r128

``SASS_DIR=dir`` writes each launch's SASS listing there (KERNEL-VARIANT.sass).
``--mma``: also the mma decode kernel with these AttnConfig variants (bench_decode's ``mma@`` specs
without the prefix); ``--store``: also store_mse with these configs (bench_prefill's --store-configs).
Each row names its variant (PRESET alone: the launches of the public API's defaults).
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
from triton.experimental.gluon._runtime import GluonASTSource, GluonJITFunction
from triton.runtime.jit import JITFunction

CALLS = []
LABEL = ["-"]  # the variant the recorded launches belong to: PRESET (its defaults) or PRESET:SPEC
_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.uint8: "u8",
          torch.int32: "i32", torch.int64: "i64", torch.int16: "i16"}


def _record(self, *args, grid, warmup, **kwargs):
    CALLS.append((self, args, kwargs, LABEL[0]))


def _sig(fn: JITFunction, args, kwargs):
    """(signature, constexprs, options, attrs) of one recorded launch; attrs mark the arguments the JIT
    would specialize as divisible by 16 (tensor pointers, integers that are multiples of 16), so
    that vectorization decisions match a real launch."""
    sig, const, attrs = {}, {}, {}
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
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, int):
            sig[name] = "i32" if -(2**31) <= v < 2**31 else "i64"
            if v % 16 == 0 and not p.do_not_specialize:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{name}: {type(v)}")
    opts = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages", "maxnreg")}
    return sig, const, opts, attrs


def _loop_length(sass: str) -> int:
    """Instructions in the longest loop of a SASS listing (a backward branch and its target)."""
    addr = [(int(m[1], 16), m[2]) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", sass)]
    best = 0
    for a, text in addr:
        m = re.search(r"BRA\s+(?:`\(\S+\)\s*)?0x([0-9a-f]+)", text)
        if m and int(m[1], 16) < a:
            best = max(best, (a - int(m[1], 16)) // 16 + 1)
    return best


def _loop_paths(sass: str) -> str:
    """Instructions one iteration executes, for each loop of 100 or more instructions in address order
    ("a/b"): the longest path from its head to its back edge, each forward conditional branch taken or not,
    except a branch over a block of 16 or more FMULs (the mma decode kernel's accumulator rescale, rare after
    the first tiles), which is always taken.  Where a loop picks one of several equal blocks (a ring stage
    by branches), that is one of them."""
    ins = [(int(m[1], 16), m[2]) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", sass)]
    at = {a: i for i, (a, _) in enumerate(ins)}
    loops = [(at[int(m[1], 16)], at[a]) for a, text in ins
             if (m := re.search(r"BRA\s+(?:`\(\S+\)\s*)?0x([0-9a-f]+)", text)) and int(m[1], 16) < a]
    return "/".join(str(_path(ins, at, i0, i1)) for i0, i1 in sorted(loops) if i1 - i0 >= 99) or "-"


def _path(ins, at, i0, i1) -> int:
    """_loop_paths's count for the loop from instruction i0 to its back edge i1 (a pass from the back)."""
    best = [0] * (i1 + 2)
    best[i1] = 1
    for i in range(i1 - 1, i0 - 1, -1):
        text = ins[i][1]
        m = re.search(r"BRA\s+(?:`\(\S+\)\s*)?0x([0-9a-f]+)", text)
        tgt = at.get(int(m[1], 16)) if m else None
        if tgt is None or not i < tgt <= i1:  # not a forward branch inside the loop: fall through
            best[i] = 1 + best[i + 1]
        elif not text.lstrip().startswith("@"):  # unconditional
            best[i] = 1 + best[tgt]
        elif sum("FMUL" in t for _, t in ins[i + 1:tgt]) >= 16:  # the rare rescale: skipped
            best[i] = 1 + best[tgt]
        else:
            best[i] = 1 + max(best[tgt], best[i + 1])
    return best[i0]


def compile_calls(arch: int, only: tuple[str, ...] = ()):
    target = GPUTarget("cuda", arch, 32)
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    seen, rows = set(), []
    for fn, args, kwargs, label in CALLS:
        if only and fn.__name__ not in only:
            continue
        sig, const, opts, attrs = _sig(fn, args, kwargs)
        key = (fn.__name__, label, tuple(sorted(sig.items())), tuple(sorted((k, str(v)) for k, v in const.items())),
               tuple(sorted(opts.items())))
        if key in seen:
            continue
        seen.add(key)
        t0 = time.time()
        src = (GluonASTSource if isinstance(fn, GluonJITFunction) else ASTSource)(fn, sig, const, attrs)
        k = triton.compile(src, target=target, options=opts)
        dt = time.time() - t0
        cuobjdump = os.path.join(os.path.dirname(ptxas), "cuobjdump")
        with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
            f.write(k.asm["cubin"])
        r = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True)
        sass = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True).stdout
        os.unlink(f.name)
        info = r.stdout + r.stderr
        if os.environ.get("SHOW_PTXAS"):
            print(info)
        if os.environ.get("SASS_DIR"):  # the listing of each compiled launch, for reading the loop
            with open(os.path.join(os.environ["SASS_DIR"], f"{fn.__name__}-{label}.sass"), "w") as out:
                out.write(sass)
        regs = re.search(r"REG:(\d+)", info)
        stack = re.search(r"STACK:(\d+)", info)
        spill = re.findall(r"LOCAL:(\d+)", info)
        rows.append((fn.__name__, const.get("BT", const.get("BR", "")), opts, int(regs[1]) if regs else -1,
                     sum(int(x) for x in spill), int(stack[1]) if stack else -1, k.metadata.shared,
                     len(re.findall(r"/\*[0-9a-f]{4,}\*/", sass)), _loop_length(sass), dt, label, _loop_paths(sass)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--configs", action="store_true", help="also the benchmark sweep configs (tq3)")
    ap.add_argument("--head-size", type=int, default=128)
    ap.add_argument("--kernels", default="", help="compile only these kernels (comma-separated names)")
    ap.add_argument("--mma", default="", metavar="SPECS",
                    help="also the mma decode kernel with these variants: bench_decode's mma@ specs without the "
                         "prefix, comma-separated (e.g. k1,t0,p1)")
    ap.add_argument("--store", default="", metavar="CONFIGS",
                    help="also store_mse with these configs (bench_prefill's --store-configs, mse ones)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET")
    from turboquant import format as tqf
    from turboquant.triton_impl import (
        AttnConfig,
        KernelParams,
        decode_attention,
        dequantize_slots,
        paged_attention,
        store_kv,
        store_wg,
    )
    from turboquant.triton_impl.decode import mma_options
    from turboquant.triton_impl.decode_mma import NO_CUDA, decode_attention_mma, mma_decode_unsupported
    from turboquant.triton_impl.query import mma_query_rotation, rotate_query
    from turboquant.triton_impl.store_mse import SMALL_ROWS

    from .bench_decode import kernel_config
    from .bench_prefill import parse_store_configs, store_options


    JITFunction.run = _record
    presets = [p for p in args.presets.split(",") if p] or list(tqf.PRESETS)
    store_configs = [c for c in parse_store_configs(args.store) if c[0] == "mse"] if args.store else []
    for name in presets:
        d = args.head_size
        LABEL[0] = name
        fmt = tqf.LayerFormat(tqf.get_preset(name), d)
        p = KernelParams.build(fmt, "cpu")
        cache = torch.zeros(fmt.cache_shape(64, 16, 8), dtype=torch.uint8)
        # the store of a decode step (store_mse.SMALL_LAUNCH, labelled "decode-step") and of a prompt
        kv = torch.zeros((40, 8, d), dtype=torch.bfloat16)
        LABEL[0] = f"{name}:decode-step"
        store_kv(kv, kv, cache, torch.arange(40), p)
        LABEL[0] = name
        prompt = torch.zeros((SMALL_ROWS // 8 + 1, 8, d), dtype=torch.bfloat16)
        store_kv(prompt, prompt, cache, torch.arange(prompt.shape[0]), p)
        q = torch.zeros((4, 32, d), dtype=torch.bfloat16)
        bt = torch.zeros((4, 16), dtype=torch.int32)
        sl = torch.full((4,), 200, dtype=torch.int32)
        decode_attention(q, cache, bt, sl, p, config=AttnConfig())
        if mma_decode_unsupported(p, torch.bfloat16, torch.device("cpu"), 32, 8, 16) == NO_CUDA:
            # the Gluon decode kernel, launched as decode_attention does on a GPU with mma.sync
            decode_attention_mma(rotate_query(q, p), cache, bt, sl, torch.empty_like(q), p, num_q_heads=32,
                                 sm_scale=d ** -0.5, num_splits=4, verify_ring=False)  # recorded, not run
            for spec in [x for x in args.mma.split(",") if x]:
                cfg = kernel_config(f"mma@{spec}", AttnConfig())
                LABEL[0] = f"{name}:{spec}"
                try:
                    qbuf = rotate_query(q, p, few_rows=True,
                                        rotation=mma_query_rotation(cfg.mma_query_rotation, p, q.dtype))
                    decode_attention_mma(qbuf, cache, bt, sl, torch.empty_like(q), p, num_q_heads=32,
                                         sm_scale=d ** -0.5, num_splits=4, **mma_options(cfg),
                                         verify_ring=False)  # launches are recorded here, not run
                except ValueError as e:
                    print(f"{name} mma@{spec}: not compiled: {e}")
                LABEL[0] = name
        for _, br, warps, opts in store_configs:
            LABEL[0] = f"{name}:{br}:{warps}:{'+'.join(opts) or '-'}"
            if "wg" in opts:  # store_wg's Gluon kernel, launched as store_mse does on a Hopper GPU (recorded)
                if store_wg.why_not(kv, kv, d, p.meta["K0_BITS"], p.meta["V0_BITS"], False) == store_wg.NO_CUDA:
                    store_wg.launch(kv, kv, cache, torch.arange(40), p, programs_per_sm=2, sm=132,
                                    search="search" in opts, balance="balance" in opts)
                LABEL[0] = name
                continue
            store_kv(kv, kv, cache, torch.arange(40), p, kernel="mse", block_tokens=br, num_warps=warps,
                     **store_options(opts))
            LABEL[0] = name
        paged_attention(q, cache, bt, sl, torch.arange(5, dtype=torch.int32), p, config=AttnConfig())
        dequantize_slots(cache, torch.arange(10), p)
    if args.configs:
        from .bench_decode import SWEEP

        LABEL[0] = "tq3:sweep"
        fmt = tqf.LayerFormat(tqf.get_preset("tq3"), 128)
        p = KernelParams.build(fmt, "cpu")
        cache = torch.zeros(fmt.cache_shape(64, 16, 8), dtype=torch.uint8)
        for cfg in SWEEP:
            decode_attention(torch.zeros((4, 32, 128), dtype=torch.bfloat16), cache,
                             torch.zeros((4, 16), dtype=torch.int32), torch.full((4,), 200, dtype=torch.int32), p,
                             config=cfg)
    rows = compile_calls(args.arch, tuple(k for k in args.kernels.split(",") if k))
    print(f"{'kernel':<24} {'BT':>4} {'opts':<34} {'variant':<34} {'regs':>5} {'spill B':>8} {'stack':>6} {'smem':>7} "
          f"{'SASS':>6} {'loop':>5} {'compile s':>9}")
    for r in rows:
        print(f"{r[0]:<24} {str(r[1]):>4} {str(r[2]).replace(' ', ''):<34} {r[10]:<34} {r[3]:>5} {r[4]:>8} {r[5]:>6} "
              f"{r[6]:>7} {r[7]:>6} {r[8]:>5} {r[9]:>9.1f}")
    print("SASS: instructions in the kernel; loop: instructions in its longest loop (for _decode_mma_kernel one "
          "16-token tile of one KV head)")
    steps = [r for r in rows if r[0] == "_decode_mma_kernel"]
    if steps:  # what an iteration executes: the static loop counts the ring stages' branches and the rescale
        print("executed a step of _decode_mma_kernel's tile loops (one or two tiles; the rare rescale skipped; "
              "the lean loop's whole tiles, then its last): "
              + ", ".join(f"{r[10]} {r[11]}" for r in steps))


if __name__ == "__main__":
    main()

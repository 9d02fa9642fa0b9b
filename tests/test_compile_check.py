"""The GPU kernels compiled for sm_90 on this machine, without a GPU (benchmarks/micro/compile_check.py
in a subprocess: Gluon kernels cannot be compiled by a process running the Triton interpreter).

For the mma decode kernel this is the check CI can make: it compiles with this Triton, every operand
layout conversion in it is trivial (``convert_layout(..., assert_trivial=True)`` fails the compile
otherwise), its shared memory is exactly its tables and tile ring (what decode_attention_mma checks at
launch), and nothing spills."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ptxas = Path(__import__("triton").__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not ptxas.exists(), reason="this Triton has no bundled ptxas")
def test_mma_decode_kernel_compiles_for_sm90():
    """The defaults: tq3's pair tables (16 KB); k4v3's keys by byte permutes beside its wide value table with the
    8 KB ring (16 KB) and tq4's keys and values by byte permutes with the ring alone (8 KB), all three at the
    152-register cap (tq3's from resolve_maxnreg); each with the shared memory of the layout resolve_layout
    gives."""
    from turboquant import format as tqf
    from turboquant.triton_impl import KernelParams
    from turboquant.triton_impl.decode_mma import mma_shared_bytes, resolve_layout

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "benchmarks.micro.compile_check", "--presets", "tq3,k4v3,tq4",
                        "--kernels", "_decode_mma_kernel"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("_decode_mma_kernel")]
    assert len(rows) == 3, r.stdout
    for row in rows:
        regs, spill, stack, smem, loop = int(row[-7]), int(row[-6]), int(row[-5]), int(row[-4]), int(row[-2])
        p = KernelParams.build(tqf.LayerFormat(tqf.get_preset(row[-8]), 128), "cpu")
        key, _, table, ring, cap = resolve_layout(p)
        assert (row[-8], key, table) in {("tq3", "pair", "pair"), ("k4v3", "prmt", "wide"), ("tq4", "prmt", "prmt")}
        assert cap == 152 and f"'maxnreg':{cap}" in "".join(row), row
        assert smem == mma_shared_bytes(p, ring, table, key) == (8192 if table == "prmt" else 16384), row
        assert spill == 0 and stack == 0, row
        assert 0 < regs <= cap and loop > 0, row


@pytest.mark.skipif(not ptxas.exists(), reason="this Triton has no bundled ptxas")
def test_prepared_kernel_variants_compile_for_sm90():
    """The variants prepared for a GPU A/B (docs/kernel-notes.md): the store's one launch for keys and values
    (kv), the single-code key table (k1), the tensor-core query rotation (q1), the 4 KB ring in a second
    allocation under a 120-register cap (r120b4096: 17 programs an SM), the output rotation on tensor cores
    (o1), the block-table pages a step ahead (a1), k4v3's wide value table (v1: 16 KB, as the default), tq4's
    values on the single-code table (v2 at a 152-register cap: 10 KB), the merge with the inverse rotation
    in its programs (o2), 4-bit keys by byte permutes (k2), the programmatic dependent launches (g1), the store's
    register cap
    (r128), its small-row launch (16 rows x 4 warps, 4 column blocks, kv) and store_wg's Gluon store (wg)
    compile with this Triton, with the shared memory their launchers expect and no spills to local memory."""
    from benchmarks.micro.bench_decode import kernel_config
    from turboquant import format as tqf
    from turboquant.triton_impl import AttnConfig, KernelParams
    from turboquant.triton_impl.decode import mma_options
    from turboquant.triton_impl.decode_mma import RING_BYTES, TABLE_BYTES, mma_shared_bytes, resolve_layout

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "benchmarks.micro.compile_check", "--presets", "tq3,k4v3,tq4",
                        "--kernels", "_decode_mma_kernel,_store_mse_kernel,_rotate_query_tc_kernel,"
                        "_rotate_columns_kernel,_store_mse_kv_kernel,_store_wg_kernel,_merge_rotate_kernel", "--mma",
                        "k1,t0k1,q1,r120b4096,o1,o2,a1,v1,r152v2,k2,g1",
                        "--store", "mse:128:8:prefetch+lean+search+r128,mse:64:4:prefetch+lean+search,"
                        "mse:64:4:prefetch+lean+search+kv,mse:16:4:prefetch+lean+search+kv+c4+p5,"
                        "mse:64:4:prefetch+lean+search+wg"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    rows = {line.split()[-8]: line.split() for line in r.stdout.splitlines()
            if line.startswith(("_decode_mma_kernel", "_store_mse_kernel"))}
    want = {"k4v3:k1", "k4v3:t0k1", "tq4:t0k1", "tq3:q1", "tq3:r120b4096", "k4v3:r120b4096", "tq3:a1", "k4v3:a1",
            "tq4:a1", "k4v3:v1", "tq4:r152v2", "k4v3:k2", "tq4:k2", "tq3:g1", "k4v3:g1", "tq4:g1",
            "tq3:128:8:prefetch+lean+search+r128", "k4v3:128:8:prefetch+lean+search+r128"}
    assert want <= set(rows), r.stdout
    tc = [line.split() for line in r.stdout.splitlines() if line.startswith("_rotate_query_tc_kernel")]
    assert {row[-8] for row in tc} >= {"tq3:q1", "k4v3:q1", "tq4:q1"}, r.stdout  # (and where q1 is the default)
    assert all(int(row[-6]) == 0 for row in tc), tc
    cols = [line.split() for line in r.stdout.splitlines() if line.startswith("_rotate_columns_kernel")]
    assert {row[-8] for row in cols} >= {"tq3:o1", "k4v3:o1", "tq4:o1"}, r.stdout  # the bf16x3 output rotation
    assert all(int(row[-6]) == 0 for row in cols), cols
    # store_wg's Gluon store (variant "wg"): Pi^T's two fp16 parts its only shared memory (64 KB: 3 programs an
    # SM), no spills; the merge with the inverse rotation in its programs (o2): no spills
    wg = [line.split() for line in r.stdout.splitlines() if line.startswith("_store_wg_kernel")]
    assert {row[-8] for row in wg} == {f"{p}:64:4:prefetch+lean+search+wg" for p in ("tq3", "k4v3", "tq4")}, r.stdout
    assert all(int(row[-6]) == int(row[-5]) == 0 and int(row[-4]) == 2 * 2 * 128 * 128 for row in wg), wg
    # and registers for store_wg.PROGRAMS_PER_SM programs of 4 warps an SM (a sub-partition's registers at a time:
    # 168 a thread for 3)
    from turboquant.triton_impl import device, store_wg

    assert all(device.blocks_by_registers(4, int(row[-7])) >= store_wg.PROGRAMS_PER_SM for row in wg), wg
    fused = [line.split() for line in r.stdout.splitlines() if line.startswith("_merge_rotate_kernel")]
    assert {row[-8] for row in fused} >= {"tq3:o2", "k4v3:o2", "tq4:o2"}, r.stdout
    assert all(int(row[-6]) == int(row[-5]) == 0 for row in fused), fused
    assert "tq3 mma@k1: not compiled: mma_key_table='single' is not supported" in r.stdout
    assert "tq4 mma@r120b4096: not compiled: mma_ring_bytes=4096 holds 1 tile(s)" in r.stdout
    assert "tq3 mma@k2: not compiled: mma_key_table='prmt' is not supported" in r.stdout
    # keys and values in one store launch ("kv", the default: the preset's own label is a prompt's store, its
    # "decode-step" a decode step's, store_mse.SMALL_LAUNCH): no spills, and no more shared memory than one
    # tensor's launch (the two-launch variant without "kv")
    kv = {line.split()[-8]: line.split() for line in r.stdout.splitlines() if line.startswith("_store_mse_kv_kernel")}
    one = {line.split()[-8]: line.split() for line in r.stdout.splitlines() if line.startswith("_store_mse_kernel")}
    assert set(kv) == {f"{p}{c}" for p in ("tq3", "k4v3", "tq4")
                       for c in ("", ":64:4:prefetch+lean+search+kv", ":16:4:prefetch+lean+search+kv+c4+p5",
                                 ":decode-step")}, r.stdout
    for label, row in kv.items():
        preset = label.split(":")[0]
        smem, one_smem = int(row[-4]), int(one[f"{preset}:64:4:prefetch+lean+search"][-4])
        assert int(row[-6]) == 0, row
        # the same shared memory as one tensor's launch; a quarter of Pi's columns at 16 rows: less
        assert smem == one_smem if ":64:4:" in label or label == preset else smem < one_smem // 2, (row, one)
    for preset in ("tq3", "k4v3", "tq4"):  # the defaults are these configs' kernels (registers .. shared memory;
        # the instruction counts differ by the row count's divisibility, which Triton specializes on)
        assert kv[preset][-7:-3] == kv[f"{preset}:64:4:prefetch+lean+search+kv"][-7:-3]
        assert kv[f"{preset}:decode-step"][-7:-3] == kv[f"{preset}:16:4:prefetch+lean+search+kv+c4+p5"][-7:-3]
    for label in want:
        row = rows[label]
        regs, spill, stack, smem = int(row[-7]), int(row[-6]), int(row[-5]), int(row[-4])
        cap = int(re.search(r"'maxnreg':(\d+)", " ".join(row))[1]) if "maxnreg" in " ".join(row) else 255
        assert spill == 0 and 0 < regs <= cap, row
        if label.endswith("v2"):
            assert stack == 0, row
        if ":128:8:" in label:
            assert smem > 0, row
            continue
        # the decode kernel's shared memory: the tables and ring of the layout its options resolve to
        preset, spec = label.split(":")
        cfg = kernel_config(f"mma@{spec}", AttnConfig())
        p = KernelParams.build(tqf.LayerFormat(tqf.get_preset(preset), 128), "cpu")
        key, _, table, ring, _ = resolve_layout(p, **mma_options(cfg))
        assert smem == mma_shared_bytes(p, ring, table, key), row
        if spec.endswith("b4096"):
            assert smem == TABLE_BYTES + 4096 and regs <= 120, row
        if table == "single":  # tq4's values on the single-code table beside its keys' (t0k1, v2)
            assert smem == 2048 + RING_BYTES, row
        if preset == "tq4" and key == "prmt":  # keys and values by byte permutes (tq4's default): the ring alone
            assert smem == RING_BYTES, row


def _listing(body, head=0x100):
    """A SASS-like listing (cuobjdump's address comments): one MOV, then ``body`` from address ``head``, whose
    {B}, {J}, {K} are the addresses of its instructions 105, 107, 124 and {H} the head."""
    at = {"B": head + 16 * 105, "J": head + 16 * 107, "K": head + 16 * 124, "H": head}
    targets = {k: hex(v) for k, v in at.items()}
    lines = ["        /*0000*/                   MOV R0, RZ ;"]
    for i, text in enumerate(body):
        lines.append(f"        /*{head + 16 * i:04x}*/                   {text.format(**targets)} ;")
    return "\n".join(lines)


def test_loop_paths_count_what_an_iteration_executes():
    """compile_check's executed-instructions count (the numbers the kernel notes compare options by): of a
    loop, the longer of two blocks a branch chooses between, never the block a branch skips when it holds 16
    or more FMULs (the accumulator's rare rescale), and nothing of a loop under 100 instructions."""
    from benchmarks.micro.compile_check import _loop_paths

    body = (["IADD3 R1, R1, 0x1, RZ"] * 100  # straight-line work: 100
            + ["@P0 BRA {B}"] + ["IADD3 R2, R2, 0x1, RZ"] * 3 + ["BRA {J}"]  # block A: branch + 3 + jump = 5
            + ["IADD3 R3, R3, 0x1, RZ"] * 2  # block B (at B): 2
            + ["@!P1 BRA {K}"] + ["FMUL R4, R4, R5"] * 16  # at J: the rescale branch, skipped: 1
            + ["IADD3 R6, R6, 0x1, RZ", "@P2 BRA {H}"])  # at K: 1 + the back edge 1
    assert _loop_paths(_listing(body)) == str(100 + 5 + 1 + 1 + 1)
    # with 15 FMULs the block is ordinary work: the branch may fall into it
    fifteen = body[:108] + ["IADD3 R7, R7, 0x1, RZ"] + body[109:]
    assert _loop_paths(_listing(fifteen)) == str(100 + 5 + 1 + 16 + 1 + 1)
    assert _loop_paths(_listing(["IADD3 R1, R1, 0x1, RZ"] * 20 + ["@P2 BRA {H}"])) == "-"  # under 100

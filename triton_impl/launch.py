"""Launch configuration shared by decode and extend: split counts (shape-only,
CUDA-graph safe), tile sizes and the split + merge launches."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import triton

from turboquant import format as tqf

from .attn_core import _merge_kernel, _split_kernel, acc_width
from .decode_mma import KEY_TABLES as MMA_KEY_TABLES
from .decode_mma import (
    MAXNREG,
    MMA_RING_BYTES,
    PRMT_RING_BYTES,
    RING_BYTES,
    TABLE_BYTES,
    WIDE_RING_BYTES,
    wide_ring_bytes,
)
from .decode_mma import SPLIT_RULES as MMA_SPLIT_RULES
from .decode_mma import STEP_TILES as MMA_STEP_TILES
from .decode_mma import VALUE_TABLES as MMA_VALUE_TABLES
from .device import sm_count
from .merge import merge_splits
from .params import MIN_DOT, KernelParams, next_pow2
from .query import MMA_QUERY_ROTATIONS, query_layout
from .rotate import OUTPUT_ROTATIONS

MERGE_BH = 16


@dataclass(frozen=True)
class AttnConfig:
    """Tunables of the split kernel (benchmarks sweep these)."""

    block_tokens: int = 128  # BT: slots per inner-loop tile (best of the v1 sweep on H200)
    num_warps: int = 4
    num_stages: int = 2
    programs_per_sm: int = 4  # split target: num_seqs*H*S >= programs_per_sm * SMs
    min_chunk: int = 256  # fewest tokens per split
    max_splits: int = 256  # most splits of one sequence's tokens (each adds a partial state to merge)
    lookup: int = 0  # centroid lookup: 0 gather loads, 1 select tree, 2 cubic (attn_core.centroid_values)
    # batch-invariant mode: splits of a fixed bi_chunk tokens whatever the batch, combined in split
    # order by one formula; decode rows take the extend kernel; per-row value scales: a row's output
    # does not depend on the batch around it
    batch_invariant: bool = False
    bi_chunk: int = 2048  # tokens per split in batch-invariant mode (a multiple of block_tokens)
    # batch-invariant launches whose partial buffers (tokens x query heads x splits x acc width x 4 B)
    # fit in this many bytes run one program per split; larger ones walk a row's splits in one program
    # (same bits, less parallelism, no buffer growth with context)
    bi_parallel_bytes: int = 1 << 28
    # prefill / extend rows on the dense path (prefill.py) where it applies; False: the packed-tile
    # kernel for every row (extend.py)
    dense_prefill: bool = True
    # where the dense path's rotations run: "query" (q' = Pi q for the query rows, out = Pi^T o'),
    # "kv" (the decoded workspace rotated back, K = Pi^T K' and V = Pi^T V': plain q and no output
    # rotation), "auto" (per step: "kv" where it rotates fewer rows, i.e. cached tokens x KV heads <
    # query rows x query heads, as for a whole prompt under GQA).  "auto" is the default since the H200
    # measured it at or below "query" on every row (results/2026-12-04-h200-knobs-s10)
    dense_rotation: str = "auto"
    # decode kernel: "mma" (decode_mma.py: codes decoded into mma.sync operand registers, one warp per
    # program), "split" (attn_core._split_kernel), "auto": mma wherever decode_mma.mma_decode_unsupported
    # finds nothing against it
    decode_kernel: str = "auto"
    mma_programs_per_sm: int = 32  # split target of the mma decode kernel (one-warp programs)
    # register cap of the mma decode kernel (0: the compiler's choice, 154-156 with the shared table:
    # 12 one-warp programs an SM).  128 fits without spills since the shared pair table and lifts the
    # register limit to 16 (shared memory, 16 KB a program, then holds it at 13): 4-6 % faster at
    # 32 x 32k, within 3 % elsewhere (results/2026-12-04-h200-knobs-s10)
    mma_maxnreg: int = MAXNREG
    mma_ring_bytes: int = RING_BYTES  # shared memory of the mma decode kernel's cp.async tile ring
    # one pair table for keys and values where their codebooks coincide (tq3, tq4), twice the copies
    # (decode_mma.py; False: a table each, the layout before the tenth session)
    mma_shared_table: bool = True
    # tiles of 16 tokens per online-softmax step of the mma decode kernel: 2 halves the cross-lane
    # reductions per token (needs a ring of an even number >= 4 of the preset's tiles: tq3 / k4v3 at
    # the default ring, tq4 with mma_ring_bytes=24576); 0 (default): 2 where the ring allows it, else 1.
    # The H200 measured 2 5-6 % faster for tq3 at 8-32 x 32k and 1 x 128k, k4v3 -2 % to +1 %, tq4 at
    # 24 KB slower than 1 at 8 KB (results/2026-12-04-h200-s11/call1-p2-search)
    mma_step_tiles: int = 0
    # the mma decode kernel's key table: "pair" (two codes -> one fp16 pair word: one lookup a pair),
    # "single" (4-bit keys with their own table, k4v3 / tq4, whatever mma_shared_table says: 16 entries x 32
    # copies, two conflict-free lookups a pair instead of one that 8 lanes share a copy for; the same
    # words, so the same bits), "prmt" (4-bit keys of a symmetric codebook decoded in registers by byte permutes
    # of the magnitudes' fp16 bytes, decode_mma_operands._prmt_key_pairs: no key table read, the same values, so
    # the same bits) or "auto" (default, decode_mma.resolve_key_table): "prmt" where it applies and
    # mma_value_table and mma_ring_bytes are the defaults, else "single" for 4-bit keys (tq4's values then get a
    # table of their own whatever mma_shared_table says), else "pair". An H100 timed "prmt" with "auto"'s values
    # beside it at a 152-register cap 5-16 % faster than "single" for k4v3 and 12-19 % for tq4 at 32 x 32k,
    # 1 x 128k, 64 x 1k and 256 x 6k (results/2026-12-05-h100-s18/call3-decode-prmt); the H200 had timed "single"
    # 1.4-3.7 % faster than "pair" for k4v3 and 0.5-3.0 % for tq4 (results/2026-12-04-h200-s12/call1-kernels)
    mma_key_table: str = "auto"
    # the decode step's query rotation where the mma kernel serves it (default mode): "fma" (fp32 FMA dots
    # in K chunks, the oracle's arithmetic), "bf16x2" (one tensor-core product of bf16 parts a program,
    # bf16 queries of one-instance presets without QJL; the mma kernel rounds q' to fp16 anyway) or
    # "auto" (default): "bf16x2" where it applies, else "fma". The split kernel always gets "fma". The
    # H200 timed "bf16x2" faster at every shape and preset, one process beside vLLM's kernels: tq3
    # -3.6 % at 32 x 32k, -6.7 % at 1 x 128k, -14 % at 64 x 1k (results/2026-12-04-h200-s13/call12-kernels)
    mma_query_rotation: str = "auto"
    # the mma decode kernel's split count: "rounds" (default: the count whose busiest warp scheduler finishes first
    # by decode_mma.scheduler_round_splits's model of whole and partial rounds of the programs it holds at once),
    # "waves" (the fill count, mma_programs_per_sm programs an SM as choose_splits, moved to the nearest whole
    # number of waves of the programs an SM holds at once: decode_mma.whole_wave_splits) or "fill" (that count
    # unmoved). The H200, one run beside vLLM's kernels at eight shapes (results/2026-12-06-h200-s25/call9-kernels):
    # "rounds" against "waves" -1 to -13.5 % at 8 x 32k, 16 x 16k, 2 x 64k and 128 x 2k for tq3, k4v3 and tq4,
    # within 0.5 % at 1 x 128k, 64 x 1k and 256 x 6k (the run's spreads up to 1 %); at 32 x 32k its 12 splits (the count
    # of at most ROUND_MAX_TILES tiles a program) within 0.4 % of "waves"' 18 (call3-kernels). "waves" was the
    # default in the twenty-fourth session (-0.6 to -7 % against "fill")
    mma_split_rule: str = "rounds"
    # the mma decode step's inverse rotation (merge.merge_splits -> rotate._rotate_columns_kernel): "fma" (fp32
    # FMA dots over K chunks) or "bf16x3" (three bf16 tensor-core products: rotate.COLUMNS_PRECISIONS; its
    # error ~2^-16 of the row, under the bf16 output's rounding). The FMA kernel took 3.7-6.1 us on the
    # H200 (1 x 128k to 64 x 1k, results/2026-12-04-h200-s13/call12-kernels/trace.log). "bf16x3" timed
    # 0.2-1.9 % faster for tq3 and k4v3, -1.2 to +2.2 % for tq4 (results/2026-12-05-h200-s15/call14-decode):
    # within the runs' spread, so "fma" (the oracle's arithmetic) stays. "fused" (rotate.OUTPUT_ROTATIONS): the
    # rotation in the merge's own programs, all of a row's columns a program (merge._merge_rotate_kernel), one
    # launch instead of two; prepared in the sixteenth session, not yet timed
    mma_output_rotation: str = "fma"
    # the mma decode kernel loads the block-table pages of the tiles a step copies one step earlier, so that
    # no global load sits in the chain from the loop's top to its cp.async (the same addresses: the same
    # bits). The H200 timed it within -1 to +2 % of off for tq3 and k4v3, -1 to +5 % for tq4, and 0 to -2 % beside
    # k4v3's wide value table (results/2026-12-05-h200-s15/call14-decode): off
    mma_page_ahead: bool = False
    # the mma decode kernel's value table (decode_mma.VALUE_TABLES): "pair" (the layouts above), "wide" (k4v3: its
    # 3-bit value pair table with 32 copies, 8 KB, every lane its own bank, instead of 16 copies and two wavefronts
    # a lookup; beside the 4-bit keys' single-code table, with a ring of three tiles, mma_ring_bytes=6144: 16 KB a
    # program as the pair layout, one tile a softmax step), "single" (tq4: values on the keys' single-code table of
    # their shared codebook, two conflict-free lookups a pair instead of one that eight lanes share a copy for; the
    # 2 KB table in an allocation of its own after the 8 KB ring, 10 KB a program, verified on first use) or "auto"
    # (default, decode_mma.resolve_value_table): "wide" with its ring for k4v3, "single" at a 144-register cap for
    # tq4 (where mma_maxnreg is the default), "pair" elsewhere or where the other options leave them no room. The
    # H200 timed "wide" 2-14 % and "single" at 144 registers 0-9 % faster than the pair tables at 32 x 32k,
    # 8 x 32k, 1 x 128k, 64 x 1k and 256 x 6k (results/2026-12-05-h200-s15/call14-decode). The same words as
    # the pair layout's, so the bits of mma_step_tiles=1. Beside mma_key_table="prmt", "auto" gives k4v3 "wide" with
    # the default 8 KB ring (the key table's 2 KB freed: two tiles a step) and tq4 "prmt": its 4-bit values by
    # byte permutes too (decode_mma_operands._prmt_value_pairs), no table at all, the ring the only shared memory
    # (both at a 152-register cap where mma_maxnreg is the default: decode_mma.PRMT_MAXNREG)
    mma_value_table: str = "auto"
    # the mma decode step's launches after the query rotation (decode_mma, the merge, the inverse rotation) as
    # programmatic dependent launches (triton_impl/pdl.py, sm_90+): each may start while the one before it runs
    # and waits for it before reading its output; decode_mma builds its tables in shared memory first.  The
    # launches around the kernel took 13.3 of 77.2 us at 1 x 128k on the H200 (results/2026-12-04-h200-s13/
    # call12-kernels/trace.log, the FMA query rotation of then); the same bits.  Prepared in the twenty-first
    # session, not yet timed: off
    mma_pdl: bool = False

    def __post_init__(self):
        if self.lookup not in LOOKUPS:
            raise ValueError(f"lookup={self.lookup!r} is not supported; allowed values: {list(LOOKUPS)}")
        if not isinstance(self.batch_invariant, bool):
            raise ValueError(f"batch_invariant={self.batch_invariant!r} is not supported; allowed values: True, False")
        if not isinstance(self.bi_chunk, int) or self.bi_chunk <= 0 or self.bi_chunk % self.block_tokens:
            raise ValueError(f"bi_chunk={self.bi_chunk!r} is not supported; allowed values: positive multiples of "
                             f"block_tokens={self.block_tokens}")
        if not isinstance(self.dense_prefill, bool):
            raise ValueError(f"dense_prefill={self.dense_prefill!r} is not supported; allowed values: True, False")
        ms = self.max_splits
        if isinstance(ms, bool) or not isinstance(ms, int) or not 1 <= ms <= 4096:
            raise ValueError(f"max_splits={self.max_splits!r} is not supported; allowed values: integers 1 to 4096")
        if isinstance(self.mma_ring_bytes, bool) \
                or self.mma_ring_bytes not in MMA_RING_BYTES + (WIDE_RING_BYTES,) + PRMT_RING_BYTES:
            raise ValueError(f"mma_ring_bytes={self.mma_ring_bytes!r} is not supported; allowed values: "
                             f"{list(MMA_RING_BYTES)} (the pair tables' {TABLE_BYTES} bytes + the ring: one "
                             "power-of-two shared allocation, or a power-of-two ring smaller than the tables), "
                             f"{WIDE_RING_BYTES} with mma_value_table='wide', or {PRMT_RING_BYTES[-1]} with "
                             "mma_value_table='prmt'")
        for name in ("mma_shared_table", "mma_page_ahead", "mma_pdl"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported; allowed values: True, False")
        table, ring = self.mma_value_table, self.mma_ring_bytes
        if table == "wide":
            ring_refused = ring != wide_ring_bytes(self.mma_key_table)
        elif table == "prmt":
            ring_refused = ring not in PRMT_RING_BYTES
        else:
            ring_refused = ring not in MMA_RING_BYTES
        if ring_refused:
            raise ValueError(f"mma_value_table={self.mma_value_table!r} with mma_ring_bytes={self.mma_ring_bytes} is "
                             f"not supported; allowed: mma_value_table='wide' with mma_ring_bytes={WIDE_RING_BYTES} "
                             f"(its three-tile ring; {RING_BYTES} with mma_key_table='prmt'), mma_value_table="
                             f"'prmt' with one of {list(PRMT_RING_BYTES)}, any other value table with one of "
                             f"{list(MMA_RING_BYTES)}")
        if type(self.mma_step_tiles) is not int or self.mma_step_tiles not in MMA_STEP_TILES:
            raise ValueError(f"mma_step_tiles={self.mma_step_tiles!r} is not supported; allowed values: "
                             f"{list(MMA_STEP_TILES)}")
        for name, allowed in (("decode_kernel", DECODE_KERNELS), ("dense_rotation", DENSE_ROTATIONS),
                              ("mma_query_rotation", MMA_QUERY_ROTATIONS), ("mma_output_rotation", OUTPUT_ROTATIONS),
                              ("mma_split_rule", MMA_SPLIT_RULES), ("mma_key_table", MMA_KEY_TABLES),
                              ("mma_value_table", MMA_VALUE_TABLES)):
            tqf.check_choice(name, getattr(self, name), allowed)
        if isinstance(self.bi_parallel_bytes, bool) or not isinstance(self.bi_parallel_bytes, int) \
                or self.bi_parallel_bytes < 0:
            raise ValueError(f"bi_parallel_bytes={self.bi_parallel_bytes!r} is not supported; allowed values: "
                             "integers >= 0 (0: every batch-invariant launch walks a row's splits in one program)")


LOOKUPS = (0, 1, 2)
DENSE_ROTATIONS = ("auto", "query", "kv")
DECODE_KERNELS = ("auto", "mma", "split")


def lookup_variant(lookup: int, meta: dict, f32dot: bool) -> int:
    """The centroid lookup a launch uses: 1 and 2 need a symmetric codebook (2 also one whose
    magnitudes its cubics reproduce, params.magnitude_polynomials), and fp16 operands; else 0."""
    if f32dot or not meta["CB_SYMMETRIC"] or (lookup == 2 and not meta["CB_POLY"]):
        return 0
    return lookup


# CPU (interpreter): small batch-invariant splits and buffer budget, so that the tests' short
# sequences take several splits and both ways of combining them
CPU_CONFIG = AttnConfig(block_tokens=32, num_warps=4, num_stages=1, programs_per_sm=16, min_chunk=32, bi_chunk=64,
                        bi_parallel_bytes=1 << 19)


def default_config(device: torch.device) -> AttnConfig:
    return AttnConfig() if device.type == "cuda" else CPU_CONFIG


def batch_invariant_config(device: torch.device) -> AttnConfig:
    """The device's default tiles in batch-invariant mode (AttnConfig.batch_invariant)."""
    return dataclasses.replace(default_config(device), batch_invariant=True)


def choose_splits(programs: int, max_kv: int, device: torch.device, cfg: AttnConfig,
                  programs_per_sm: int | None = None) -> int:
    """Split count from shapes only: enough programs to fill the device, no
    split shorter than cfg.min_chunk tokens of the longest possible sequence.
    Batch-invariant mode: 1 here; batch_invariant_splits sets its fixed splits."""
    if cfg.batch_invariant:
        return 1
    want = math.ceil((programs_per_sm or cfg.programs_per_sm) * sm_count(device) / max(programs, 1))
    return int(max(1, min(want, split_cap(max_kv, cfg))))


def split_cap(max_kv: int, cfg: AttnConfig) -> int:
    """The most splits a row of at most max_kv tokens gets: none shorter than cfg.min_chunk, at most
    cfg.max_splits."""
    return max(1, min(math.ceil(max_kv / cfg.min_chunk), cfg.max_splits))


def batch_invariant_splits(num_tokens: int, num_q_heads: int, max_kv: int, acc_width: int,
                           cfg: AttnConfig) -> tuple[int, int]:
    """(num_splits, seq_splits) of a batch-invariant launch: the fixed cfg.bi_chunk splits of max_kv
    tokens, one program each while their partial buffers fit cfg.bi_parallel_bytes, else (1, 1): one
    program walks all of a row's splits.  Either gives the same bits per row (SPEC §10)."""
    splits = triton.cdiv(max_kv, cfg.bi_chunk)
    if num_tokens * num_q_heads * splits * acc_width * 4 > cfg.bi_parallel_bytes:
        return 1, 1
    return splits, 0


def run_split_merge(qbuf, cache, block_table, seq_lens, qsl, cu_tiles, out, params: KernelParams, *,
                    num_tiles: int, decode: bool, bq: int, num_q_heads: int, sm_scale: float, f32dot: bool,
                    num_splits: int, cfg: AttnConfig):
    m = params.meta
    hkv = cache.shape[1]
    g = num_q_heads // hkv
    gp = next_pow2(g)
    rp = max(MIN_DOT, bq * gp)
    # extend programs hold RP = 64 query rows: keep their tiles at <= 64 slots (registers)
    bt = cfg.block_tokens if rp <= MIN_DOT else min(cfg.block_tokens, 64)
    if f32dot:  # fp32 queries: full-K fp32 FMA dots (slow path); small tiles bound their shared memory
        bt = min(bt, 32)
    if cfg.batch_invariant and num_splits != 1:
        raise ValueError(f"num_splits={num_splits} is not supported in batch-invariant mode; allowed values: 1")
    n_tok = out.shape[0]
    dacc = acc_width(params)
    seq_splits = 0
    if cfg.batch_invariant:
        num_splits, seq_splits = batch_invariant_splits(n_tok, num_q_heads, block_table.shape[1] * cache.shape[2],
                                                        dacc, cfg)
    part_acc = torch.empty((n_tok * num_q_heads * num_splits, dacc), dtype=torch.float32, device=cache.device)
    part_ml = torch.empty((n_tok * num_q_heads * num_splits, 2), dtype=torch.float32, device=cache.device)
    words = cache.view(torch.int32)  # [NB, H, BS, SLOT_BYTES / 4]
    k_cent = params.k_cent if f32dot else params.k_cent16
    v_cent = params.v_cent if f32dot else params.v_cent16
    grid = (num_tiles, hkv, num_splits)
    _split_kernel[grid](
        qbuf, words, block_table, block_table.stride(0), seq_lens, qsl, cu_tiles, block_table.shape[0],
        part_acc, part_ml, words.stride(0), words.stride(1), words.stride(2),
        k_cent, v_cent, params.k_poly, params.v_poly, float(sm_scale), cache.shape[2], num_q_heads, num_splits,
        seq_splits, DECODE=decode, LOOKUP=lookup_variant(cfg.lookup, m, f32dot),
        G=g, GP=gp, BQ=bq, RP=rp, BT=bt, F32DOT=f32dot, BATCH_INVARIANT=cfg.batch_invariant,
        BI_CHUNK=cfg.bi_chunk if cfg.batch_invariant else 0,
        DACC=dacc, **query_layout(params), **params.constexprs("split"),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        enable_fp_fusion=not cfg.batch_invariant,  # the split combine must round alike in both kernels
    )
    if cfg.batch_invariant:  # the split-order combine (_merge_kernel ONLINE), which the one-program path mirrors
        return run_merge(part_acc, part_ml, out, params, num_q_heads=num_q_heads, num_splits=num_splits, cfg=cfg)
    return merge_splits(part_acc, part_ml, out, params, num_q_heads=num_q_heads, num_splits=num_splits)


def run_merge(part_acc, part_ml, out, params: KernelParams, *, num_q_heads: int, num_splits: int, cfg: AttnConfig):
    """Merge the splits' partial states (part_ml [rows * S, 2] = (m, l), part_acc [rows * S, DACC]
    rotated accumulators, rows = tokens x query heads), normalise, rotate back into ``out``."""
    grid = (out.shape[0], triton.cdiv(num_q_heads, MERGE_BH))
    _merge_kernel[grid](
        part_acc, part_ml, out, out.stride(0), out.stride(1), num_q_heads, params.v_rot, params.v_chan, num_splits,
        BH=MERGE_BH, DACC=acc_width(params), **params.constexprs("merge"), OUT_BF16=out.dtype == torch.bfloat16,
        ONLINE=cfg.batch_invariant, num_warps=4, enable_fp_fusion=not cfg.batch_invariant,
    )
    return out

"""store_wg: store_mse's encoding with every row quantity in the registers of the rows' threads (Gluon,
Hopper ``wgmma``).  store_mse's variant "wg", which store_mse takes by default for a call of more than SMALL_ROWS
rows on Hopper (and for every call in the batch-invariant mode): store_mse.WG_LAUNCH has its timings.

What one launch computes: the same as store_mse's "kv" launch (its module docstring; SPEC §4.1, §4.2, §5):
keys and values of every row r = token * H + head whose slot_mapping[token] >= 0, the norm 2^e ||x 2^-e||,
the codes #{k : y'_j > beta_k n} of y' = (x 2^-e) Pi^T, packed LSB-first into the slot.

Why a second kernel: in store_mse (plain Triton) x is loaded in a coalesced layout, its norm computed
there, and the compiler moves x, the norm's thresholds and the non-finite flag into the tensor-core
accumulator's layout through shared memory, and the packed words back out: about nine layout
conversions a tile, each a shared-memory round trip between two barriers, at 2 programs an SM
(80 KB of shared memory each).  Here every layout is chosen so that a row's quantities stay in the
threads that hold the row (no conversion touches shared memory):

* x [64 rows, D] is loaded in X3 = [64, 4 r, D/4]: lane (g, r) of warp w holds rows 16 w + g and
  16 w + g + 8, and of each the D/4 consecutive coordinates [r D/4, (r + 1) D/4) (16-byte loads).
  The row's max |x| and sum of squares are a lane's own elements plus two shuffles within its quad.
* Those elements are, in register order, the wgmma A operand (DotOperandLayout, k_width 2) of the
  rows' thread: column k = 16 kt + 8 hf + 2 r + e of the operand holds coordinate
  sigma(k) = r D/4 + 4 kt + 2 hf + e, so Pi^T's rows are taken in the order sigma (the same products,
  grouped otherwise into the tensor cores' 16-term steps).
* Pi^T's columns are taken in store_mse's "lean" order (codes.perm_col): accumulator column c = 8 nt + 2 r + e
  of lane (g, r) holds coordinate tau(c) = r D/4 + 2 nt + e, so a lane holds D/4 consecutive codes of
  each of its rows and packs whole words of the slot's code field from its own registers.
* The row's norm and thresholds (computed in X3's row slice) are used in the accumulator's row slice:
  the same rows in the same threads, a conversion without data movement.

Shared memory: Pi^T's two fp16 parts (2 x D x D x 2 bytes; 64 KB at D = 128), loaded once a program.
Grid: (k_programs + v_programs,), persistent: program p < k_programs takes the key row tiles p,
p + k_programs, ...; the others the value row tiles likewise.  Tile i + programs is loaded (slots and x,
registers) before tile i is encoded.

Numerics: as store_mse (exact 2^-e scaling, fp16 parts of Pi^T and of x 2^-e on tensor cores, fp32
accumulation), with the products' terms summed in another order (sigma) and the norm's sum of squares
in another order: y' and n differ from store_mse's by a few ulps, so a code can differ where y' lies
within a few ulps of beta_k n and a norm in its last bit; stored bytes within SPEC §10 of the reference
(codes only inside CODE_MARGIN, norms within NORM_RTOL), not always equal to store_mse's.  bf16 / fp16
input only (one fp16 part of x).
"""

from __future__ import annotations

import math

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma

from .codes import boundary_codes, lane_group_whole_words, perm_col, search_boundaries, search_codes
from .decode_mma_ring import _thread_barrier  # gl.barrier or gl.thread_barrier, whichever this Triton has
from .params import NORM_NAN_BITS

BR = gl.constexpr(64)  # rows (token, head) a tile: one warpgroup's wgmma M
NUM_WARPS = gl.constexpr(4)
PROGRAMS_PER_SM = 3  # 64 KB of shared memory and 160-164 registers a thread (sm_90): 3 fit an SM
# Instructions in this kernel's loop a 64-row tile at D = 128 by code bits (compile_check, sm_90, Triton 3.6):
# the 4-bit binary search's third level and the fourth bit of each code cost 18 % more than 3 bits.  Variant
# "balance" (store_mse) splits a launch's programs between keys and values by these costs (key_programs).
TILE_COST = {3: 1271, 4: 1502}


@triton.constexpr_function
def _x3_layout(d):
    """X3 [64 rows, 4 r, d/4]: lane (g, r) of warp w holds rows 16 w + g (+ 8) and of each the d/4
    coordinates of run r in registers, run first (vector loads), then the row + 8."""
    return gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 1 << i] for i in range(int(math.log2(d // 4)))] + [[8, 0, 0]],
        lane_bases=[[0, 1, 0], [0, 2, 0], [1, 0, 0], [2, 0, 0], [4, 0, 0]],
        warp_bases=[[16, 0, 0], [32, 0, 0]], block_bases=[], shape=[BR.value, 4, d // 4])


@triton.constexpr_function
def _pi_layout(d):
    """A coalesced layout for loading Pi^T's [d, d] parts (4 warps, 8 fp16 a thread)."""
    return gl.BlockedLayout([1, 8], [32 // (d // 8), d // 8], [NUM_WARPS, 1], [1, 0])


@gluon.jit
def _load_rows(x_ptr, slot_ptr, tile, stride_xt, stride_xh, num_rows, H: gl.constexpr, D: gl.constexpr,
               X3: gl.constexpr):
    """(slot [BR] int32 in X3's row slice, x [BR, 4, D/4] in X3) of row tile ``tile`` (rows past num_rows:
    slot -1; every existing row's x is read, whatever its slot)."""
    R3: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, X3))
    rows = tile * BR + gl.arange(0, BR, layout=R3)
    tok = rows // H
    h = rows % H
    slot = gl.load(slot_ptr + tok, mask=rows < num_rows, other=-1).to(gl.int32)
    run = gl.arange(0, 4, layout=gl.SliceLayout(1, gl.SliceLayout(0, X3)))
    j = gl.arange(0, D // 4, layout=gl.SliceLayout(0, gl.SliceLayout(0, X3)))
    col = run[:, None] * (D // 4) + j[None, :]
    base = tok.to(gl.int64) * stride_xt + h * stride_xh
    x = gl.load(x_ptr + base[:, None, None] + col[None, :, :], mask=(rows < num_rows)[:, None, None], other=0.0)
    return slot, x


@triton.constexpr_function
def _searched(bits, symmetric, search):
    """Whether the codes come from codes.search_codes (a symmetric 3- or 4-bit codebook, variant "search")."""
    return bool(symmetric and search and bits in (3, 4))


@gluon.jit
def _field_word(c4, W: gl.constexpr, BITS: gl.constexpr):
    """Bits [32 W, 32 W + 32) of each lane group's code field, from c4 [BR, nt, 4 r, 2 e] (uint32 codes of
    accumulator columns 8 nt + 2 r + e, field position 2 nt + e): [BR, 4].  Constant shifts a register."""
    L: gl.constexpr = c4.type.layout
    nt = gl.arange(0, c4.shape[1], layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, L))))
    e = gl.arange(0, 2, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, L))))
    s = (2 * nt[None, :, None, None] + e[None, None, None, :]) * BITS - 32 * W
    lo = gl.where((s >= 0) & (s < 32), c4 << gl.minimum(gl.maximum(s, 0), 31).to(gl.uint32), 0)
    hi = gl.where((s < 0) & (s > -BITS), c4 >> gl.minimum(gl.maximum(-s, 0), 31).to(gl.uint32), 0)
    return gl.sum(gl.sum(lo | hi, axis=3), axis=1)  # disjoint bits


@gluon.jit
def _encode(slot, x, cache_ptr, bnd_ptr, bnd, p0, p1, stride_cb, stride_ch, stride_cs, tile,
            H: gl.constexpr, BLOCK_SIZE: gl.constexpr, D: gl.constexpr, BITS: gl.constexpr,
            SYMMETRIC: gl.constexpr, NORM: gl.constexpr, CODES: gl.constexpr, SEARCH: gl.constexpr,
            X3: gl.constexpr, MMA: gl.constexpr, OPA: gl.constexpr):
    """Encode one row tile (slot [BR], x [BR, 4, D/4] in X3) into the cache; bnd: the binary search's
    boundaries, loaded before the tile loop (_searched), else unused."""
    ROW: gl.constexpr = gl.SliceLayout(1, MMA)
    x = x.to(gl.float32)
    # SPEC §4.1 with the exact power-of-two scale 2^-e (store_mse._encode_tile, "lean": no finiteness pass)
    mx = gl.max(gl.max(gl.abs(x), axis=2), axis=1)
    eb = gl.minimum(gl.maximum((mx.to(gl.int32, bitcast=True) >> 23) & 0xFF, 1), 253)
    scale = ((254 - eb) << 23).to(gl.float32, bitcast=True)  # 2^-e
    xs = x * scale[:, None, None]
    n = gl.sqrt_rn(gl.sum(gl.sum(xs * xs, axis=2), axis=1))
    norm = n * (eb << 23).to(gl.float32, bitcast=True)
    # the A operand: coordinate sigma(k) at column k = 16 kt + 8 hf + 2 r + e (module docstring)
    a = gl.reshape(xs.to(gl.float16), [BR, 4, D // 16, 2, 2])  # row, r, kt, hf, e
    a = gl.permute(a, [0, 2, 3, 1, 4])  # row, kt, hf, r, e
    a = gl.convert_layout(gl.reshape(a, [BR, D]), OPA, assert_trivial=True)
    acc = warpgroup_mma(a, p1, gl.zeros([BR, D], gl.float32, MMA))  # small terms first
    acc = warpgroup_mma(a, p0, acc)
    # the row quantities in the accumulator's row slice: the same rows in the same threads
    n = gl.convert_layout(n, ROW, assert_trivial=True)
    norm = gl.convert_layout(norm, ROW, assert_trivial=True)
    slot = gl.convert_layout(slot, ROW, assert_trivial=True)
    bad = ~(norm < float("inf"))  # a non-finite x makes the norm non-finite: codes 0, NORM_NAN_BITS
    den = gl.where(n > 0, n, 1.0)  # x = 0: y = 0
    tm = slot >= 0
    rows = tile * BR + gl.arange(0, BR, layout=ROW)
    h = rows % H
    blk = gl.where(tm, slot // BLOCK_SIZE, 0).to(gl.int64)
    off = gl.where(tm, slot % BLOCK_SIZE, 0)
    base = (cache_ptr + blk * stride_cb + h * stride_ch + off * stride_cs).to(gl.pointer_type(gl.int32))
    nbits = gl.where(bad, NORM_NAN_BITS, norm.to(gl.int32, bitcast=True))
    gl.store(base + NORM // 4, nbits, mask=tm)
    if _searched(BITS, SYMMETRIC, SEARCH):
        codes = search_codes(acc, den, bnd[0], bnd[1], bnd[2], bnd[3], bnd[4], bnd[5], bnd[6], BITS)
    else:
        codes = boundary_codes(acc, den, bnd_ptr, BITS, SYMMETRIC, SEARCH)
    codes = gl.where(bad[:, None], 0, codes)
    c4 = gl.reshape(codes.to(gl.uint32), [BR, D // 8, 4, 2])  # row, nt, r, e
    WPG: gl.constexpr = D // 4 * BITS // 32  # words of one lane group's field
    w0 = _field_word(c4, 0, BITS)
    WL: gl.constexpr = w0.type.layout
    wq = gl.arange(0, 4, layout=gl.SliceLayout(0, WL))
    wbase = gl.convert_layout(base, gl.SliceLayout(1, WL), assert_trivial=True)
    wm = gl.convert_layout(tm, gl.SliceLayout(1, WL), assert_trivial=True)[:, None]
    wp = wbase[:, None] + CODES // 4 + wq[None, :] * WPG  # first word of each lane group's field
    gl.store(wp, w0.to(gl.int32, bitcast=True), mask=wm)
    if WPG > 1:
        gl.store(wp + 1, _field_word(c4, 1, BITS).to(gl.int32, bitcast=True), mask=wm)
    if WPG > 2:
        gl.store(wp + 2, _field_word(c4, 2, BITS).to(gl.int32, bitcast=True), mask=wm)
    if WPG > 3:
        gl.store(wp + 3, _field_word(c4, 3, BITS).to(gl.int32, bitcast=True), mask=wm)


@gluon.jit
def _rows(x_ptr, cache_ptr, slot_ptr, rot_ptr, bnd_ptr, stride_xt, stride_xh, stride_cb, stride_ch, stride_cs,
          num_rows, pid, nprog,
          H: gl.constexpr, BLOCK_SIZE: gl.constexpr, D: gl.constexpr, BITS: gl.constexpr,
          SYMMETRIC: gl.constexpr, NORM: gl.constexpr, CODES: gl.constexpr, SEARCH: gl.constexpr):
    """Program pid of nprog over one tensor's row tiles (keys or values)."""
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    OPA: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    X3: gl.constexpr = _x3_layout(D)
    PL: gl.constexpr = _pi_layout(D)
    SH: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    # Pi^T's parts, rows in the order sigma, columns in the order tau (module docstring)
    k = gl.arange(0, D, layout=gl.SliceLayout(1, PL))
    c = gl.arange(0, D, layout=gl.SliceLayout(0, PL))
    sigma = ((k // 2) % 4) * (D // 4) + 4 * (k // 16) + 2 * ((k // 8) % 2) + k % 2
    tau = perm_col(c, D, 1, 0)
    pt = rot_ptr + sigma[:, None] * D + tau[None, :]
    p0 = gl.allocate_shared_memory(gl.float16, [D, D], SH, gl.load(pt))
    p1 = gl.allocate_shared_memory(gl.float16, [D, D], SH, gl.load(pt + D * D))
    fence_async_shared()
    _thread_barrier()
    # the binary search's boundaries in registers for the whole loop: loaded after each tile's product, every
    # tile waited on them (Nsight, results/2026-12-06-h100-s23: long-scoreboard stalls on the threshold products)
    if _searched(BITS, SYMMETRIC, SEARCH):
        bnd = search_boundaries(bnd_ptr, BITS)
    else:
        bnd = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    num_tiles = gl.cdiv(num_rows, BR)
    slot_n, x_n = _load_rows(x_ptr, slot_ptr, pid, stride_xt, stride_xh, num_rows, H, D, X3)
    for tile in range(pid, num_tiles, nprog):
        slot, x = slot_n, x_n
        slot_n, x_n = _load_rows(x_ptr, slot_ptr, tile + nprog, stride_xt, stride_xh, num_rows, H, D, X3)
        _encode(slot, x, cache_ptr, bnd_ptr, bnd, p0, p1, stride_cb, stride_ch, stride_cs, tile, H, BLOCK_SIZE, D,
                BITS, SYMMETRIC, NORM, CODES, SEARCH, X3, MMA, OPA)


@gluon.jit
def _store_wg_kernel(
    k_ptr, v_ptr, cache_ptr, slot_ptr, k_rot_ptr, v_rot_ptr, k_bnd_ptr, v_bnd_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_cb, stride_ch, stride_cs,
    num_rows, k_programs,
    H: gl.constexpr, BLOCK_SIZE: gl.constexpr, D: gl.constexpr, SYMMETRIC: gl.constexpr, SEARCH: gl.constexpr,
    K_BITS: gl.constexpr, K_NORM: gl.constexpr, K_CODES: gl.constexpr,
    V_BITS: gl.constexpr, V_NORM: gl.constexpr, V_CODES: gl.constexpr,
):
    # Grid: (k_programs + value programs,), 4 warps (one warpgroup) a program.
    pid = gl.program_id(0)
    if pid < k_programs:
        _rows(k_ptr, cache_ptr, slot_ptr, k_rot_ptr, k_bnd_ptr, stride_kt, stride_kh, stride_cb, stride_ch,
              stride_cs, num_rows, pid, k_programs, H, BLOCK_SIZE, D, K_BITS, SYMMETRIC, K_NORM, K_CODES, SEARCH)
    else:
        _rows(v_ptr, cache_ptr, slot_ptr, v_rot_ptr, v_bnd_ptr, stride_vt, stride_vh, stride_cb, stride_ch,
              stride_cs, num_rows, pid - k_programs, gl.num_programs(0) - k_programs, H, BLOCK_SIZE, D, V_BITS,
              SYMMETRIC, V_NORM, V_CODES, SEARCH)


NO_CUDA = "it needs a Hopper GPU (wgmma), got a tensor on the CPU"


def why_not(key: torch.Tensor, value: torch.Tensor, d: int, k_bits: int, v_bits: int, debug: bool) -> str | None:
    """Why this kernel cannot serve the call (None: it can): Hopper (wgmma), bf16 / fp16 keys and values (one
    exact fp16 part of x 2^-e), head size 64 or 128 with whole code words a lane group, no rotated_debug
    output.  NO_CUDA (a CPU tensor) comes after the other reasons, so that a CPU-side check names them first."""
    if key.dtype not in (torch.bfloat16, torch.float16) or value.dtype not in (torch.bfloat16, torch.float16):
        return f"it takes bfloat16 or float16 keys and values, got {key.dtype} and {value.dtype}"
    if d not in (64, 128) or not (lane_group_whole_words(d, k_bits) and lane_group_whole_words(d, v_bits)):
        return f"head_size={d} with {k_bits}-bit keys and {v_bits}-bit values does not give whole code words a lane"
    if debug:
        return "it writes no rotated_debug output"
    if not key.is_cuda:
        return NO_CUDA
    if torch.version.hip is not None or torch.cuda.get_device_capability(key.device)[0] != 9:
        return f"it needs a Hopper GPU (wgmma), got compute capability {torch.cuda.get_device_capability(key.device)}"
    return None


def key_programs(programs: int, tiles: int, k_bits: int, v_bits: int, *, balance: bool, col_blocks: int = 1) -> int:
    """How many of a one-launch store's ``programs`` persistent programs (keys first; a multiple of 2 col_blocks)
    take the keys, each of ``tiles`` row tiles of keys and of values: half, or with ``balance`` the count that
    makes the longest program shortest, a program taking every k-th tile (cdiv(tiles, k) of them) at TILE_COST
    instructions a tile of its code width; of the counts that do, the one nearest the share in proportion to
    TILE_COST (k4v3: 54 % for the keys).  A multiple of col_blocks (a row tile's column blocks go together), at
    least one program's worth a tensor and no more than its tiles need.  Equal widths, or a width TILE_COST
    lacks: half."""
    half = programs // 2
    if not balance or k_bits == v_bits or k_bits not in TILE_COST or v_bits not in TILE_COST:
        return half
    units = programs // col_blocks
    ck, cv = TILE_COST[k_bits], TILE_COST[v_bits]
    share = units * ck / (ck + cv)

    def longest(k: int) -> int:  # the slower of a key program's and a value program's tiles, in instructions
        return max(triton.cdiv(tiles, k) * ck, triton.cdiv(tiles, units - k) * cv)

    lo, hi = max(1, units - tiles), min(tiles, units - 1)
    if lo > hi:  # more programs than both tensors' tiles: the launch caps a tensor's programs at its tiles
        return half
    return col_blocks * min(range(lo, hi + 1), key=lambda k: (longest(k), abs(k - share)))


def launch(key, value, cache, slot_mapping, params, *, programs_per_sm: int, sm: int, search: bool,
           balance: bool = False) -> None:
    """The keys and values of [num_tokens, H, D] into the cache (store_mse's checks done by the caller);
    ``balance``: key_programs's proportion instead of half the programs each."""
    n, h, d = key.shape
    m = params.meta
    rows = n * h
    tiles = triton.cdiv(rows, BR.value)
    half = max(1, min(tiles, sm * programs_per_sm // 2))
    k_programs = key_programs(2 * half, tiles, m["K0_BITS"], m["V0_BITS"], balance=balance)
    _store_wg_kernel[(2 * half,)](
        key, value, cache, slot_mapping, params.k_rot_split, params.v_rot_split, params.k_bnd, params.v_bnd,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        cache.stride(0), cache.stride(1), cache.stride(2), rows, k_programs,
        H=h, BLOCK_SIZE=cache.shape[2], D=d, SYMMETRIC=m["CB_SYMMETRIC"], SEARCH=search,
        K_BITS=m["K0_BITS"], K_NORM=m["K0_NORM"], K_CODES=m["K0_CODES"],
        V_BITS=m["V0_BITS"], V_NORM=m["V0_NORM"], V_CODES=m["V0_CODES"], num_warps=NUM_WARPS.value)

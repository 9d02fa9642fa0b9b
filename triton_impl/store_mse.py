"""store_mse: the store of the one-instance mse presets (tq3, k4v3, tq4, tq3_hadamard, ...) with the
rotation on tensor cores.

What one launch computes (one launch for the keys, one for the values; SPEC §4.1, §4.2, §5):
for every row r = token * H + head of x [num_tokens, H, D] whose slot_mapping[token] >= 0,

    n = ||x 2^-e||, norm = 2^e n                                  (SPEC §4.1)
    y' = (x 2^-e) Pi^T, y = y' / n                                (= Pi u, SPEC §4.2)
    idx_j = #{k : y'_j > beta_k n}                                (= #{k : y_j > beta_k})
    slot[NORM:NORM+4] = norm (NORM_NAN_BITS for a non-finite token, codes 0)
    slot[CODES:...]   = idx packed LSB-first, written as little-endian int32 words

2^-e is the power of two that brings M = max|x| into [1, 2): the scaling is exact, so x 2^-e keeps
x's bits, no partial sum can overflow, and no coordinate needs a division.  Rounding differs from
the reference's (M sqrt(sum (x/M)^2), then u = x/(M n)) by a few float32 ulps: inside NORM_RTOL and
CODE_MARGIN (SPEC §10).  The product runs
on tensor cores in fp16 with float32 accumulation: Pi^T = P0 + P1, two fp16 parts (params.rotation_split;
P1 is the fp16 rounding of Pi^T - P0, so Pi^T is represented to 2^-25 absolute, P1 mostly
subnormal), and x 2^-e in XSPLIT fp16 parts (1 for bf16 / fp16 input, 2 for float32): the products
x0 P0 + x0 P1 (+ x1 P0).  An fp16 part of x 2^-e (elements below 2) is exact above 2^-14 and within
2^-25 below, so |y - y_exact| <= sqrt(D) 2^-24 / n ~ 7e-7 at D = 128 (n >= 1), and typically
~1e-8: far inside SPEC §10's CODE_MARGIN (SPEC §4 allows any such method).

Layouts: x rows [BR, D] (D = 64 or 128, the instance is the whole head); Pi^T parts [2, D, D] fp16
loaded once per program (shared memory); codes packed 8 at a time into BITS bytes, then into words.
Grid: (programs,), persistent: program p takes row tiles p, p + programs, ... of BR rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device import sm_count
from .params import INTERPRET, NORM_NAN_BITS, KernelParams

# The CPU interpreter's tl.dot on 16-bit floats is not trustworthy (bf16 as raw bits): there the
# parts go in as float32 (fp16 x fp16 products are exact in float32 either way): F32_PARTS=INTERPRET.
STORE_MSE_BR = 64  # rows (token, head) per tile
STORE_MSE_WARPS = 4
PROGRAMS_PER_SM = 2  # each loads Pi^T's parts (2 x 32 KiB at D = 128) once
# fp16 parts of an input element x 2^-e (see above)
XSPLIT = {torch.bfloat16: 1, torch.float16: 1, torch.float32: 2}


def store_mse_applies(params: KernelParams) -> bool:
    """Whether this kernel covers the layer's format: keys and values one mse instance each over the
    whole head (no QJL, no outlier split, no group values), head size 64 or 128."""
    return bool(params.meta["STORE_MSE"])


@triton.jit
def _split_fp16(x, PART: tl.constexpr):
    """Part PART (0 or 1) of float32 x as fp16 parts: x0 = fp16(x), x1 = fp16(x - x0)."""
    p = x.to(tl.float16)
    if PART > 0:
        p = (x - p.to(tl.float32)).to(tl.float16)
    return p


@triton.jit
def _pack_words(codes, BR: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, wptr, tm):
    """Pack codes [BR, D] (< 2^BITS) LSB-first and store them as int32 words at wptr [BR] (int32
    pointers to the field's first word), rows where tm."""
    c8 = tl.reshape(codes.to(tl.uint32), (BR, D // 8, 8))
    sh = (tl.arange(0, 8) * BITS).to(tl.uint32)
    v = tl.sum(c8 << sh[None, None, :], axis=2)  # [BR, D // 8]: 8 codes = BITS bytes (disjoint bits)
    if BITS == 4:
        w = tl.arange(0, D // 8)
        tl.store(wptr[:, None] + w[None, :], v.to(tl.int32, bitcast=True), mask=tm[:, None])
    elif BITS == 2:
        lo, hi = tl.split(tl.reshape(v, (BR, D // 16, 2)))
        w = tl.arange(0, D // 16)
        tl.store(wptr[:, None] + w[None, :], (lo | (hi << 16)).to(tl.int32, bitcast=True), mask=tm[:, None])
    else:  # 3 bits: 32 codes = four 24-bit chunks c0..c3 = three words
        even, odd = tl.split(tl.reshape(v, (BR, D // 32, 2, 2)))  # chunks (0, 2) and (1, 3)
        c0, c2 = tl.split(even)
        c1, c3 = tl.split(odd)
        g = tl.arange(0, D // 32) * 3
        m = tm[:, None]
        tl.store(wptr[:, None] + g[None, :], (c0 | (c1 << 24)).to(tl.int32, bitcast=True), mask=m)
        tl.store(wptr[:, None] + g[None, :] + 1, ((c1 >> 8) | (c2 << 16)).to(tl.int32, bitcast=True), mask=m)
        tl.store(wptr[:, None] + g[None, :] + 2, ((c2 >> 16) | (c3 << 8)).to(tl.int32, bitcast=True), mask=m)


@triton.jit
def _store_mse_kernel(
    x_ptr, cache_ptr, slot_ptr, rot_ptr, bnd_ptr, y_ptr,
    stride_xt, stride_xh, stride_cb, stride_ch, stride_cs,
    num_rows,
    H: tl.constexpr, BLOCK_SIZE: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr,
    NORM: tl.constexpr, CODES: tl.constexpr,
    BR: tl.constexpr, XSPLIT: tl.constexpr, DEBUG_Y: tl.constexpr, F32_PARTS: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    j = tl.arange(0, D)
    # Pi^T = P0 + P1 (fp16 parts, [2, D, D], row c = input coordinate, column = output)
    pt = rot_ptr + j[:, None] * D + j[None, :]
    p0 = tl.load(pt)
    p1 = tl.load(pt + D * D)
    if F32_PARTS:
        p0, p1 = p0.to(tl.float32), p1.to(tl.float32)
    num_tiles = tl.cdiv(num_rows, BR)
    for tile in range(pid, num_tiles, nprog):
        r = tile * BR + tl.arange(0, BR)
        tok = r // H
        h = r % H
        # int32 slots: a layer's cache would need > 2^31 * 64 bytes for more
        slot = tl.load(slot_ptr + tok, mask=r < num_rows, other=-1).to(tl.int32)
        tm = slot >= 0
        x = tl.load(x_ptr + tok.to(tl.int64)[:, None] * stride_xt + h[:, None] * stride_xh + j[None, :],
                    mask=tm[:, None], other=0.0).to(tl.float32)
        # SPEC §4.1 with an exact power-of-two scale 2^-e (mx 2^-e in [1, 2); biased exponent of mx
        # clamped to 1..253): ||x|| = 2^e sqrt(sum (x 2^-e)^2), within NORM_RTOL of M sqrt(sum (x/M)^2)
        fin = tl.sum(((tl.abs(x) == float("inf")) | (x != x)).to(tl.int32), axis=1) == 0
        mx = tl.max(tl.abs(x), axis=1)
        eb = tl.minimum(tl.maximum((mx.to(tl.int32, bitcast=True) >> 23) & 0xFF, 1), 253)
        scale = ((254 - eb) << 23).to(tl.float32, bitcast=True)  # 2^-e
        xs = tl.where(fin[:, None], x * scale[:, None], 0.0)  # exact
        n = tl.sqrt_rn(tl.sum(xs * xs, axis=1))  # ||x 2^-e||, in [1, 2 sqrt(D)) unless x = 0
        norm = n * (eb << 23).to(tl.float32, bitcast=True)  # exact unless it overflows
        bad = ~fin | ~(norm < float("inf"))
        # y' = xs Pi^T on tensor cores: x0 P1 (+ x1 P0) + x0 P0, small terms first; y = y' / n
        x0 = _split_fp16(xs, 0)
        if F32_PARTS:
            x0 = x0.to(tl.float32)
        acc = tl.dot(x0, p1, tl.zeros((BR, D), tl.float32))
        if XSPLIT > 1:
            x1 = _split_fp16(xs, 1)
            if F32_PARTS:
                x1 = x1.to(tl.float32)
            acc = tl.dot(x1, p0, acc)
        acc = tl.dot(x0, p0, acc)
        den = tl.where(n > 0, n, 1.0)  # x = 0: y = 0
        if DEBUG_Y:
            y = tl.where(bad[:, None], 0.0, tl.math.div_rn(acc, den[:, None]))
            tl.store(y_ptr + r.to(tl.int64)[:, None] * D + j[None, :], y, mask=tm[:, None])
        # idx_j = #{k : y_j > beta_k}, as y'_j > beta_k n (no division per coordinate)
        HALF: tl.constexpr = 1 << (BITS - 1)
        if SYMMETRIC:
            # beta_{HALF-1} = 0 and beta_{HALF-1+i} = -beta_{HALF-1-i}: count the positive boundaries
            # below |y| and mirror (an exact tie y = -beta takes the upper code: inside CODE_MARGIN)
            a = tl.abs(acc)
            cnt = tl.zeros((BR, D), tl.int32)
            for k in tl.static_range(HALF, 2 * HALF - 1):
                cnt += (a > (tl.load(bnd_ptr + k) * den)[:, None]).to(tl.int32)
            codes = tl.where(acc > 0, HALF + cnt, HALF - 1 - cnt)
        else:
            codes = tl.zeros((BR, D), tl.int32)
            for k in tl.static_range(2 * HALF - 1):
                codes += (acc > (tl.load(bnd_ptr + k) * den)[:, None]).to(tl.int32)
        codes = tl.where(bad[:, None], 0, codes)
        blk = tl.where(tm, slot // BLOCK_SIZE, 0).to(tl.int64)
        off = tl.where(tm, slot % BLOCK_SIZE, 0)
        base = (cache_ptr + blk * stride_cb + h * stride_ch + off * stride_cs).to(tl.pointer_type(tl.int32))
        nbits = tl.where(bad, NORM_NAN_BITS, norm.to(tl.int32, bitcast=True))
        tl.store(base + NORM // 4, nbits, mask=tm)
        _pack_words(codes, BR, D, BITS, base + CODES // 4, tm)


def store_mse(key: torch.Tensor, value: torch.Tensor, cache: torch.Tensor, slot_mapping: torch.Tensor,
              params: KernelParams, debug_rotated: torch.Tensor | None = None, *, block_rows: int | None = None,
              num_warps: int | None = None) -> None:
    """store_kv for the formats store_mse_applies() covers; arguments checked by store_kv.
    block_rows (rows of (token, head) per tile, a power of two >= 16) and num_warps override the
    defaults (benchmarks)."""
    if not store_mse_applies(params):
        raise ValueError(f"store_mse does not cover preset {params.fmt.preset.name!r} at head_size="
                         f"{params.fmt.head_size}: it needs one mse instance for keys and for values, head size "
                         f"64 or 128")
    m = params.meta
    n, h, d = key.shape
    rows = n * h
    br = block_rows or STORE_MSE_BR
    if br < 16 or br & (br - 1):
        raise ValueError(f"block_rows must be a power of two >= 16, got {br}")
    tiles = triton.cdiv(rows, br)
    grid = (max(1, min(tiles, sm_count(key.device) * PROGRAMS_PER_SM)),)
    y = debug_rotated if debug_rotated is not None else torch.empty(1, device=key.device, dtype=torch.float32)
    vy = rows * (m["K0_MP"] + m["K1_MP"])  # rotated_debug's layout: key instances, then value instances
    for x, rot, bnd, pfx, yoff in ((key, params.k_rot_split, params.k_bnd, "K0", 0),
                                   (value, params.v_rot_split, params.v_bnd, "V0", vy)):
        _store_mse_kernel[grid](
            x, cache, slot_mapping, rot, bnd, y[yoff:] if debug_rotated is not None else y,
            x.stride(0), x.stride(1), cache.stride(0), cache.stride(1), cache.stride(2),
            rows,
            H=h, BLOCK_SIZE=cache.shape[2], D=d, BITS=m[f"{pfx}_BITS"], SYMMETRIC=m["CB_SYMMETRIC"],
            NORM=m[f"{pfx}_NORM"], CODES=m[f"{pfx}_CODES"], BR=br, XSPLIT=XSPLIT[x.dtype],
            DEBUG_Y=debug_rotated is not None, F32_PARTS=INTERPRET,
            num_warps=num_warps or STORE_MSE_WARPS,
        )

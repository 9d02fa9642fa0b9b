"""The NumPy-only report (``turboquant report`` / ``nox -s report``): runs the reference on a
synthetic workload and prints presets, distortions next to the paper's bounds and attention
fidelity against exact float64 attention.  No GPU or vLLM needed."""

from __future__ import annotations

import time

import numpy as np

from turboquant import format as tqf


def text_table(rows: list[dict], cols: list[str]) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    for r in rows:
        lines.append("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)))
    return "\n".join(lines)


def distortion(dim: int, bits: int, mode: str, n: int, seed: int) -> dict:
    """Empirical D_mse or D_prod on n random unit vectors, next to the paper's bounds."""
    from turboquant.reference import codebook as cbk
    from turboquant.reference.qjl import qjl_matrix
    from turboquant.reference.quantizer import InstanceParams, decode_instances, encode_instances
    from turboquant.reference.rotation import rotation_matrix

    tqf.check_choice("--mode", mode, tqf.KEY_MODES)
    tqf.check_choice("--bits", bits, tqf.SUPPORTED_BITS)
    qjl = mode == "prod"
    mse_bits = bits - 1 if qjl else bits
    try:
        book = cbk.load(dim, mse_bits) if mse_bits else None
    except ValueError:
        book = cbk.lloyd_max(dim, mse_bits)
    inst = tqf.Instance(0, dim, mse_bits, qjl)
    params = (InstanceParams(inst, np.arange(dim), rotation_matrix("haar", dim, seed), book,
                             qjl_matrix(dim, seed + 1) if qjl else None),)
    rng = np.random.default_rng([seed, 1])  # NumPy data stream, independent of the matrices' SplitMix64 streams
    x = rng.standard_normal((n, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    xt = decode_instances(encode_instances(x, params), params)[0].astype(np.float64)
    lower, upper = 4.0**-bits, np.sqrt(3) * np.pi / 2 * 4.0**-bits
    out = {"dim": dim, "bits": bits, "mode": mode, "n": n, "seed": seed}
    if mode == "mse":
        out.update(empirical=float(np.mean(np.sum((x - xt) ** 2, axis=1))), lower_bound=lower, upper_bound=upper,
                   metric="D_mse = E||x - x~||^2")
    else:
        y = rng.standard_normal((n, dim))
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        err = np.sum(y * xt, axis=1) - np.sum(y * x, axis=1)
        out.update(empirical=float(np.mean(err**2)), lower_bound=lower / dim, upper_bound=np.sqrt(3) * np.pi**2 / dim
                   * 4.0**-bits, metric="D_prod = E|<y,x> - <y,x~>|^2 (||y||=1)",
                   mean_error=float(np.mean(err)), mean_error_stderr=float(np.std(err) / np.sqrt(n)))
    out["within_bounds"] = bool(out["lower_bound"] <= out["empirical"] <= out["upper_bound"])
    return out


def synthetic_workload(seed: int, seq_len: int, num_kv_heads: int = 2, q_per_kv: int = 4, d: int = 128):
    """Keys with LLM-like structure (a few large outlier channels, a per-channel
    bias), Gaussian values, and queries aimed at a handful of earlier keys so
    that attention is peaky the way trained retrieval heads are."""
    rng = np.random.default_rng(seed)
    ch = np.exp(rng.normal(0, 0.5, d))
    ch[rng.choice(d, 4, replace=False)] *= 8  # outlier channels
    key = (rng.standard_normal((seq_len, num_kv_heads, d)) * ch + rng.normal(0, 0.5, d)).astype(np.float32)
    value = rng.standard_normal((seq_len, num_kv_heads, d)).astype(np.float32)
    targets = rng.integers(0, seq_len, (num_kv_heads, q_per_kv))
    q = np.empty((1, num_kv_heads * q_per_kv, d), np.float32)
    for h in range(num_kv_heads):
        for g in range(q_per_kv):
            k = key[targets[h, g], h]
            q[0, h * q_per_kv + g] = 2.5 * np.sqrt(d) * k / np.dot(k, k) ** 0.5 * 0.35 + rng.standard_normal(d) * 0.3
    return key, value, q


def attention_fidelity(preset: str, key, value, query, block_size: int = 16) -> dict:
    from turboquant import reference as ref

    fmt = tqf.LayerFormat(tqf.get_preset(preset), key.shape[-1])
    seq_len, hkv, _ = key.shape
    nblk = -(-seq_len // block_size)
    cache = ref.new_cache(fmt, nblk, block_size, hkv)
    block_table = np.random.default_rng(1).permutation(nblk)[None].astype(np.int32)
    pos = np.arange(seq_len)
    ref.store(cache, key, value, block_table[0, pos // block_size] * block_size + pos % block_size, fmt)
    out = ref.decode_attention(query, cache, block_table, np.array([seq_len]), fmt)
    exact = ref.dense_attention(query, key, value, causal_offset=seq_len - 1)
    rel = float(np.linalg.norm(out - exact) / np.linalg.norm(exact))
    # attention distribution fidelity: KL(p_exact || p_quant) and top-1 agreement
    from turboquant.reference.attention import key_scores
    from turboquant.reference.cache import gather_tokens
    from turboquant.reference.slot import unpack_fields

    fields = unpack_fields(gather_tokens(cache, block_table[0], seq_len), fmt)
    g = query.shape[1] // hkv
    qg = query[0].reshape(hkv, g, -1)
    s_q = key_scores(qg, fields, fmt) / np.sqrt(fmt.head_size)
    s_x = np.einsum("hgd,thd->hgt", qg.astype(np.float64), key.astype(np.float64)) / np.sqrt(fmt.head_size)

    def logsoftmax(s):
        m = s.max(-1, keepdims=True)
        return s - m - np.log(np.exp(s - m).sum(-1, keepdims=True))

    lp_x, lp_q = logsoftmax(s_x), logsoftmax(s_q)
    kl = float(np.mean(np.sum(np.exp(lp_x) * (lp_x - lp_q), axis=-1)))
    top1 = float(np.mean(np.argmax(s_x, -1) == np.argmax(s_q, -1)))
    return {"preset": preset, "bytes": fmt.slot_bytes, "attn_rel_err": rel, "kl": kl, "top1": top1}


def run_report(seed: int = 0, quick: bool = False) -> int:
    t0 = time.time()
    print("TurboQuant reference demo (NumPy; no GPU or vLLM needed)\n")
    rows = tqf.preset_table(128)
    print("1. Presets at head_size=128 (bf16 = 512 B per token per KV head)")
    print(text_table(rows, ["preset", "bytes_per_token_per_kv_head", "compression_vs_bf16", "description"]))
    n = 2000 if quick else 10_000
    print(f"\n2. Distortion on {n} random unit vectors, d=128, next to the paper's bounds")
    drows = []
    for mode in ("mse", "prod"):
        for b in (1, 2, 3, 4):
            r = distortion(128, b, mode, n, seed)
            drows.append({"mode": mode, "bits": b, "empirical": f"{r['empirical']:.5g}",
                          "paper_lower": f"{r['lower_bound']:.5g}", "paper_upper": f"{r['upper_bound']:.5g}",
                          "within": r["within_bounds"]})
    print(text_table(drows, ["mode", "bits", "empirical", "paper_lower", "paper_upper", "within"]))
    seq_len = 1024 if quick else 4096
    print(f"\n3. Decode-attention fidelity, synthetic peaky workload ({seq_len} tokens, 2 KV heads x 4 query heads),"
          " against exact float64 attention")
    key, value, query = synthetic_workload(seed, seq_len)
    frows = []
    for name in tqf.PRESETS:
        r = attention_fidelity(name, key, value, query)
        frows.append({"preset": name, "bytes": r["bytes"], "attn_rel_err": f"{r['attn_rel_err']:.4f}",
                      "KL(exact||quant)": f"{r['kl']:.2e}", "top1_agree": f"{r['top1']:.2f}"})
    frows.sort(key=lambda r: r["bytes"])
    print(text_table(frows, ["preset", "bytes", "attn_rel_err", "KL(exact||quant)", "top1_agree"]))
    print(f"\ndone in {time.time() - t0:.1f} s")
    return 0

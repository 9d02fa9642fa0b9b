"""The one shared set of conformance cases and their inputs.

Every implementation runs the same cases; ``scale`` picks the sizes
("small": CPU interpreter / CI, "full": a GPU).  Inputs are float32 arrays
whose values are exactly representable in the case's ``dtype`` (float16 or
bfloat16), so every implementation sees bit-identical inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from turboquant import format as tqf


@dataclass(frozen=True)
class Case:
    preset: str
    head_size: int
    num_kv_heads: int
    q_per_kv: int
    block_size: int
    seq_lens: tuple[int, ...]
    query_lens: tuple[int, ...]  # 1 per sequence: decode; more: extend
    dtype: str = "bfloat16"
    seed: int = 0
    pad_slots: int = 3  # padding tokens (slot -1) interleaved in the store batch
    layer: int = 0
    magnitude: float = 1.0  # keys and queries scaled by this: scores far beyond fp16's range

    @property
    def id(self) -> str:
        kind = "decode" if set(self.query_lens) == {1} else "extend"
        mag = f"-x{self.magnitude:g}" if self.magnitude != 1.0 else ""
        return (f"{self.preset}-d{self.head_size}-h{self.num_kv_heads}x{self.q_per_kv}-bs{self.block_size}-"
                f"{kind}-L{max(self.seq_lens)}-{self.dtype}-s{self.seed}{mag}")

    @property
    def fmt(self) -> tqf.LayerFormat:
        return tqf.LayerFormat(tqf.get_preset(self.preset), self.head_size, layer=self.layer)


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values rounded (nearest even) to float16 / bfloat16 / float32."""
    x = np.asarray(x, np.float32)
    if dtype == "float32":
        return x
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        u = x.view(np.uint32).astype(np.uint64)
        r = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
        r = np.where(np.isnan(x), np.uint32(0x7FC00000), r)
        return r.view(np.float32)
    raise ValueError(f"dtype={dtype!r} is not supported; allowed: float32, float16, bfloat16")


def cases(scale: str = "small") -> list[Case]:
    """Every preset at d=128 plus head sizes, GQA, block sizes, extend, dtypes."""
    big = scale == "full"
    out = []
    for i, name in enumerate(tqf.PRESETS):
        out.append(Case(name, 128, 2, 4, 16, (37, 160, 1) if not big else (1500, 4097, 1), (1, 1, 1), seed=i))
        out.append(Case(name, 128, 2, 2, 16, (40, 23) if not big else (700, 2300), (7, 23) if not big else (64, 300),
                        dtype="float16", seed=100 + i, layer=3))
    for d in (64, 256) if not big else (64, 80, 96, 112, 192, 256):
        out.append(Case("tq3", d, 1, 8, 32, (50, 9) if not big else (3000, 17), (1, 1), seed=200 + d))
        out.append(Case("tq4_qjl", d, 2, 1, 16, (33,) if not big else (1025,), (1,), seed=300 + d))
    out.append(Case("tq3", 128, 4, 1, 64, (130, 5) if not big else (9000, 5), (1, 1), dtype="float16", seed=7))
    # scores of ~1e5-1e7 (|q| |k| with both scaled): beyond fp16, so kernels must not hold them in fp16
    out.append(Case("tq3", 128, 2, 4, 16, (37, 90), (1, 1), seed=400, magnitude=1e3))
    out.append(Case("tq4_qjl", 128, 2, 2, 16, (40, 23), (7, 23), dtype="float16", seed=401, magnitude=100.0))
    # bf16 prefill rows (the dense prefill path on a GPU), decodes first as vLLM orders a mixed step
    out.append(Case("k4v3", 128, 2, 4, 16, (45, 30, 41) if not big else (3000, 900, 2100), (1, 30, 12) if not big
                    else (1, 900, 512), seed=402))
    out.append(Case("tq2.5", 128, 2, 4, 32, (50, 8) if not big else (1200, 333), (50, 3) if not big else (1200, 77),
                    seed=403))
    return out


def paged_layout(rng: np.random.Generator, seq_lens, block_size: int, spare: int = 0):
    """A random permuted block table for sequences of ``seq_lens`` tokens and the slot
    mapping of all their tokens in order: (num_blocks, block_table [B, max_blocks] int32,
    slot_mapping [sum(seq_lens)] int64).  ``spare`` extra blocks stay unused."""
    blocks_per_seq = [-(-L // block_size) for L in seq_lens]
    num_blocks = sum(blocks_per_seq) + spare
    perm = rng.permutation(num_blocks)
    block_table = np.zeros((len(seq_lens), max(blocks_per_seq)), np.int32)
    slots, start = [], 0
    for b, (L, nb) in enumerate(zip(seq_lens, blocks_per_seq)):
        block_table[b, :nb] = perm[start:start + nb]
        start += nb
        pos = np.arange(L)
        slots.append(block_table[b, pos // block_size].astype(np.int64) * block_size + pos % block_size)
    return num_blocks, block_table, np.concatenate(slots)


def make_inputs(case: Case) -> dict:
    """Random K/V with per-channel scales (outlier channels like real keys),
    queries, a random permuted block table and a padded slot mapping."""
    rng = np.random.default_rng(case.seed)
    d, h, bs = case.head_size, case.num_kv_heads, case.block_size
    num_blocks, block_table, slot_mapping = paged_layout(rng, case.seq_lens, bs, spare=3)
    n = slot_mapping.size
    pad_at = np.sort(rng.integers(0, n + 1, case.pad_slots))
    slot_mapping = np.insert(slot_mapping, pad_at, -1)
    ch_scale = np.exp(rng.normal(0, 0.6, d)).astype(np.float32)
    ch_bias = rng.normal(0, 0.3, d).astype(np.float32)
    key = round_to((rng.standard_normal((slot_mapping.size, h, d)) * ch_scale + ch_bias) * case.magnitude, case.dtype)
    value = round_to(rng.standard_normal((slot_mapping.size, h, d)), case.dtype)
    nq = sum(case.query_lens)
    query = round_to(rng.standard_normal((nq, h * case.q_per_kv, d)) * 1.5 * case.magnitude, case.dtype)
    qsl = np.concatenate([[0], np.cumsum(case.query_lens)]).astype(np.int32)
    return {
        "key": key, "value": value, "slot_mapping": slot_mapping,
        "num_blocks": num_blocks, "block_table": block_table,
        "seq_lens": np.asarray(case.seq_lens, np.int32), "query": query, "query_start_loc": qsl,
    }

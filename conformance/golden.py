"""Golden byte-level test vectors: one JSON file per preset in golden/.

Each file holds float32 inputs chosen so that no rotated coordinate lies
within 10x CODE_MARGIN of a boundary, no QJL projection within 10x
SIGN_MARGIN of 0 and no group value within 10x GROUP_CODE_MARGIN of a rounding
point: every conformant implementation must reproduce the bytes exactly.
Edge tokens are included: a zero vector, a NaN token, a 2^100-scaled and a
2^-140-scaled (denormal) copy of a regular token.  Arrays are base64 of
little-endian bytes.  Regenerate with ``python scripts/build_golden.py``.
"""

from __future__ import annotations

import base64
import json
from importlib import resources

import numpy as np

from turboquant import format as tqf

GOLDEN_HEAD_SIZE = 128
GOLDEN_LAYER = 1
GOLDEN_BLOCK_SIZE = 4
GOLDEN_KV_HEADS = 2
GOLDEN_Q_PER_KV = 2
CACHE_FILL = 0xA5  # the cache starts with this byte everywhere


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


def unb64(s: str, dtype, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype).reshape(shape).copy()


def golden_format(preset: str) -> tqf.LayerFormat:
    return tqf.LayerFormat(tqf.get_preset(preset), GOLDEN_HEAD_SIZE, layer=GOLDEN_LAYER)


def load(preset: str) -> dict:
    """Decoded arrays of one golden file."""
    raw = json.loads(resources.files("turboquant.conformance").joinpath("golden", f"{preset}.json").read_text())
    n, h, d = raw["num_tokens"], raw["num_kv_heads"], raw["head_size"]
    fmt = golden_format(preset)
    if raw["slot_bytes"] != fmt.slot_bytes or raw["spec_version"] != tqf.SPEC_VERSION:
        raise RuntimeError(f"golden/{preset}.json was made for another format version")
    nseq = len(raw["seq_lens"])
    return {
        "fmt": fmt,
        "key": unb64(raw["key"], "<f4", (n, h, d)),
        "value": unb64(raw["value"], "<f4", (n, h, d)),
        "slot_mapping": np.asarray(raw["slot_mapping"], np.int64),
        "num_blocks": raw["num_blocks"],
        "block_size": raw["block_size"],
        "cache": unb64(raw["cache"], np.uint8, fmt.cache_shape(raw["num_blocks"], raw["block_size"], h)),
        "query": unb64(raw["query"], "<f4", (nseq, h * raw["q_per_kv"], d)),
        "block_table": np.asarray(raw["block_table"], np.int32),
        "seq_lens": np.asarray(raw["seq_lens"], np.int32),
        "output": unb64(raw["output"], "<f4", (nseq, h * raw["q_per_kv"], d)),
    }


def golden_presets() -> list[str]:
    return list(tqf.PRESETS)

"""Outlier channels per layer for presets with an outlier split (tq2.5, tq3.5).

The outlier split quantizes a fixed fraction of the channels with more bits
(the paper's 2.5-bit setting: 32 of 128 channels at 3 bits).  The paper does
not say how those channels are found; ranking them by energy, as here, is this
project's choice (SPEC.md section 12).  Per layer (one channel list serves all
KV heads of a layer: the format has one list per layer), the channels are
ranked by their mean square over the calibration tokens, summed over the KV
heads.  Keys are ranked in RoPE pairs: Llama's rotate-half RoPE mixes channel
i with channel i + head_size/2, so a pair's energy moves between its two
channels with position; whole pairs are chosen by their summed energy.
Calibration uses training-split text, never the evaluation text.  The file
format (``save`` / ``load``) is SPEC.md section 1.3.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from turboquant import format as tqf

if TYPE_CHECKING:  # torch stays unimported for load() (the vLLM plugin reads calibration files)
    from turboquant.quality.activations import LayerActivations


def channel_energy(x: np.ndarray) -> np.ndarray:
    """Mean square per channel of x [batch, heads, tokens, D], summed over heads -> [D]."""
    x = np.asarray(x, np.float64)
    if x.ndim != 4:
        raise ValueError(f"x must be [batch, heads, tokens, head_size], got shape {x.shape}")
    return (x ** 2).mean(axis=(0, 2)).sum(0)


def top_channels(energy: np.ndarray, n: int, rope_pairs: bool) -> tuple[int, ...]:
    """The n highest-energy channels (sorted); with rope_pairs, n/2 whole pairs (i, i + D/2)."""
    d = energy.shape[0]
    if not 0 < n <= d:
        raise ValueError(f"n={n} must lie in [1, head_size={d}]")
    if not rope_pairs:
        return tuple(sorted(int(i) for i in np.argsort(-energy, kind="stable")[:n]))
    if d % 2 or n % 2:
        raise ValueError(f"rope_pairs needs an even head_size and n, got head_size={d}, n={n}")
    half = d // 2
    pair = energy[:half] + energy[half:]
    chosen = np.argsort(-pair, kind="stable")[: n // 2]
    return tuple(sorted([int(i) for i in chosen] + [int(i) + half for i in chosen]))


def outlier_count(preset: str, head_size: int) -> int:
    fmt = tqf.LayerFormat(tqf.get_preset(preset), head_size)
    if not fmt.preset.outlier_fraction:
        raise ValueError(f"preset {preset!r} has no outlier split; allowed: "
                         f"{[p for p, v in tqf.PRESETS.items() if v.outlier_fraction]}")
    return fmt.key_instances[0].dim


def calibrate(acts: list[LayerActivations], preset: str, rope_pairs: bool = True) -> dict[int, tuple]:
    """{layer: (key channels, value channels)} for ``preset`` from captured activations."""
    if not acts:
        raise ValueError("acts is empty: capture activations of calibration text first")
    n = outlier_count(preset, acts[0].head_size)
    return {a.layer: (top_channels(channel_energy(a.k), n, rope_pairs), top_channels(channel_energy(a.v), n, False))
            for a in acts}


def save(outliers: dict[int, tuple], path: str, preset: str) -> None:
    data = {"preset": preset, "layers": {str(layer): {"key": list(k), "value": list(v)}
                                         for layer, (k, v) in sorted(outliers.items())}}
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def load(path: str) -> tuple[str, dict[int, tuple]]:
    with open(path) as f:
        data = json.load(f)
    return str(data["preset"]), {int(layer): (tuple(int(c) for c in v["key"]), tuple(int(c) for c in v["value"]))
                                 for layer, v in data["layers"].items()}


def calibrate_model(model_path: str, preset: str, windows: int = 4, context: int = 512,
                    rope_pairs: bool = True) -> dict[int, tuple]:
    """Outlier channels of every layer of a local Hugging Face causal LM, from ``windows`` windows
    of ``context`` tokens of the training split of the standard-library corpus, tokenized with
    the model's own tokenizer (held-out text stays held out)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from turboquant.quality import activations, corpus

    if windows <= 0 or context <= 1:
        raise ValueError(f"windows={windows} and context={context} must be positive (context >= 2)")
    outlier_count(preset, 128)  # validates the preset (an outlier split) before loading anything
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    ids = np.asarray(tok(corpus.load_text("train", max_bytes=16 * windows * context))["input_ids"], np.int64)
    if ids.size < windows * context:
        raise ValueError(f"the calibration text gives {ids.size} tokens, fewer than windows x context")
    starts = np.linspace(0, ids.size - context, windows).astype(int)
    acts = activations.capture(model, np.stack([ids[s: s + context] for s in starts]))
    return calibrate(acts, preset, rope_pairs)

"""K/V codecs: quantize then dequantize one layer's keys and values.

A codec is called as ``codec(layer, key, value) -> (key~, value~)`` on torch
tensors [batch, num_kv_heads, tokens, head_size] and has ``name`` and
``bytes_per_token(head_size)`` (bytes of one token of one KV head, K and V).

* :class:`TurboQuantCodec` runs the NumPy reference (``encode_slots`` then
  ``decode_slots``) with the layer's ``LayerFormat`` (per-layer seeds, and the
  calibrated outlier channels for presets with an outlier split).
* :class:`Bf16Codec` rounds to bfloat16 (the uncompressed vLLM cache).
* :class:`Fp8Codec` emulates an FP8 e4m3 cache with one scale per tensor
  (amax / 448 of each layer's K, and of its V, in each call).
* :class:`IdentityCodec` keeps the model's own values.
* :class:`LayerSplitCodec` keeps some layers in bf16 and passes the others to
  another codec (vLLM's TurboQuant presets keep the first and last two layers
  in bf16; this makes the same split measurable for ours).
"""

from __future__ import annotations

import numpy as np
import torch

from turboquant import format as tqf
from turboquant.reference import decode_slots, encode_slots

FP8_E4M3_MAX = 448.0


def _check_kv(key: torch.Tensor, value: torch.Tensor) -> None:
    if key.ndim != 4 or key.shape != value.shape:
        raise ValueError(f"key and value must be [batch, num_kv_heads, tokens, head_size] of one shape, "
                         f"got {tuple(key.shape)} and {tuple(value.shape)}")


class IdentityCodec:
    name = "fp32"

    def bytes_per_token(self, head_size: int) -> float:
        return 2 * 4 * head_size

    def __call__(self, layer: int, key: torch.Tensor, value: torch.Tensor):
        _check_kv(key, value)
        return key, value


class Bf16Codec:
    name = "bf16"

    def bytes_per_token(self, head_size: int) -> float:
        return tqf.bf16_slot_bytes(head_size)

    def __call__(self, layer, key, value):
        _check_kv(key, value)
        return key.to(torch.bfloat16).to(key.dtype), value.to(torch.bfloat16).to(value.dtype)


def fp8_e4m3_roundtrip(x: torch.Tensor) -> torch.Tensor:
    """x quantized to float8 e4m3 with the per-tensor scale amax/448, dequantized."""
    x32 = x.float()
    amax = x32.abs().max()
    scale = torch.where(amax > 0, amax / FP8_E4M3_MAX, torch.ones_like(amax))
    q = (x32 / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return (q.float() * scale).to(x.dtype)


class Fp8Codec:
    name = "fp8_e4m3"

    def bytes_per_token(self, head_size: int) -> float:
        return 2 * head_size  # one byte per element; the two per-tensor scales are negligible

    def __call__(self, layer, key, value):
        _check_kv(key, value)
        return fp8_e4m3_roundtrip(key), fp8_e4m3_roundtrip(value)


class TurboQuantCodec:
    """A TurboQuant preset through the NumPy reference.

    ``outliers`` maps a layer index to (key channels, value channels) for
    presets with an outlier split (from :mod:`turboquant.quality.calibrate`);
    without it such presets use the uncalibrated default channels 0..n-1."""

    def __init__(self, preset: str, head_size: int, outliers: dict[int, tuple] | None = None,
                 base_seed: int = tqf.DEFAULT_BASE_SEED, name: str | None = None):
        self.preset = tqf.get_preset(preset)
        tqf.check_choice("head_size", head_size, tqf.SUPPORTED_HEAD_SIZES)
        if outliers and not self.preset.outlier_fraction:
            raise ValueError(f"outliers given but preset {preset!r} has no outlier split")
        self.head_size = head_size
        self.outliers = dict(outliers or {})
        self.base_seed = base_seed
        self.name = name or (preset + ("+cal" if self.outliers else ""))
        self._formats: dict[int, tqf.LayerFormat] = {}

    def layer_format(self, layer: int) -> tqf.LayerFormat:
        if layer not in self._formats:
            kc, vc = self.outliers.get(layer, (None, None))
            self._formats[layer] = tqf.LayerFormat(
                self.preset, self.head_size, layer=layer, base_seed=self.base_seed,
                key_outlier_channels=None if kc is None else tuple(int(c) for c in kc),
                value_outlier_channels=None if vc is None else tuple(int(c) for c in vc),
            )
        return self._formats[layer]

    def bytes_per_token(self, head_size: int) -> float:
        if head_size != self.head_size:
            raise ValueError(f"head_size={head_size} but this codec was built for head_size={self.head_size}")
        return self.layer_format(0).slot_bytes

    def roundtrip(self, layer: int, key: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """numpy K, V [..., head_size] -> dequantized float32 K~, V~ (encode_slots, decode_slots)."""
        fmt = self.layer_format(layer)
        return decode_slots(encode_slots(key, value, fmt), fmt)

    def __call__(self, layer, key, value):
        _check_kv(key, value)
        if key.shape[-1] != self.head_size:
            raise ValueError(f"head_size of key is {key.shape[-1]}, codec built for {self.head_size}")
        k = key.detach().float().cpu().numpy()
        v = value.detach().float().cpu().numpy()
        kq, vq = self.roundtrip(layer, k, v)
        return (torch.from_numpy(kq).to(key.device, key.dtype), torch.from_numpy(vq).to(value.device, value.dtype))


class LayerSplitCodec:
    """Layers in ``bf16_layers`` get ``outer`` (default :class:`Bf16Codec`), every other layer ``inner``
    (SPEC 7.1's boundary layers: ``outer`` is the boundary format).  Bytes per token are the average
    over ``num_layers`` layers."""

    def __init__(self, inner, bf16_layers, num_layers: int, outer=None):
        layers = sorted({int(x) for x in bf16_layers})
        if num_layers < 1 or any(not 0 <= x < num_layers for x in layers):
            raise ValueError(f"bf16_layers={layers} must be layer indices in [0, {num_layers - 1}]")
        self.inner, self.bf16, self.bf16_layers, self.num_layers = inner, outer or Bf16Codec(), frozenset(layers), \
            num_layers
        self.name = f"{inner.name}@{self.bf16.name}={','.join(map(str, layers))}"

    def bytes_per_token(self, head_size: int) -> float:
        n = len(self.bf16_layers)
        return (n * self.bf16.bytes_per_token(head_size)
                + (self.num_layers - n) * self.inner.bytes_per_token(head_size)) / self.num_layers

    def __call__(self, layer, key, value):
        return (self.bf16 if layer in self.bf16_layers else self.inner)(layer, key, value)


def make_codec(name: str, head_size: int, outliers: dict[int, tuple] | None = None):
    """'fp32', 'bf16', 'fp8_e4m3' or a TurboQuant preset name."""
    fixed = {"fp32": IdentityCodec, "bf16": Bf16Codec, "fp8_e4m3": Fp8Codec}
    if name in fixed:
        return fixed[name]()
    if name not in tqf.PRESETS:
        raise ValueError(f"codec={name!r} is not supported; allowed values: {list(fixed) + list(tqf.PRESETS)}")
    return TurboQuantCodec(name, head_size, outliers)

"""One slot = one token of one KV head: encode K and V into the bytes of
``LayerFormat.fields`` and back (SPEC.md, "Slot layout")."""

from __future__ import annotations

import numpy as np

from turboquant import format as tqf

from .pack import pack_bits, unpack_bits
from .quantizer import decode_instances, encode_instances, layer_params, scatter_channels
from .values import group_dequantize, group_quantize


def check_kv(name: str, x: np.ndarray, fmt: tqf.LayerFormat) -> np.ndarray:
    """Validate a key/value/query array: float dtype, last axis == head_size."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"{name}.dtype={x.dtype} is not supported; allowed: float16, float32, float64")
    if x.ndim < 1 or x.shape[-1] != fmt.head_size:
        raise ValueError(f"{name} must have last dimension head_size={fmt.head_size}, got shape {x.shape}")
    return x


def encode_stages(key: np.ndarray, value: np.ndarray, fmt: tqf.LayerFormat) -> dict:
    """Every intermediate stage of the encoder, for conformance tests:
    {"key": {instance: stages}, "value": {instance: stages} | group stages}."""
    check_kv("key", key, fmt)
    check_kv("value", value, fmt)
    if key.shape != value.shape:
        raise ValueError(f"key and value shapes differ: {key.shape} vs {value.shape}")
    params = layer_params(fmt)
    out = {"key": encode_instances(key, params.keys)}
    if fmt.preset.value_mode == "group":
        out["value"] = group_quantize(value, fmt.preset.value_bits, fmt.preset.group_size)
    else:
        out["value"] = encode_instances(value, params.values)
    return out


def stages_to_fields(stages: dict, fmt: tqf.LayerFormat) -> dict[str, np.ndarray]:
    """Map encoder stages to named slot fields (unpacked values)."""
    f = {}
    for i, st in stages["key"].items():
        f[f"k_norm.{i}"] = st["norm"]
        if "signs" in st:
            f[f"k_rnorm.{i}"] = st["rnorm"]
            f[f"k_signs.{i}"] = st["signs"]
        f[f"k_codes.{i}"] = st["codes"]
    if fmt.preset.value_mode == "group":
        f["v_scale"] = stages["value"]["scale"]
        f["v_zero"] = stages["value"]["zero"]
        f["v_codes"] = stages["value"]["codes"]
    else:
        for i, st in stages["value"].items():
            f[f"v_norm.{i}"] = st["norm"]
            f[f"v_codes.{i}"] = st["codes"]
    return {k: v for k, v in f.items() if k in fmt.field_map}


def pack_fields(fields: dict[str, np.ndarray], fmt: tqf.LayerFormat) -> np.ndarray:
    """Named fields -> uint8 [..., slot_bytes] (padding bytes are 0)."""
    lead = np.shape(fields["k_norm.0"])  # every format starts with the key norm
    out = np.zeros((*lead, fmt.slot_bytes), np.uint8)
    for fd in fmt.fields:
        val = fields[fd.name]
        if fd.dtype == "f4":
            raw = np.asarray(val, dtype="<f4").reshape(*lead, 1).view(np.uint8)
        elif fd.dtype == "f2":
            raw = np.ascontiguousarray(np.asarray(val, dtype="<f2")).view(np.uint8)
        else:
            raw = pack_bits(val, fd.bits)
        out[..., fd.offset : fd.offset + fd.nbytes] = raw
    return out


def unpack_fields(slots: np.ndarray, fmt: tqf.LayerFormat) -> dict[str, np.ndarray]:
    """uint8 [..., slot_bytes] -> named fields (f4/f2 as floats, streams as codes)."""
    if slots.dtype != np.uint8 or slots.shape[-1] != fmt.slot_bytes:
        raise ValueError(f"slots must be uint8 [..., slot_bytes={fmt.slot_bytes}], got {slots.dtype} {slots.shape}")
    out = {}
    for fd in fmt.fields:
        raw = np.ascontiguousarray(slots[..., fd.offset : fd.offset + fd.nbytes])
        if fd.dtype == "f4":
            out[fd.name] = raw.view("<f4")[..., 0]
        elif fd.dtype == "f2":
            out[fd.name] = raw.view("<f2")
        else:
            out[fd.name] = unpack_bits(raw, fd.bits, fd.count)
    return out


def encode_slots(key: np.ndarray, value: np.ndarray, fmt: tqf.LayerFormat) -> np.ndarray:
    """K, V [..., head_size] -> packed slots uint8 [..., slot_bytes]."""
    return pack_fields(stages_to_fields(encode_stages(key, value, fmt), fmt), fmt)


def fields_to_instances(fields: dict, tensor: str, params) -> dict[int, dict[str, np.ndarray]]:
    p = "k" if tensor == "key" else "v"
    out = {}
    for ip in params:
        i = ip.instance.index
        st = {"norm": fields[f"{p}_norm.{i}"]}
        st["codes"] = fields.get(f"{p}_codes.{i}", np.zeros((*st["norm"].shape, ip.instance.dim), np.uint8))
        if ip.qjl is not None:
            st["signs"] = fields[f"{p}_signs.{i}"]
            st["rnorm"] = fields[f"{p}_rnorm.{i}"]
        out[i] = st
    return out


def decode_slots(slots: np.ndarray, fmt: tqf.LayerFormat) -> tuple[np.ndarray, np.ndarray]:
    """Packed slots -> dequantized (K~, V~) float32 [..., head_size]."""
    fields = unpack_fields(slots, fmt)
    params = layer_params(fmt)
    k = scatter_channels(decode_instances(fields_to_instances(fields, "key", params.keys), params.keys),
                         params.keys, fmt.head_size)
    if fmt.preset.value_mode == "group":
        v = group_dequantize(fields["v_scale"], fields["v_zero"], fields["v_codes"], fmt.preset.group_size)
    else:
        v = scatter_channels(decode_instances(fields_to_instances(fields, "value", params.values), params.values),
                             params.values, fmt.head_size)
    return k, v

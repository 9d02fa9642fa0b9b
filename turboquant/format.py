"""The TurboQuant KV-cache format: the one Python source of truth.

Everything that decides bytes lives here (or in the shipped codebook data it
points to): supported parameters, presets, seed derivation, the slot layout,
the page layout, the exactness margins.  SPEC.md describes the same format in
prose; ``tests/test_spec_tables.py`` checks that SPEC.md's tables are the ones
this module generates.  The reference, the Triton kernels and the vLLM plugin
import from here and never re-derive a constant.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

SPEC_VERSION = 2  # 2: portable SplitMix64 matrices (1: NumPy PCG64 + LAPACK QR)

# ---------------------------------------------------------------- parameters
SUPPORTED_HEAD_SIZES = (64, 80, 96, 112, 128, 192, 256)
SUPPORTED_BITS = (1, 2, 3, 4)
KEY_MODES = ("mse", "prod")
VALUE_MODES = ("mse", "group")
ROTATION_KINDS = ("haar", "hadamard")
SUPPORTED_GROUP_SIZES = (16, 32, 64, 128)
# Outlier-channel split: a fraction of the channels (in the original, unrotated
# coordinates) is quantized by a second, independent TurboQuant instance with
# more bits.  The paper's 2.5-bit setting is 32 of 128 channels at 3 bits (0.25);
# for 3.5 bits it gives no ratio, and 0.5 at 4 bits is this format's choice
# (SPEC.md section 12).  Allowed fractions of the head size:
OUTLIER_FRACTIONS = (0.0, 0.25, 0.5)

DEFAULT_BASE_SEED = 20250425  # arXiv 2504.19874 was submitted 2025-04-25

# ---------------------------------------------------------------- storage
NORM_DTYPE = np.dtype("<f4")  # ||x||, and the QJL residual norm gamma
GROUP_PARAM_DTYPE = np.dtype("<f2")  # value-group scale and zero
NORM_NAN_BITS = 0x7FC00000  # canonical quiet NaN for a non-finite token
GROUP_NAN_BITS = 0x7E00
FP16_MAX = 65504.0
SLOT_ALIGN = 4  # every slot is padded to a multiple of this many bytes

# ---------------------------------------------------------------- exactness
# A code may differ from the reference's only where the reference's rotated
# float32 coordinate lies within CODE_MARGIN of a decision boundary (and then
# only by one step).  Units: coordinates of the unit vector after rotation.
CODE_MARGIN = 3e-5
# QJL sign bits may differ only where |(S r)_j| < SIGN_MARGIN (r: the residual
# of the unit vector) and only for tokens whose MSE codes all agree.
SIGN_MARGIN = 1e-4
# Value-group codes may differ only where (v - zero)/scale is within this many
# code steps of a rounding point (k + 0.5).
GROUP_CODE_MARGIN = 1e-4
# Stored float32 norms: relative difference allowed between implementations.
NORM_RTOL = 4e-6
# QJL residual norm gamma (unit-vector units), for tokens whose codes agree.
RNORM_ATOL = 2e-5
# Attention over identical cache bytes: ||out - ref|| / ||ref|| per call.
ATTN_RTOL_FP32 = 1e-4
ATTN_RTOL_HALF = 1e-2  # fp16 / bf16 outputs (one output rounding + inputs)


def qjl_scale(m: int) -> float:
    """Scale of the QJL dequantizer, sqrt(pi/2)/m, for an m x d matrix S."""
    return float(np.sqrt(np.pi / 2.0) / m)


# ---------------------------------------------------------------- errors
def check_choice(name: str, value, allowed) -> None:
    """Raise ValueError naming the parameter and the allowed values."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {list(allowed)}")


# ---------------------------------------------------------------- seeds
# Which random numbers build Pi and S (SPEC.md section 2; reference/rng.py and
# reference/rotation.py are the readable NumPy form).  Each matrix has its own
# stream: the 64-bit seed ``derive_seed(base_seed, layer, purpose, instance)``
# with purpose one of SEED_PURPOSES.  Word k of a stream is the SplitMix64
# output for state seed + (k+1)*GAMMA (mod 2^64); uniforms, Box-Muller normals
# and Rademacher signs are made from the words as SPEC.md says.
RANDOM_GENERATOR = "splitmix64-counter/box-muller/mgs-qr"
SEED_PURPOSES = ("rotation", "qjl")  # stream ids: Pi (and Hadamard signs), S
SPLITMIX64_GAMMA = 0x9E3779B97F4A7C15
SPLITMIX64_MULTIPLIERS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
SPLITMIX64_SHIFTS = (30, 27, 31)
BOX_MULLER_TWO_PI = 6.283185307179586  # float64 nearest to 2*pi (= 2 * math.pi)
# Pi and S are computed in float64 and rounded to float32 (SPEC.md section 2
# says what tolerance float64 libm and summation-order differences get).


def derive_seed(base_seed: int, layer: int, purpose: str, instance: int = 0) -> int:
    """Seed of one random matrix: the first 8 bytes (little endian) of
    SHA-256("turboquant/v1/{base_seed}/{layer}/{purpose}/{instance}").  The
    "v1" is a fixed label of this rule, not SPEC_VERSION."""
    check_choice("purpose", purpose, SEED_PURPOSES)
    if int(base_seed) < 0 or int(layer) < 0:
        raise ValueError(f"base_seed and layer must be >= 0, got {base_seed}, {layer}")
    text = f"turboquant/v1/{int(base_seed)}/{int(layer)}/{purpose}/{int(instance)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


# ---------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """A named quantization recipe.  Bits are per coordinate; for key mode
    ``prod`` ``key_bits`` counts the QJL bit (b-1 Lloyd-Max bits + 1 sign)."""

    name: str
    key_mode: str
    key_bits: int
    value_mode: str
    value_bits: int
    group_size: int = 32  # used by value_mode "group" only
    rotation: str = "haar"
    outlier_fraction: float = 0.0
    key_outlier_bits: int = 0  # bits of the outlier instance (when fraction > 0)
    value_outlier_bits: int = 0
    description: str = ""

    def __post_init__(self):
        check_choice("key_mode", self.key_mode, KEY_MODES)
        check_choice("value_mode", self.value_mode, VALUE_MODES)
        check_choice("key_bits", self.key_bits, SUPPORTED_BITS)
        check_choice("value_bits", self.value_bits, SUPPORTED_BITS)
        check_choice("rotation", self.rotation, ROTATION_KINDS)
        check_choice("outlier_fraction", self.outlier_fraction, OUTLIER_FRACTIONS)
        if self.value_mode == "group":
            check_choice("group_size", self.group_size, SUPPORTED_GROUP_SIZES)
        if self.outlier_fraction:
            check_choice("key_outlier_bits", self.key_outlier_bits, SUPPORTED_BITS)
            if self.value_mode == "mse":
                check_choice("value_outlier_bits", self.value_outlier_bits, SUPPORTED_BITS)
            if self.rotation != "haar":
                raise ValueError("rotation='hadamard' cannot be combined with an outlier split; use 'haar'")


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tq4", "mse", 4, "mse", 4, description="4-bit keys and values (<=136 B at d=128)"),
        Preset("tq3", "mse", 3, "mse", 3, description="3-bit keys and values (<=104 B at d=128)"),
        Preset("tq2", "mse", 2, "mse", 2, description="2-bit keys and values"),
        Preset("tq4_qjl", "prod", 4, "mse", 4, description="keys 3-bit Lloyd-Max + 1-bit QJL (paper Alg. 2)"),
        Preset("tq3_qjl", "prod", 3, "mse", 3, description="keys 2-bit Lloyd-Max + 1-bit QJL (paper Alg. 2)"),
        Preset("tq3_hadamard", "mse", 3, "mse", 3, rotation="hadamard",
               description="tq3 with a sign-randomised Walsh-Hadamard rotation (not in the paper; "
                           "no worst-case D_mse bound, SPEC.md section 12)"),
        Preset("k4v3", "mse", 4, "mse", 3, description="4-bit keys, 3-bit values"),
        Preset("k4g4", "mse", 4, "group", 4, group_size=32,
               description="4-bit keys, 4-bit min/max value groups of 32 (not from the paper)"),
        Preset("tq3.5", "mse", 3, "mse", 3, outlier_fraction=0.5, key_outlier_bits=4, value_outlier_bits=4,
               description="3.5-bit split (this format's ratio): half the channels at 4 bits, half at 3"),
        Preset("tq2.5", "mse", 2, "mse", 2, outlier_fraction=0.25, key_outlier_bits=3, value_outlier_bits=3,
               description="paper's 2.5-bit ratio: a quarter of the channels at 3 bits, the rest at 2"),
    )
}


def get_preset(name: str) -> Preset:
    check_choice("preset", name, tuple(PRESETS))
    return PRESETS[name]


# ---------------------------------------------------------------- instances
@dataclass(frozen=True)
class Instance:
    """One independent TurboQuant quantizer over ``dim`` channels of K or V.

    ``mse_bits`` Lloyd-Max bits per coordinate (0 allowed for prod at b=1),
    ``qjl`` whether a 1-bit QJL sketch of the residual follows (key mode
    prod), ``index`` selects the rotation / QJL seeds (instance i of K and of
    V share the rotation of that layer)."""

    index: int
    dim: int
    mse_bits: int
    qjl: bool


def _instances(mode: str, bits: int, outlier_bits: int, d: int, fraction: float) -> tuple[Instance, ...]:
    qjl = mode == "prod"
    mse = (lambda b: b - 1) if qjl else (lambda b: b)
    if not fraction:
        return (Instance(0, d, mse(bits), qjl),)
    n_out = int(round(d * fraction))
    return (Instance(0, n_out, mse(outlier_bits), qjl), Instance(1, d - n_out, mse(bits), qjl))


# ---------------------------------------------------------------- slot layout
@dataclass(frozen=True)
class Field:
    """One field of a slot: ``count`` elements of ``dtype`` at ``offset``."""

    name: str
    offset: int
    nbytes: int
    dtype: str  # "f4", "f2" or "u8" (bit-packed stream)
    count: int  # elements (f4/f2) or packed codes (u8)
    bits: int = 8  # bits per packed element for "u8" streams


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes taken by ``count`` codes of ``bits`` bits packed LSB-first."""
    return (count * bits + 7) // 8


@dataclass(frozen=True)
class LayerFormat:
    """The format of one attention layer: preset + head size + seeds.

    ``slot_bytes`` is the size of one token of one KV head (keys and values
    and all metadata).  ``fields`` lists the slot's fields in byte order.
    """

    preset: Preset
    head_size: int
    layer: int = 0
    base_seed: int = DEFAULT_BASE_SEED
    key_outlier_channels: tuple[int, ...] | None = field(default=None, compare=True)
    value_outlier_channels: tuple[int, ...] | None = field(default=None, compare=True)

    def __post_init__(self):
        check_choice("head_size", self.head_size, SUPPORTED_HEAD_SIZES)
        if self.preset.rotation == "hadamard" and self.head_size & (self.head_size - 1):
            raise ValueError(
                f"rotation='hadamard' needs a power-of-two head_size, got head_size={self.head_size}; "
                f"allowed: {[d for d in SUPPORTED_HEAD_SIZES if not d & (d - 1)]}"
            )
        if self.preset.value_mode == "group" and self.head_size % self.preset.group_size:
            raise ValueError(
                f"group_size={self.preset.group_size} must divide head_size={self.head_size}; "
                f"allowed group sizes here: {[g for g in SUPPORTED_GROUP_SIZES if self.head_size % g == 0]}"
            )
        for name in ("key_outlier_channels", "value_outlier_channels"):
            chans = getattr(self, name)
            if chans is None:
                continue
            n_out = self.key_instances[0].dim if self.preset.outlier_fraction else 0
            if not self.preset.outlier_fraction:
                raise ValueError(f"{name} given but preset {self.preset.name!r} has no outlier split")
            if len(chans) != n_out or len(set(chans)) != n_out or not all(0 <= c < self.head_size for c in chans):
                raise ValueError(
                    f"{name} must be {n_out} distinct channel indices in [0, {self.head_size}), got {chans!r}"
                )

    # --- instances
    @cached_property
    def key_instances(self) -> tuple[Instance, ...]:
        p = self.preset
        return _instances(p.key_mode, p.key_bits, p.key_outlier_bits, self.head_size, p.outlier_fraction)

    @cached_property
    def value_instances(self) -> tuple[Instance, ...]:
        p = self.preset
        if p.value_mode == "group":
            return ()
        return _instances("mse", p.value_bits, p.value_outlier_bits, self.head_size, p.outlier_fraction)

    def channel_split(self, tensor: str) -> tuple[np.ndarray, ...]:
        """Channel indices of each instance of ``tensor`` ('key'/'value'):
        outlier instance first (the given channels, sorted ascending), then
        the remaining channels in ascending order.  Without calibration the
        "outlier" channels are 0..n_out-1: an arbitrary split (SPEC.md section 12)."""
        check_choice("tensor", tensor, ("key", "value"))
        insts = self.key_instances if tensor == "key" else self.value_instances
        if len(insts) == 1:
            return (np.arange(self.head_size),)
        chans = self.key_outlier_channels if tensor == "key" else self.value_outlier_channels
        out = np.sort(np.asarray(chans if chans is not None else range(insts[0].dim), dtype=np.int64))
        rest = np.setdiff1d(np.arange(self.head_size), out)
        return (out, rest)

    @property
    def n_groups(self) -> int:
        return self.head_size // self.preset.group_size if self.preset.value_mode == "group" else 0

    # --- layout
    @cached_property
    def fields(self) -> tuple[Field, ...]:
        """Fields in byte order: 4-byte floats, then 2-byte floats, then the
        bit-packed streams; the slot is padded to SLOT_ALIGN bytes."""
        f4, f2, u8 = [], [], []
        for inst in self.key_instances:
            f4.append((f"k_norm.{inst.index}", "f4", 1, 8))
        for inst in self.key_instances:
            if inst.qjl:
                f4.append((f"k_rnorm.{inst.index}", "f4", 1, 8))
        for inst in self.value_instances:
            f4.append((f"v_norm.{inst.index}", "f4", 1, 8))
        if self.preset.value_mode == "group":
            f2.append(("v_scale", "f2", self.n_groups, 16))
            f2.append(("v_zero", "f2", self.n_groups, 16))
        for inst in self.key_instances:
            if inst.mse_bits:
                u8.append((f"k_codes.{inst.index}", "u8", inst.dim, inst.mse_bits))
        for inst in self.key_instances:
            if inst.qjl:
                u8.append((f"k_signs.{inst.index}", "u8", inst.dim, 1))
        if self.preset.value_mode == "group":
            u8.append(("v_codes", "u8", self.head_size, self.preset.value_bits))
        for inst in self.value_instances:
            u8.append((f"v_codes.{inst.index}", "u8", inst.dim, inst.mse_bits))
        out, off = [], 0
        for name, dt, count, bits in f4 + f2 + u8:
            if dt == "f4":
                nb = 4 * count
            elif dt == "f2":
                nb = 2 * count
            else:
                nb = packed_nbytes(count, bits)
            out.append(Field(name, off, nb, dt, count, bits))
            off += nb
        return tuple(out)

    @cached_property
    def field_map(self) -> dict[str, Field]:
        return {f.name: f for f in self.fields}

    @cached_property
    def slot_bytes(self) -> int:
        end = self.fields[-1].offset + self.fields[-1].nbytes
        return -(-end // SLOT_ALIGN) * SLOT_ALIGN

    def page_bytes(self, block_size: int, num_kv_heads: int) -> int:
        """Bytes of one vLLM cache block of one layer."""
        return block_size * num_kv_heads * self.slot_bytes

    def cache_shape(self, num_blocks: int, block_size: int, num_kv_heads: int) -> tuple[int, int, int, int]:
        """Shape of a layer's uint8 cache: [num_blocks, num_kv_heads, block_size, slot_bytes]."""
        return (num_blocks, num_kv_heads, block_size, self.slot_bytes)

    # --- seeds
    def seed(self, purpose: str, instance: int) -> int:
        return derive_seed(self.base_seed, self.layer, purpose, instance)


def bf16_slot_bytes(head_size: int) -> int:
    """Bytes of one token of one KV head in a bf16 cache (K and V)."""
    return 2 * 2 * head_size


def preset_table(head_size: int = 128) -> list[dict]:
    """Every preset with its slot size and compression against bf16."""
    rows = []
    for p in PRESETS.values():
        try:
            fmt = LayerFormat(p, head_size)
        except ValueError as e:
            rows.append({"preset": p.name, "head_size": head_size, "error": str(e)})
            continue
        bits_k = 8 * sum(f.nbytes for f in fmt.fields if f.name.startswith("k_")) / head_size
        bits_v = 8 * sum(f.nbytes for f in fmt.fields if f.name.startswith("v_")) / head_size
        rows.append(
            {
                "preset": p.name,
                "head_size": head_size,
                "bytes_per_token_per_kv_head": fmt.slot_bytes,
                "key_bits_per_coord": round(bits_k, 3),
                "value_bits_per_coord": round(bits_v, 3),
                "compression_vs_bf16": round(bf16_slot_bytes(head_size) / fmt.slot_bytes, 3),
                "description": p.description,
            }
        )
    return rows


# --- per-layer format selection (SPEC section 7.1): boundary layers in a wider format
NATIVE = "native"  # a boundary layer kept in the model's own dtype (the serving engine's uncompressed cache)


def boundary_layer_indices(num_layers: int, boundary_layers) -> tuple[int, ...]:
    """The boundary layers of a model with ``num_layers`` attention layers, ascending.

    ``boundary_layers`` is an integer n >= 0 (the first n and the last n layers; 2n must leave at
    least one layer in the main format) or a sequence of distinct layer indices."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers={num_layers!r} is not supported; allowed values: integers >= 1")
    if isinstance(boundary_layers, bool):
        raise ValueError(f"boundary_layers={boundary_layers!r} is not supported; allowed values: an integer n with "
                         f"0 <= 2n < {num_layers}, or a list of distinct layer indices in [0, {num_layers - 1}]")
    if isinstance(boundary_layers, int):
        n = boundary_layers
        if n < 0 or 2 * n >= num_layers:
            raise ValueError(f"boundary_layers={n} is not supported for {num_layers} layers; allowed values: an "
                             f"integer n with 0 <= 2n < {num_layers} (the first n and last n layers), or a list of "
                             f"distinct layer indices in [0, {num_layers - 1}]")
        return tuple(range(n)) + tuple(range(num_layers - n, num_layers)) if n else ()
    try:
        layers = list(boundary_layers)
    except TypeError:
        layers = None
    if (layers is None or any(isinstance(x, bool) or not isinstance(x, int) for x in layers)
            or len(set(layers)) != len(layers) or any(not 0 <= x < num_layers for x in layers)):
        raise ValueError(f"boundary_layers={boundary_layers!r} is not supported for {num_layers} layers; allowed "
                         f"values: an integer n with 0 <= 2n < {num_layers}, or a list of distinct layer indices "
                         f"in [0, {num_layers - 1}]")
    return tuple(sorted(layers))


def layer_slot_bytes(preset_name: str, head_size: int, model_bytes_per_element: int = 2) -> int:
    """Bytes of one token of one KV head in a layer stored as ``preset_name`` (or NATIVE: the model's
    own dtype, K and V, ``model_bytes_per_element`` bytes each)."""
    if preset_name == NATIVE:
        return 2 * model_bytes_per_element * head_size
    return LayerFormat(get_preset(preset_name), head_size).slot_bytes


def mixed_bytes_per_token(num_layers: int, head_size: int, num_kv_heads: int, preset_name: str,
                          boundary_layers=0, boundary_preset: str = NATIVE, model_bytes_per_element: int = 2) -> int:
    """Bytes one token occupies in all layers' caches together, boundary layers in ``boundary_preset``:
    the sum of the layers' own slots (a vLLM block of ``block_size`` tokens is this times block_size)."""
    bound = boundary_layer_indices(num_layers, boundary_layers)
    main = layer_slot_bytes(preset_name, head_size, model_bytes_per_element)
    edge = layer_slot_bytes(boundary_preset, head_size, model_bytes_per_element)
    return num_kv_heads * (len(bound) * edge + (num_layers - len(bound)) * main)

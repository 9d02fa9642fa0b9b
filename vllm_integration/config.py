"""User options of the vLLM integration and their validation (no vLLM import).

Users choose TurboQuant the vLLM way::

    LLM(model=..., attention_backend="CUSTOM",
        additional_config={"turboquant": {"preset": "tq3"}})

``additional_config["turboquant"]`` takes the keys of :data:`OPTION_DEFAULTS`.
Every bad value raises ``ValueError`` naming the option and the allowed values.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from turboquant import format as tqf

CONFIG_KEY = "turboquant"
IMPLS = ("auto", "triton", "cpp", "torch", "reference")

OPTION_DEFAULTS: dict[str, Any] = {
    # name of a preset in turboquant.format.PRESETS
    # the default from measured quality per byte (README, "Choosing a preset"): 4-bit keys, 3-bit values
    "preset": "k4v3",
    # base seed of the per-layer rotation / QJL matrices (SPEC: derive_seed)
    "base_seed": tqf.DEFAULT_BASE_SEED,
    # who writes the packed cache: the Triton kernels, the fused C++ CPU kernels ("cpp",
    # turboquant.torch_impl.fused; the torch path where they cannot be built), the float32 torch path
    # (turboquant.torch_impl), the NumPy reference, or "auto": Triton on a GPU, "cpp" on a CPU (where
    # Triton only has its interpreter)
    "store_impl": "auto",
    # who computes attention over the packed cache (same choices)
    "attention_impl": "auto",
    # presets with an outlier split (tq3.5, tq2.5): a JSON file of per-layer outlier channels
    # written by `turboquant calibrate`; None: the split's default channels (uncalibrated)
    "outlier_channels": None,
    # batch-invariant attention (each row's output bit-identical whatever shares its batch, incl.
    # recomputation after preemption; fixed-length splits, turboquant.triton_impl.batch_invariant_config):
    # True / False, or None: follow vLLM's own switch, the environment variable VLLM_BATCH_INVARIANT
    "batch_invariant": None,
    # per-layer precision (SPEC 7.1): boundary layers in a wider format. An integer n (the first n and the
    # last n layers) or a list of layer indices; 0: every layer in `preset`
    "boundary_layers": 0,
    # the boundary layers' format: a preset name or "native" (vLLM's own uncompressed cache for those layers);
    # required when boundary_layers is set
    "boundary_preset": None,
}
BOUNDARY_PRESETS = (*tqf.PRESETS, tqf.NATIVE)


@functools.lru_cache(maxsize=8)
def _load_channels(path: str) -> tuple[str, dict[int, tuple]]:
    """(preset, {layer: (key channels, value channels)}) of a `turboquant calibrate` file."""
    from turboquant.quality import calibrate

    try:
        return calibrate.load(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{_where('outlier_channels')}={path!r} cannot be read as a `turboquant calibrate` file "
                         f"({type(e).__name__}: {e})") from None


def _where(key: str) -> str:
    return f"additional_config[{CONFIG_KEY!r}][{key!r}]"


def _vllm_batch_invariant() -> bool:
    """vLLM's own switch, the environment variable VLLM_BATCH_INVARIANT (an integer, 0 = off)."""
    raw = os.environ.get("VLLM_BATCH_INVARIANT", "0")
    try:
        return bool(int(raw))
    except ValueError:
        raise ValueError(f"VLLM_BATCH_INVARIANT={raw!r} is not supported; allowed values: integers "
                         "(0 off, other on)") from None


@dataclass(frozen=True)
class TurboQuantOptions:
    preset: str = OPTION_DEFAULTS["preset"]
    base_seed: int = OPTION_DEFAULTS["base_seed"]
    store_impl: str = OPTION_DEFAULTS["store_impl"]
    attention_impl: str = OPTION_DEFAULTS["attention_impl"]
    outlier_channels: str | None = OPTION_DEFAULTS["outlier_channels"]
    batch_invariant: bool | None = OPTION_DEFAULTS["batch_invariant"]
    boundary_layers: Any = OPTION_DEFAULTS["boundary_layers"]
    boundary_preset: str | None = OPTION_DEFAULTS["boundary_preset"]

    def __post_init__(self):
        if not isinstance(self.preset, str) or self.preset not in tqf.PRESETS:
            raise ValueError(f"{_where('preset')}={self.preset!r} is not supported; "
                             f"allowed values: {list(tqf.PRESETS)}")
        if isinstance(self.base_seed, bool) or not isinstance(self.base_seed, int) or self.base_seed < 0:
            raise ValueError(f"{_where('base_seed')}={self.base_seed!r} is not supported; "
                             "allowed values: integers >= 0")
        for key in ("store_impl", "attention_impl"):
            val = getattr(self, key)
            if val not in IMPLS:
                raise ValueError(f"{_where(key)}={val!r} is not supported; allowed values: {list(IMPLS)}")
        if self.batch_invariant is not None and not isinstance(self.batch_invariant, bool):
            raise ValueError(f"{_where('batch_invariant')}={self.batch_invariant!r} is not supported; "
                             "allowed values: true, false, or null (follow VLLM_BATCH_INVARIANT)")
        self.batch_invariant_enabled()  # a bad VLLM_BATCH_INVARIANT fails at engine start
        if self.outlier_channels is not None:
            if not isinstance(self.outlier_channels, str):
                raise ValueError(f"{_where('outlier_channels')}={self.outlier_channels!r} is not supported; "
                                 "allowed values: None or the path of a `turboquant calibrate` JSON file")
            if not self.preset_obj.outlier_fraction:
                raise ValueError(f"{_where('outlier_channels')} is set but preset {self.preset!r} has no outlier "
                                 f"split; allowed presets: {[p for p, v in tqf.PRESETS.items() if v.outlier_fraction]}")
            file_preset, _ = _load_channels(self.outlier_channels)
            if file_preset != self.preset:
                raise ValueError(f"{_where('outlier_channels')}={self.outlier_channels!r} was calibrated for preset "
                                 f"{file_preset!r}, not {self.preset!r}; calibrate again with --preset {self.preset}")
        self._check_boundary()

    def _check_boundary(self) -> None:
        bl = self.boundary_layers
        if isinstance(bl, list):
            object.__setattr__(self, "boundary_layers", tuple(bl))  # hashable, as parsed from JSON
            bl = self.boundary_layers
        allowed = "an integer n >= 0 (the first n and last n layers) or a list of distinct layer indices >= 0"
        if isinstance(bl, bool) or not isinstance(bl, (int, tuple)):
            raise ValueError(f"{_where('boundary_layers')}={bl!r} is not supported; allowed values: {allowed}")
        items = (bl,) if isinstance(bl, int) else bl
        if (any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in items)
                or len(set(items)) != len(items)):
            raise ValueError(f"{_where('boundary_layers')}={list(bl) if isinstance(bl, tuple) else bl!r} is not "
                             f"supported; allowed values: {allowed}")
        bp = self.boundary_preset
        if bp is not None and (not isinstance(bp, str) or bp not in BOUNDARY_PRESETS):
            raise ValueError(f"{_where('boundary_preset')}={bp!r} is not supported; allowed values: "
                             f"{list(BOUNDARY_PRESETS)}")
        if self.has_boundary and bp is None:
            raise ValueError(f"{_where('boundary_layers')}={self.boundary_layers_repr()} needs "
                             f"{_where('boundary_preset')}; allowed values: {list(BOUNDARY_PRESETS)}")

    def boundary_layers_repr(self):
        bl = self.boundary_layers
        return list(bl) if isinstance(bl, tuple) else bl

    @property
    def has_boundary(self) -> bool:
        """Whether some layers are stored in ``boundary_preset`` instead of ``preset``."""
        return bool(self.boundary_layers)

    def boundary_indices(self, num_layers: int) -> tuple[int, ...]:
        """The boundary layers of a model with ``num_layers`` attention layers (SPEC 7.1)."""
        try:
            return tqf.boundary_layer_indices(num_layers, self.boundary_layers)
        except ValueError as e:
            raise ValueError(f"{_where('boundary_layers')}: {e}") from None

    def layer_preset(self, layer: int, num_layers: int) -> str:
        """The preset name of one layer (or "native")."""
        return self.boundary_preset if layer in self.boundary_indices(num_layers) else self.preset

    def batch_invariant_enabled(self) -> bool:
        """The ``batch_invariant`` option, None resolved from VLLM_BATCH_INVARIANT (vLLM's switch)."""
        if self.batch_invariant is not None:
            return self.batch_invariant
        return _vllm_batch_invariant()

    def batch_invariant_warning(self) -> str | None:
        """A start-up warning when the option switches the mode off under VLLM_BATCH_INVARIANT=1: vLLM
        then believes attention is batch-invariant (the backend supports it) while this one is not."""
        if self.batch_invariant is not False:
            return None
        try:
            if not _vllm_batch_invariant():
                return None
        except ValueError:  # the explicit option overrides a malformed switch
            return None
        return (f"{_where('batch_invariant')}=false while VLLM_BATCH_INVARIANT=1: TurboQuant attention is NOT "
                "batch-invariant (outputs may depend on the batch they share, within SPEC.md section 10's "
                "tolerance); remove the option to follow vLLM's switch")

    def impl(self, key: str, device_type: str) -> str:
        """``store_impl`` / ``attention_impl`` with "auto" resolved for a device type."""
        val = getattr(self, key)
        if val == "auto":
            return "triton" if device_type == "cuda" else "cpp"
        return val

    @property
    def preset_obj(self) -> tqf.Preset:
        return tqf.get_preset(self.preset)

    def layer_format(self, head_size: int, layer: int = 0, preset: str | None = None) -> tqf.LayerFormat:
        """The layer's format in ``preset`` (default: the main preset); calibrated outlier channels apply
        to the main preset's layers."""
        if preset is not None and preset != self.preset:
            if preset == tqf.NATIVE:
                raise ValueError(f"layer {layer} is a native (uncompressed) boundary layer: no TurboQuant format")
            return tqf.LayerFormat(tqf.get_preset(preset), head_size, layer=layer, base_seed=self.base_seed)
        kc = vc = None
        if self.outlier_channels is not None:
            _, layers = _load_channels(self.outlier_channels)
            if layer not in layers:
                raise ValueError(f"{_where('outlier_channels')}={self.outlier_channels!r} has no channels for layer "
                                 f"{layer}; it covers layers {sorted(layers)}")
            kc, vc = layers[layer]
        try:
            return tqf.LayerFormat(self.preset_obj, head_size, layer=layer, base_seed=self.base_seed,
                                   key_outlier_channels=kc, value_outlier_channels=vc)
        except ValueError as e:
            if kc is None:
                raise
            raise ValueError(f"{_where('outlier_channels')}={self.outlier_channels!r}, layer {layer}: {e}") from None

    @classmethod
    def from_additional_config(cls, additional_config: Any) -> TurboQuantOptions:
        """Parse ``vllm_config.additional_config`` (a dict, or None / {})."""
        if additional_config is None:
            return cls()
        if not isinstance(additional_config, dict):
            raise ValueError(f"additional_config must be a dict, got {type(additional_config).__name__}")
        raw = additional_config.get(CONFIG_KEY)
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ValueError(f"additional_config[{CONFIG_KEY!r}] must be a dict with keys "
                             f"{list(OPTION_DEFAULTS)}, got {raw!r}")
        unknown = sorted(set(raw) - set(OPTION_DEFAULTS))
        if unknown:
            raise ValueError(f"additional_config[{CONFIG_KEY!r}] has unknown option(s) {unknown}; "
                             f"allowed options: {list(OPTION_DEFAULTS)}")
        return cls(**raw)

    @classmethod
    def from_vllm_config(cls, vllm_config: Any) -> TurboQuantOptions:
        return cls.from_additional_config(getattr(vllm_config, "additional_config", None))


def kv_cache_marker(model_dtype_name: str, boundary_preset: str | None = None) -> str:
    """The ``kv_cache_dtype`` that marks the main-preset layers when boundary layers are set (SPEC 7.1).

    vLLM 0.32+ gives the layers of ``cache_config.kv_cache_dtype_skip_layers`` the dtype "auto" and every
    other layer ``cache_config.cache_dtype``.  With preset boundaries both kinds of layer reach this backend
    and ``AttentionBackend.customize_spec`` tells them apart by the spec's dtype, so the marker is the
    16-bit float type other than the model's.  With "native" boundaries only the main layers reach it, and
    the marker is the other 16-bit type: vLLM caches its backend choice per (selected backend, layer dtype,
    run dtype), so the run dtype must differ between the two kinds of run in one process.  The marker
    never describes stored bytes: the main layers' pages are packed uint8 TurboQuant slots."""
    other = "bfloat16" if str(model_dtype_name).removeprefix("torch.") == "float16" else "float16"
    if boundary_preset == tqf.NATIVE:
        return "float16" if other == "bfloat16" else "bfloat16"
    return other


def parse_layer_index(layer_name: str) -> int:
    """The layer index of a vLLM attention layer name: its one integer
    component ("model.layers.7.self_attn.attn" -> 7).  The name is split at
    "."; the parts made only of digits (str.isdigit) are the integers, and
    there must be exactly one.  In a hybrid model this is the decoder layer's
    index, not the count of attention layers before it (SPEC.md section 2)."""
    ints = [int(p) for p in str(layer_name).split(".") if p.isdigit()]
    if len(ints) != 1:
        raise ValueError(
            f"TurboQuant derives each layer's rotation/QJL seeds from the layer index, but layer name "
            f"{layer_name!r} has {len(ints)} integer components "
            "(need exactly one, e.g. 'model.layers.7.self_attn.attn')"
        )
    return ints[0]


def preset_problem(preset: str | None, head_size: int) -> str | None:
    """Why ``preset`` cannot store a layer of ``head_size`` (None: it can, or no TurboQuant preset)."""
    if preset is None or preset == tqf.NATIVE:
        return None
    try:
        tqf.LayerFormat(tqf.get_preset(preset), head_size)
    except ValueError as e:
        return f"preset={preset!r} with head_size={head_size}: {e}"
    return None


def unsupported_reasons(*, head_size: int | None = None, dtype_name: str | None = None,
                        supported_dtype_names: tuple[str, ...] = (), kv_cache_dtype: str | None = None,
                        has_sliding_window: bool = False, attn_type: str = "decoder", has_sink: bool = False,
                        alibi: bool = False, logits_soft_cap: float | None = None,
                        preset: str | None = None) -> list[str]:
    """Human-readable reasons why the arguments vLLM builds an attention Impl with are unsupported (empty:
    supported).  Each reason names the option, the value and what is supported.  (The backend's
    ``validate_configuration`` reports vLLM's own reasons instead, through its ``supports_*`` hooks.)"""
    r = []
    if attn_type not in ("decoder", None):
        r.append(f"attn_type={attn_type!r} (encoder / cross attention) is not supported; supported: ['decoder']")
    if has_sliding_window:
        r.append("sliding_window is not supported; supported: full causal attention (sliding_window=None)")
    if has_sink:
        r.append("attention sinks are not supported; supported: no sinks")
    if alibi:
        r.append("alibi_slopes are not supported; supported: rotary / no positional bias")
    if logits_soft_cap not in (None, 0, 0.0):
        r.append(f"logits_soft_cap={logits_soft_cap} is not supported; supported: None")
    if head_size is not None and head_size not in tqf.SUPPORTED_HEAD_SIZES:
        r.append(f"head_size={head_size} is not supported; supported: {list(tqf.SUPPORTED_HEAD_SIZES)}")
    elif head_size is not None and (problem := preset_problem(preset, head_size)):
        r.append(problem)
    if dtype_name is not None and supported_dtype_names and dtype_name not in supported_dtype_names:
        r.append(f"dtype={dtype_name} is not supported; supported: {list(supported_dtype_names)}")
    if kv_cache_dtype not in (None, "auto"):
        r.append(f"kv_cache_dtype={kv_cache_dtype!r} is not supported (TurboQuant replaces the KV-cache "
                 "format; the preset is chosen with additional_config['turboquant']['preset']); supported: ['auto']")
    return r

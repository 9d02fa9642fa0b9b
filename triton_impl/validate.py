"""Argument checks shared by the public entry points: wrong dtype -> TypeError,
wrong shape / value -> ValueError, each naming the parameter and what is allowed."""

from __future__ import annotations

from turboquant.torch_checks import (  # noqa: F401  (shared with torch_impl; re-exported)
    FLOAT_DTYPES,
    INDEX_DTYPES,
    QUERY_DTYPES,
    check_attention,
    check_cache,
    check_kv,
    check_slot_mapping,
    check_tensor,
)


def check_params(params) -> None:
    from .params import KernelParams

    if not isinstance(params, KernelParams):
        raise TypeError(f"params must be a KernelParams (KernelParams.build(fmt, device)), got {type(params).__name__}")
    fmt = params.fmt
    if fmt.preset.value_mode == "group" and fmt.head_size % fmt.preset.group_size:
        raise ValueError(f"head_size={fmt.head_size} is not a multiple of group_size={fmt.preset.group_size}")

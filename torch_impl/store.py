"""store_kv: encode K/V tokens (SPEC §4) and pack them into their cache slots (§5-7),
vectorised over tokens and KV heads in float32."""

from __future__ import annotations

import torch

from turboquant import format as tqf
from turboquant.torch_checks import check_store

from . import bits
from .params import InstanceTensors, TorchParams, check_params


def _nan_bits(dtype: torch.dtype, pattern: int) -> torch.Tensor:
    return torch.tensor(pattern - (1 << 32) if dtype == torch.int32 and pattern >= 1 << 31 else pattern, dtype=dtype)


def l2_norm(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||x||, u) along the last axis, SPEC §4.1: m = max|x|, s = x/m, n = sqrt(sum s^2)."""
    m = x.abs().amax(-1, keepdim=True)
    s = x / torch.where(m > 0, m, 1.0)
    ss = (s * s).sum(-1, keepdim=True).sqrt()
    return (m * ss)[..., 0], s / torch.where(ss > 0, ss, 1.0)


def _select(x: torch.Tensor, p: InstanceTensors) -> torch.Tensor:
    return x if p.channels is None else x.index_select(-1, p.channels)


def rotated(x: torch.Tensor, insts: tuple[InstanceTensors, ...]) -> tuple[list, list, torch.Tensor | None]:
    """Norms and rotated unit coordinates y = Pi u of each instance of x [..., d] (float32),
    and the non-finite mask (SPEC §8: a non-finite element or instance norm; u := 0 there),
    None when every token is finite."""
    bad = ~torch.isfinite(x).all(-1)
    norms, units = [], []
    for p in insts:
        n, u = l2_norm(_select(x, p))
        bad |= ~torch.isfinite(n)
        norms.append(n)
        units.append(u)
    if not bool(bad.any()):
        return norms, [u @ p.rot_t for u, p in zip(units, insts)], None
    return norms, [torch.where(bad[..., None], 0.0, u) @ p.rot_t for u, p in zip(units, insts)], bad


def assign_codes(y: torch.Tensor, bnd: torch.Tensor) -> torch.Tensor:
    """idx = #{k : y > beta_k} (a tie takes the lower code), uint8."""
    codes = torch.zeros(y.shape, dtype=torch.uint8, device=y.device)
    above = torch.empty(y.shape, dtype=torch.bool, device=y.device)
    for b in bnd.tolist():
        codes.add_(torch.gt(y, b, out=above))
    return codes


def _put(slots: torch.Tensor, f: tqf.Field, raw: torch.Tensor) -> None:
    slots[..., f.offset:f.offset + f.nbytes] = raw


def _put_f32(slots: torch.Tensor, f: tqf.Field, val: torch.Tensor, bad: torch.Tensor | None) -> None:
    b = val.contiguous().view(torch.int32)
    if bad is not None:
        b = torch.where(bad, _nan_bits(torch.int32, tqf.NORM_NAN_BITS), b)
    _put(slots, f, b[..., None].view(torch.uint8))


def encode_instances(slots: torch.Tensor, x: torch.Tensor, insts: tuple[InstanceTensors, ...]) -> None:
    """Algorithms 1 / 2 for each instance; writes norms, codes, signs and gamma into slots."""
    norms, ys, bad = rotated(x, insts)
    for p, n, y in zip(insts, norms, ys):
        _put_f32(slots, p.norm, n, bad)
        codes = None
        if p.mse_bits:
            codes = assign_codes(y, p.bnd)
            if bad is not None:
                codes = torch.where(bad[..., None], 0, codes)
            _put(slots, p.codes, bits.pack(codes, p.mse_bits, p.codes.nbytes))
        if p.qjl:
            r = y if codes is None else y - p.cent[codes.to(torch.int64)]
            signs = (r @ p.qjl_t) >= 0
            if bad is not None:
                signs = torch.where(bad[..., None], False, signs)
            _put(slots, p.signs, bits.pack(signs, 1, p.signs.nbytes))
            _put_f32(slots, p.rnorm, (r * r).sum(-1).sqrt(), bad)


def encode_groups(slots: torch.Tensor, v: torch.Tensor, fmt: tqf.LayerFormat) -> None:
    """Value mode ``group`` (SPEC §4.4): fp16 zero = min, scale = (max - min)/(2^b - 1)."""
    gs, b = fmt.preset.group_size, fmt.preset.value_bits
    levels = float((1 << b) - 1)
    g = v.reshape(*v.shape[:-1], -1, gs)
    mn, mx = g.amin(-1), g.amax(-1)
    zero16, scale16 = mn.to(torch.float16), ((mx - mn) / levels).to(torch.float16)
    bad_group = ~(torch.isfinite(zero16) & torch.isfinite(scale16) & torch.isfinite(mx.to(torch.float16)))
    bad = bad_group.any(-1) | ~torch.isfinite(v).all(-1)
    zero, scale = zero16.float()[..., None], scale16.float()[..., None]
    t = torch.where(scale > 0, (g - zero) / torch.where(scale > 0, scale, 1.0), 0.0)
    codes = torch.clamp(torch.floor(t + 0.5), 0, levels).to(torch.int64)
    codes = torch.where(bad[..., None, None], 0, codes).reshape(v.shape)
    nan16 = _nan_bits(torch.int16, tqf.GROUP_NAN_BITS)
    fm = fmt.field_map
    for name, val in (("v_scale", scale16), ("v_zero", zero16)):
        _put(slots, fm[name], torch.where(bad[..., None], nan16, val.view(torch.int16)).contiguous().view(torch.uint8))
    _put(slots, fm["v_codes"], bits.pack(codes, b, fm["v_codes"].nbytes))


def encode_slots(key: torch.Tensor, value: torch.Tensor, params: TorchParams) -> torch.Tensor:
    """K, V [..., d] (any float dtype) -> packed slots uint8 [..., slot_bytes] (padding bytes 0)."""
    fmt = params.fmt
    slots = torch.zeros((*key.shape[:-1], fmt.slot_bytes), dtype=torch.uint8, device=key.device)
    encode_instances(slots, key.to(torch.float32), params.keys)
    if fmt.preset.value_mode == "group":
        encode_groups(slots, value.to(torch.float32), fmt)
    else:
        encode_instances(slots, value.to(torch.float32), params.values)
    return slots


def store_kv(key: torch.Tensor, value: torch.Tensor, cache: torch.Tensor, slot_mapping: torch.Tensor,
             params: TorchParams) -> None:
    """Encode key/value [num_tokens, num_kv_heads, head_size] into ``cache`` (uint8
    [num_blocks, num_kv_heads, block_size, slot_bytes]) in place at ``slot_mapping``
    [num_tokens] (negative: padding, nothing written).  Slots out of range or repeated
    raise ValueError, as in the reference."""
    check_params(params)
    fmt = params.fmt
    check_store(key, value, cache, slot_mapping, fmt, params.device)
    nb, _, bs, _ = cache.shape
    keep = slot_mapping >= 0
    sm = slot_mapping[keep].to(torch.int64)
    if sm.numel() == 0:
        return
    if int(sm.max()) >= nb * bs:
        raise ValueError(f"slot_mapping has slot {int(sm.max())} >= num_blocks * block_size = {nb * bs}")
    if sm.numel() > 1 and torch.unique(sm).numel() != sm.numel():
        raise ValueError("slot_mapping has duplicate non-negative slots")
    if bool(keep.all()):
        slots = encode_slots(key, value, params)
    else:
        slots = encode_slots(key[keep], value[keep], params)
    cache[sm // bs, :, sm % bs, :] = slots


def rotated_debug(x: torch.Tensor, params: TorchParams, tensor: str) -> list[torch.Tensor]:
    """The rotated unit coordinates y of each instance of ``tensor`` ('key'/'value') as the
    store computes them, for x [..., d]; for conformance."""
    tqf.check_choice("tensor", tensor, ("key", "value"))
    insts = params.keys if tensor == "key" else params.values
    return rotated(x.to(torch.float32), insts)[1]

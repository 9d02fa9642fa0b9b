"""Per-layer tensors of the torch path: the reference's rotations, codebooks, QJL
matrices and channel splits (``reference.quantizer.layer_params``) as float32 torch
tensors, the slot's fields (``format.LayerFormat.field_map``) and the lookup tables that
map packed chunks to centroid values (bits.field_lut).  Nothing is re-derived."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from turboquant import format as tqf
from turboquant.reference.quantizer import layer_params

from . import bits


@dataclass(frozen=True)
class InstanceTensors:
    """One quantizer instance of K or V (format.Instance) as torch tensors."""

    index: int
    dim: int
    mse_bits: int
    qjl: bool
    channels: torch.Tensor | None  # int64 [dim]; None: all channels in order
    rot_t: torch.Tensor  # Pi^T, contiguous (store: y = u @ Pi^T)
    # attention (bits.lookup column order, padding columns zero): q_C @ q_codes = Pi q in the columns of the
    # codes' lookup, q_C @ q_signs = S Pi q in those of the signs; o_cols @ v_back = Pi^T o (values)
    q_codes: torch.Tensor | None
    q_signs: torch.Tensor | None
    v_back: torch.Tensor | None
    bnd: torch.Tensor | None  # decision boundaries [2^b - 1]
    cent: torch.Tensor | None  # centroids [2^b]
    cent_lut: torch.Tensor | None  # bits.field_lut(mse_bits, cent)
    qjl_t: torch.Tensor | None  # S^T (prod keys, store)
    sign_lut: torch.Tensor | None  # bits.field_lut(1, [-1, +1])
    norm: tqf.Field
    codes: tqf.Field | None
    rnorm: tqf.Field | None
    signs: tqf.Field | None
    qjl_scale: float


@dataclass(frozen=True)
class TorchParams:
    fmt: tqf.LayerFormat
    device: torch.device
    keys: tuple[InstanceTensors, ...]
    values: tuple[InstanceTensors, ...]  # empty for value mode "group"
    group_lut: torch.Tensor | None  # bits.field_lut(value_bits, codes as floats), value mode "group"

    @property
    def head_size(self) -> int:
        return self.fmt.head_size

    @classmethod
    def build(cls, fmt: tqf.LayerFormat, device="cpu") -> TorchParams:
        if not isinstance(fmt, tqf.LayerFormat):
            raise TypeError(f"fmt must be a turboquant.format.LayerFormat, got {type(fmt).__name__}")
        if sys.byteorder != "little":  # slot fields are little-endian; f32_field / f16_field view them as is
            raise RuntimeError("turboquant.torch_impl needs a little-endian host")
        device = torch.device(device)
        key = (fmt, str(device))
        if key not in _CACHE:
            lp = layer_params(fmt)
            fm = fmt.field_map

            def t(a):
                return torch.from_numpy(np.array(a, np.float32)).to(device)  # copy: read-only arrays

            def in_columns(mat, f):
                """mat [rows, m] -> [rows, lookup columns] (a zero column for each padding column)."""
                if f is None:
                    return None
                cols = bits.lookup_columns(f.bits, f.nbytes)
                ok = cols < mat.shape[1]
                out = np.zeros((mat.shape[0], cols.numel()), np.float64)
                out[:, ok.numpy()] = mat[:, cols[ok].numpy()]
                return t(out)

            def inst(p, prefix):
                i, m, b = p.instance.index, p.instance.dim, p.instance.mse_bits
                ident = np.array_equal(p.channels, np.arange(fmt.head_size))
                cent = t(p.codebook.centroids) if p.codebook is not None else None
                codes, signs = fm.get(f"{prefix}_codes.{i}"), fm.get(f"{prefix}_signs.{i}")
                pi = p.rotation.astype(np.float64)
                return InstanceTensors(
                    index=i, dim=m, mse_bits=b, qjl=bool(p.instance.qjl),
                    channels=None if ident else torch.from_numpy(np.asarray(p.channels, np.int64)).to(device),
                    rot_t=t(p.rotation.T),
                    q_codes=in_columns(pi.T, codes),
                    q_signs=in_columns(pi.T @ p.qjl.T.astype(np.float64), signs) if p.qjl is not None else None,
                    v_back=in_columns(pi.T, codes).T.contiguous() if codes is not None else None,
                    bnd=t(p.codebook.boundaries) if p.codebook is not None else None,
                    cent=cent, cent_lut=bits.field_lut(b, cent).to(device) if cent is not None else None,
                    qjl_t=t(p.qjl.T) if p.qjl is not None else None,
                    sign_lut=bits.field_lut(1, torch.tensor([-1.0, 1.0])).to(device) if p.qjl is not None else None,
                    norm=fm[f"{prefix}_norm.{i}"], codes=codes, rnorm=fm.get(f"{prefix}_rnorm.{i}"), signs=signs,
                    qjl_scale=tqf.qjl_scale(m) if p.instance.qjl else 0.0,
                )

            group_lut = None
            if fmt.preset.value_mode == "group":
                vb = fmt.preset.value_bits
                group_lut = bits.field_lut(vb, torch.arange(1 << vb, dtype=torch.float32)).to(device)
            _CACHE[key] = cls(fmt, device, tuple(inst(p, "k") for p in lp.keys),
                              tuple(inst(p, "v") for p in lp.values), group_lut)
        return _CACHE[key]


def check_params(params) -> None:
    if not isinstance(params, TorchParams):
        raise TypeError(f"params must be a TorchParams (TorchParams.build(fmt, device)), got {type(params).__name__}")


def f32_field(slots: torch.Tensor, f: tqf.Field) -> torch.Tensor:
    """A float32 field of slots uint8 [..., slot_bytes] -> [...] (little-endian host)."""
    return slots[..., f.offset:f.offset + 4].contiguous().view(torch.float32)[..., 0]


def f16_field(slots: torch.Tensor, f: tqf.Field) -> torch.Tensor:
    """A float16 array field -> float32 [..., count]."""
    return slots[..., f.offset:f.offset + f.nbytes].contiguous().view(torch.float16).to(torch.float32)


def stream(slots: torch.Tensor, f: tqf.Field) -> torch.Tensor:
    """The bytes of a packed field (a strided view)."""
    return slots[..., f.offset:f.offset + f.nbytes]


_CACHE: dict = {}

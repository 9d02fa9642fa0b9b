"""Kernel parameters of one layer: the reference's matrices and codebooks as
device tensors, plus the slot's field offsets as kernel compile-time constants.

Everything here is *read* from ``turboquant.format`` (field offsets, bits,
QJL scale) and ``turboquant.reference.quantizer.layer_params`` (rotations,
codebooks, QJL matrices, channel splits); nothing is re-derived.

Tensor layout (``I`` = 2 instance slots per tensor, unused ones are zero):

* ``{k,v}_rot``  float32 [I, MPMAX, MPMAX]: Pi of each instance, zero-padded
  to a power of two (row r, column c = Pi[r, c]; y = u @ Pi^T).
* ``{k,v}_qjl``  float32 [I, MPMAX, MPMAX]: S (prod keys only).
* ``{k,v}_cent`` float32 [I, 16] / ``*_cent16`` float16 [I, 16]: centroids.
* ``{k,v}_pair``  int32 [I, 256]: pair tables of instance i, entry a | b << bits = the fp16
  centroids c[a] (low half) and c[b] (high half) as one word (decode_mma.py).
* ``{k,v}_poly`` float32 [I, 8]: the centroid magnitudes as cubics in the
  magnitude index (``magnitude_polynomials``; attention LOOKUP=2).
* ``{k,v}_bnd``  float32 [I, 16]: decision boundaries, +inf padded.
* ``{k,v}_chan`` int32 [I, MPMAX]: original channel of each instance column.

``meta`` holds the constexprs every kernel takes (``K0_M``, ``K0_CODES`` ...);
``KernelParams.constexprs(kernel)`` picks each kernel's arguments from it (``KERNEL_CONSTEXPRS``).
Instance i of a table starts at ``i * CENT_SLOTS`` (centroids, boundaries), ``i * POLY_SLOTS``
(polynomials), ``i * {K,V}_MAT_STRIDE`` (rotation, QJL) and ``i * {K,V}_MPMAX`` (channels).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import triton.language as tl

from turboquant import format as tqf
from turboquant.reference.quantizer import layer_params

MIN_DOT = 16  # every tl.dot dimension must be >= 16
MAX_INSTANCES = 2
# table strides, also read by the kernels (Triton kernels read only tl.constexpr globals)
CENT_SLOTS = tl.constexpr(16)  # 2^4 centroids at most (SUPPORTED_BITS <= 4)
PAIR_SLOTS = 256  # (2^4)^2 entries of a pair table at most
POLY_SLOTS = tl.constexpr(8)  # attn_core.centroid_values LOOKUP=2: two cubics in the magnitude index
KC = tl.constexpr(16)  # K chunk of the kernels' fp32 FMA dots (tl.dot keeps whole K slices in registers)
# int32 bit patterns of the canonical NaNs (format.py) as the store kernels write them
NORM_NAN_BITS = tl.constexpr(tqf.NORM_NAN_BITS - (1 << 32) if tqf.NORM_NAN_BITS >= (1 << 31) else tqf.NORM_NAN_BITS)
GROUP_NAN_BITS = tl.constexpr(tqf.GROUP_NAN_BITS)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # kernels run on the CPU interpreter
STORE_MSE_HEAD_SIZES = (64, 128)  # store_mse.py: Pi^T's two fp16 parts in shared memory
POLY_RTOL = 1e-6  # the polynomials must give every centroid to this relative error (float32 Horner)


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def _fast_unpack(bit_off: int, bits: int, m: int) -> bool:
    """Whether the word-based unpack path (bits.unpack_codes FAST) applies."""
    if bit_off % 32:
        return False
    if 32 % bits == 0:
        return (m * bits) % 32 == 0
    return bits == 3 and m % 32 == 0


def _instance_meta(prefix: str, fmt: tqf.LayerFormat, inst: tqf.Instance, chans: np.ndarray, tensor: str) -> dict:
    fm = fmt.field_map
    t = "k" if tensor == "key" else "v"
    i = inst.index
    mp = max(MIN_DOT, next_pow2(inst.dim))
    meta = {
        f"{prefix}_M": inst.dim,
        f"{prefix}_MP": mp,
        f"{prefix}_BITS": inst.mse_bits,
        f"{prefix}_QJL": bool(inst.qjl),
        f"{prefix}_IDCH": bool(np.array_equal(chans, np.arange(inst.dim)) and inst.dim == fmt.head_size),
        f"{prefix}_NORM": fm[f"{t}_norm.{i}"].offset,
        f"{prefix}_CODES": fm[f"{t}_codes.{i}"].offset if inst.mse_bits else 0,
        f"{prefix}_CBYTES": fm[f"{t}_codes.{i}"].nbytes if inst.mse_bits else 0,
        f"{prefix}_RNORM": fm[f"{t}_rnorm.{i}"].offset if inst.qjl else 0,
        f"{prefix}_SIGNS": fm[f"{t}_signs.{i}"].offset if inst.qjl else 0,
        f"{prefix}_SBYTES": fm[f"{t}_signs.{i}"].nbytes if inst.qjl else 0,
        f"{prefix}_QJLSCALE": tqf.qjl_scale(inst.dim) if inst.qjl else 0.0,
    }
    meta[f"{prefix}_CFAST"] = bool(inst.mse_bits) and _fast_unpack(8 * meta[f"{prefix}_CODES"], inst.mse_bits, inst.dim)
    meta[f"{prefix}_SFAST"] = bool(inst.qjl) and _fast_unpack(8 * meta[f"{prefix}_SIGNS"], 1, inst.dim)
    return meta


def _empty_instance_meta(prefix: str) -> dict:
    return {f"{prefix}_M": 0, f"{prefix}_MP": MIN_DOT, f"{prefix}_BITS": 0, f"{prefix}_QJL": False,
            f"{prefix}_IDCH": False, f"{prefix}_NORM": 0, f"{prefix}_CODES": 0, f"{prefix}_CBYTES": 0,
            f"{prefix}_RNORM": 0, f"{prefix}_SIGNS": 0, f"{prefix}_SBYTES": 0, f"{prefix}_QJLSCALE": 0.0,
            f"{prefix}_CFAST": False, f"{prefix}_SFAST": False}


@dataclass
class KernelParams:
    """Device tensors and constexprs of one layer (see the module docstring)."""

    fmt: tqf.LayerFormat
    device: torch.device
    meta: dict
    k_rot: torch.Tensor
    k_qjl: torch.Tensor
    k_cent: torch.Tensor
    k_cent16: torch.Tensor
    k_pair: torch.Tensor
    k_poly: torch.Tensor
    k_bnd: torch.Tensor
    k_chan: torch.Tensor
    v_rot: torch.Tensor
    v_cent: torch.Tensor
    v_cent16: torch.Tensor
    v_pair: torch.Tensor
    v_poly: torch.Tensor
    v_bnd: torch.Tensor
    v_chan: torch.Tensor
    k_rot_split: torch.Tensor | None = None
    v_rot_split: torch.Tensor | None = None
    k_prmt: torch.Tensor | None = None  # prmt_key_bytes of key instance 0 (int32 [4]) where it has them

    @property
    def head_size(self) -> int:
        return self.fmt.head_size

    @property
    def slot_bytes(self) -> int:
        return self.fmt.slot_bytes

    @classmethod
    def build(cls, fmt: tqf.LayerFormat, device) -> KernelParams:
        if not isinstance(fmt, tqf.LayerFormat):
            raise TypeError(f"fmt must be a turboquant.format.LayerFormat, got {type(fmt).__name__}")
        device = torch.device(device)
        key = (fmt, str(device))
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
        lp = layer_params(fmt)
        d = fmt.head_size
        meta = {
            "D": d,
            "DP": max(MIN_DOT, next_pow2(d)),
            "SLOT_BYTES": fmt.slot_bytes,
            "SLOT_END": fmt.fields[-1].offset + fmt.fields[-1].nbytes,
            "K_NI": len(lp.keys),
            "V_GROUP": fmt.preset.value_mode == "group",
            "V_NI": len(lp.values),
            # attn_core.centroid_values LOOKUP=1 and 2 rely on c[k] == -c[2^b-1-k] exactly
            "CB_SYMMETRIC": all(np.array_equal(p.codebook.centroids, -p.codebook.centroids[::-1])
                                for p in lp.keys + lp.values if p.codebook is not None),
        }
        poly_ok = meta["CB_SYMMETRIC"]  # attn_core.centroid_values LOOKUP=2 (set below)
        tensors = {}
        pairs = {}
        for t, insts in (("k", lp.keys), ("v", lp.values)):
            tensor = "key" if t == "k" else "value"
            mpmax = max([MIN_DOT] + [max(MIN_DOT, next_pow2(p.instance.dim)) for p in insts])
            rot = np.zeros((MAX_INSTANCES, mpmax, mpmax), np.float32)
            qjl = np.zeros((MAX_INSTANCES, mpmax, mpmax), np.float32)
            cent = np.zeros((MAX_INSTANCES, CENT_SLOTS), np.float32)
            pair = np.zeros((MAX_INSTANCES, PAIR_SLOTS), np.int32)
            poly = np.zeros((MAX_INSTANCES, POLY_SLOTS), np.float32)
            bnd = np.full((MAX_INSTANCES, CENT_SLOTS), np.inf, np.float32)
            chan = np.zeros((MAX_INSTANCES, mpmax), np.int32)
            for i in range(MAX_INSTANCES):
                prefix = f"{t.upper()}{i}"
                if i >= len(insts):
                    meta.update(_empty_instance_meta(prefix))
                    continue
                p = insts[i]
                m = p.instance.dim
                meta.update(_instance_meta(prefix, fmt, p.instance, np.asarray(p.channels), tensor))
                rot[i, :m, :m] = p.rotation
                if p.qjl is not None:
                    qjl[i, :m, :m] = p.qjl
                if p.codebook is not None:
                    nc = p.codebook.centroids.size
                    cent[i, :nc] = p.codebook.centroids
                    pair[i, : nc * nc] = pair_table(p.codebook.centroids)
                    poly[i], ok = magnitude_polynomials(p.codebook.centroids)
                    poly_ok = poly_ok and ok
                    bnd[i, : nc - 1] = p.codebook.boundaries
                chan[i, :m] = np.asarray(p.channels, np.int32)
            meta[f"{t.upper()}_MPMAX"] = mpmax
            meta[f"{t.upper()}_MAT_STRIDE"] = mpmax * mpmax  # one instance of {t}_rot / {t}_qjl
            tensors[f"{t}_rot"] = torch.from_numpy(rot).to(device)
            tensors[f"{t}_cent"] = torch.from_numpy(cent).to(device)
            tensors[f"{t}_cent16"] = torch.from_numpy(cent.astype(np.float16)).to(device)
            tensors[f"{t}_pair"] = torch.from_numpy(pair).to(device)
            pairs[t] = pair
            tensors[f"{t}_poly"] = torch.from_numpy(poly).to(device)
            tensors[f"{t}_bnd"] = torch.from_numpy(bnd).to(device)
            tensors[f"{t}_chan"] = torch.from_numpy(chan).to(device)
            if t == "k":
                tensors["k_qjl"] = torch.from_numpy(qjl).to(device)
        meta["CB_POLY"] = poly_ok
        # decode_mma.py: one pair table serves keys and values (instance 0 of each has the same codebook)
        meta["KV_PAIR_SAME"] = bool(pairs["k"][0].any() and np.array_equal(pairs["k"][0], pairs["v"][0]))
        # store_mse.py: keys and values one mse instance over the whole head, D a power of two <= 128
        meta["STORE_MSE"] = (meta["K_NI"] == 1 and meta["V_NI"] == 1 and not meta["V_GROUP"]
                             and not meta["K0_QJL"] and meta["K0_BITS"] > 0 and meta["V0_BITS"] > 0
                             and meta["K0_IDCH"] and meta["V0_IDCH"] and d in STORE_MSE_HEAD_SIZES)
        k0 = lp.keys[0].codebook if lp.keys else None
        meta["K_PRMT"] = bool(k0 is not None and k0.centroids.size == 16 and meta["CB_SYMMETRIC"])
        if meta["K_PRMT"]:  # decode_mma's mma_key_table "prmt"
            tensors["k_prmt"] = torch.from_numpy(prmt_key_bytes(k0.centroids)).to(device)
        if meta["STORE_MSE"]:
            tensors["k_rot_split"] = rotation_split(lp.keys[0].rotation).to(device)
            tensors["v_rot_split"] = rotation_split(lp.values[0].rotation).to(device)
        if meta["V_GROUP"]:
            fm = fmt.field_map
            meta.update({
                "V_GS": fmt.preset.group_size,
                "V_NG": fmt.n_groups,
                "V_NGP": next_pow2(fmt.n_groups),
                "V_BITS": fmt.preset.value_bits,
                "V_SCALE": fm["v_scale"].offset,
                "V_ZERO": fm["v_zero"].offset,
                "V_CODES": fm["v_codes"].offset,
                "V_CBYTES": fm["v_codes"].nbytes,
            })
            meta["V_CFAST"] = _fast_unpack(8 * meta["V_CODES"], meta["V_BITS"], d)
        else:
            meta.update({"V_GS": 1, "V_NG": 1, "V_NGP": 1, "V_BITS": 0, "V_SCALE": 0, "V_ZERO": 0,
                         "V_CODES": 0, "V_CBYTES": 0, "V_CFAST": False})
        out = cls(fmt=fmt, device=device, meta=meta, **tensors)
        _CACHE[key] = out
        return out

    def constexprs(self, kernel: str) -> dict:
        """The constexpr arguments of ``kernel`` (a key of KERNEL_CONSTEXPRS), read from ``meta``."""
        tqf.check_choice("kernel", kernel, tuple(KERNEL_CONSTEXPRS))
        layer, key_inst, value_inst = KERNEL_CONSTEXPRS[kernel]
        m = self.meta
        out = {k: m[k] for k in layer}
        for prefix, names in (("K0", key_inst), ("K1", key_inst), ("V0", value_inst), ("V1", value_inst)):
            out.update({f"{prefix}_{k}": m[f"{prefix}_{k}"] for k in names})
        return out

    def rotation_constexprs(self, tensor: str) -> dict:
        """rotate._rotate_kernel's constexprs for the instances of ``tensor`` ("key" or "value")."""
        tqf.check_choice("tensor", tensor, ("key", "value"))
        m = self.meta
        p = "K" if tensor == "key" else "V"
        return {"MPMAX": m[f"{p}_MPMAX"], "MAT_STRIDE": m[f"{p}_MAT_STRIDE"], "NI": m[f"{p}_NI"],
                **{f"{k}{i}": m[f"{p}{i}_{k}"] for i in (0, 1) for k in ("M", "MP", "IDCH")}}


# Constexpr arguments of each kernel family: (layer-wide meta keys, keys of each key instance
# (K0_*, K1_*), keys of each value instance (V0_*, V1_*)).
_GROUP_VALUES = ("V_GS", "V_NG", "V_BITS", "V_SCALE", "V_ZERO", "V_CODES")
_READ_KEY = ("M", "MP", "BITS", "QJL", "NORM", "CODES", "CFAST", "RNORM", "SIGNS", "SFAST", "QJLSCALE")
_READ_MSE = ("M", "MP", "BITS", "NORM", "CODES", "CFAST")
KERNEL_CONSTEXPRS = {
    # store._store_kernel
    "store": (("D", "DP", "SLOT_BYTES", "SLOT_END", "K_NI", "K_MPMAX", "K_MAT_STRIDE", "V_GROUP", "V_NI",
               "V_MPMAX", "V_MAT_STRIDE") + _GROUP_VALUES + ("V_CBYTES",),
              ("M", "MP", "BITS", "QJL", "IDCH", "NORM", "CODES", "CBYTES", "RNORM", "SIGNS", "SBYTES"),
              ("M", "MP", "BITS", "IDCH", "NORM", "CODES", "CBYTES")),
    # query._rotate_query_kernel
    "query": (("K_NI", "K_MPMAX", "K_MAT_STRIDE"), ("M", "MP", "QJL", "IDCH"), ()),
    # attn_core._split_kernel
    "split": (("D", "DP", "K_NI", "V_GROUP", "V_NI") + _GROUP_VALUES + ("V_CFAST",), _READ_KEY, _READ_MSE),
    # attn_core._merge_kernel
    "merge": (("D", "DP", "V_GROUP", "V_NI", "V_MPMAX", "V_MAT_STRIDE"), (), ("M", "MP", "IDCH")),
    # prefill._dense_kv_kernel
    "dense_kv": (("D", "DP", "K_NI", "V_GROUP", "V_NI") + _GROUP_VALUES + ("V_CFAST",), _READ_MSE, _READ_MSE),
    # dequant._dequant_kernel
    "dequant": (("D", "DP", "K_NI", "K_MPMAX", "K_MAT_STRIDE", "V_GROUP", "V_NI", "V_MPMAX", "V_MAT_STRIDE")
                + _GROUP_VALUES + ("V_CFAST",), _READ_KEY + ("IDCH",), _READ_MSE + ("IDCH",)),
}


def rotation_split(rotation: np.ndarray) -> torch.Tensor:
    """fp16 [2, m, m]: Pi^T as P0 = fp16(Pi^T) and P1 = fp16(Pi^T - P0) (store_mse.py): P0 + P1 equals
    float32 Pi^T within 2^-25 absolute per entry (P1's entries are mostly fp16 subnormals)."""
    pit = torch.from_numpy(np.ascontiguousarray(np.asarray(rotation, np.float32).T))
    p0 = pit.to(torch.float16)
    p1 = (pit - p0.to(torch.float32)).to(torch.float16)
    return torch.stack([p0, p1]).contiguous()


def pair_table(centroids: np.ndarray) -> np.ndarray:
    """int32 [n*n]: entry a | b << bits holds fp16 c[a] in its low and fp16 c[b] in its high 16 bits
    (n = 2^bits centroids), i.e. two decoded codes as one register of an fp16 mma operand."""
    h = np.asarray(centroids, np.float16).view(np.uint16).astype(np.uint32)
    n = h.size
    idx = np.arange(n * n)
    return (h[idx % n] | (h[idx // n] << 16)).view(np.int32)


def prmt_key_bytes(centroids: np.ndarray) -> np.ndarray:
    """int32 [4] for decode_mma's byte-permute key decode (mma_key_table "prmt") of a symmetric 16-centroid
    codebook: the low bytes of the fp16 magnitudes c[8] .. c[15] (two words, magnitude k in byte k), then their
    high bytes (bit 7, the sign, clear)."""
    h = np.asarray(centroids, np.float16).view(np.uint16).astype(np.uint32)
    if h.size != 16 or not np.array_equal(h[:8], h[:7:-1] | 0x8000) or (h[8:] & 0x8000).any():
        raise ValueError("prmt_key_bytes needs 16 ascending centroids with c[i] = -c[15 - i] in fp16")
    lo, hi = h[8:] & 0xFF, h[8:] >> 8
    words = [sum(int(b[k]) << (8 * (k % 4)) for k in range(j, j + 4)) for b in (lo, hi) for j in (0, 4)]
    return np.array(words, np.uint32).view(np.int32)


def magnitude_polynomials(centroids: np.ndarray) -> tuple[np.ndarray, bool]:
    """Coefficients for attn_core.centroid_values LOOKUP=2, and whether they are exact enough.

    A symmetric codebook of 2^b centroids has 2^(b-1) magnitudes c[H + m], m = 0 .. H-1 (H = 2^(b-1)).
    They are interpolated by a cubic in m (b <= 3: H <= 4 points, so exactly) or, for b = 4, by one
    cubic for m = 0..3 and one for m = 4..7 in (m - 4).  Returns float32 [a0, a1, a2, a3, b0, b1, b2,
    b3] (value = a0 + a1 m + a2 m^2 + a3 m^3) and whether a float32 Horner evaluation reproduces every
    magnitude within POLY_RTOL of the largest."""
    c = np.asarray(centroids, np.float64)
    h = c.size // 2
    mags = c[h:]
    out = np.zeros(POLY_SLOTS, np.float64)
    for half, part in enumerate([mags[:4], mags[4:8]]):
        if part.size == 0:
            continue
        x = np.arange(part.size, dtype=np.float64)
        coef = np.linalg.solve(np.vander(x, part.size, increasing=True), part)  # exact interpolation
        out[4 * half: 4 * half + part.size] = coef
    coef32 = out.astype(np.float32)
    got = np.empty(h, np.float64)
    for m in range(h):
        a = coef32[4 * (m // 4): 4 * (m // 4) + 4]
        t = np.float32(m % 4)
        got[m] = ((a[3] * t + a[2]) * t + a[1]) * t + a[0]  # float32 Horner, as the kernel
    ok = bool(np.all(np.abs(got - mags) <= POLY_RTOL * np.abs(mags).max()))
    return coef32, ok


_CACHE: dict = {}

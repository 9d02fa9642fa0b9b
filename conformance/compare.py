"""Compare packed slots and attention outputs under SPEC.md's exactness contract."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from turboquant import format as tqf
from turboquant.reference.quantizer import layer_params
from turboquant.reference.slot import encode_stages, pack_fields, stages_to_fields, unpack_fields


@dataclass
class SlotReport:
    tokens: int = 0
    codes: int = 0
    code_mismatch_in_margin: int = 0
    code_mismatch_outside_margin: int = 0
    signs: int = 0
    sign_mismatch_in_margin: int = 0
    sign_mismatch_outside_margin: int = 0
    norm_max_rel_err: float = 0.0
    rnorm_max_abs_err: float = 0.0
    padding_nonzero: int = 0
    details: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.code_mismatch_outside_margin == 0 and self.sign_mismatch_outside_margin == 0
                and self.norm_max_rel_err <= tqf.NORM_RTOL and self.rnorm_max_abs_err <= tqf.RNORM_ATOL
                and self.padding_nonzero == 0)

    @property
    def code_mismatch_rate(self) -> float:
        return self.code_mismatch_in_margin / max(self.codes, 1)


def _norm_err(a, b) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(a - b) / np.maximum(np.abs(b), np.finfo(np.float32).tiny)
    rel = np.where(both_nan, 0.0, rel)
    rel = np.where(np.isnan(rel), np.inf, rel)
    return float(rel.max(initial=0.0))


def compare_slots(impl_slots: np.ndarray, key: np.ndarray, value: np.ndarray, fmt: tqf.LayerFormat) -> SlotReport:
    """impl_slots [..., slot_bytes] against the reference encoding of key/value [..., d]."""
    stages = encode_stages(key, value, fmt)
    ref_slots = pack_fields(stages_to_fields(stages, fmt), fmt)
    got = unpack_fields(impl_slots, fmt)
    want = unpack_fields(ref_slots, fmt)
    rep = SlotReport(tokens=int(np.prod(impl_slots.shape[:-1])))
    end = fmt.fields[-1].offset + fmt.fields[-1].nbytes
    rep.padding_nonzero = int(np.count_nonzero(impl_slots[..., end:]))

    def check_codes(name, y, boundaries, margin):
        g, w = got[name], want[name]
        diff = g != w
        near = np.min(np.abs(y[..., None] - boundaries), axis=-1) <= margin
        one_step = np.abs(g.astype(int) - w.astype(int)) == 1
        rep.codes += g.size
        rep.code_mismatch_in_margin += int(np.sum(diff & near & one_step))
        rep.code_mismatch_outside_margin += int(np.sum(diff & ~(near & one_step)))
        return np.any(diff, axis=-1)

    params = layer_params(fmt)
    for tensor, prefix, insts in (("key", "k", params.keys), ("value", "v", params.values)):
        for p in insts:
            i = p.instance.index
            st = stages[tensor][i]
            nerr = _norm_err(got[f"{prefix}_norm.{i}"], want[f"{prefix}_norm.{i}"])
            rep.norm_max_rel_err = max(rep.norm_max_rel_err, nerr)
            token_differs = np.zeros(st["norm"].shape, bool)
            if p.codebook is not None:
                token_differs = check_codes(f"{prefix}_codes.{i}", st["y"], p.codebook.boundaries, tqf.CODE_MARGIN)
            if p.qjl is not None:
                g, w = got[f"k_signs.{i}"], want[f"k_signs.{i}"]
                same_tok = ~token_differs[..., None]
                diff = (g != w) & same_tok
                near = np.abs(st["residual_proj"]) < tqf.SIGN_MARGIN
                rep.signs += int(np.sum(np.broadcast_to(same_tok, g.shape)))
                rep.sign_mismatch_in_margin += int(np.sum(diff & near))
                rep.sign_mismatch_outside_margin += int(np.sum(diff & ~near))
                gr, wr = got[f"k_rnorm.{i}"], want[f"k_rnorm.{i}"]
                same = ~token_differs & ~(np.isnan(gr) & np.isnan(wr))
                err = np.abs(gr[same].astype(np.float64) - wr[same])
                rep.rnorm_max_abs_err = max(rep.rnorm_max_abs_err, float(err.max(initial=0.0)))
                if np.any(np.isnan(gr) != np.isnan(wr)):
                    rep.rnorm_max_abs_err = float("inf")
    if fmt.preset.value_mode == "group":
        gv = stages["value"]
        for nm in ("v_scale", "v_zero"):
            a, b = got[nm], want[nm]
            if not np.array_equal(a.view(np.uint16), b.view(np.uint16)):
                rep.norm_max_rel_err = max(rep.norm_max_rel_err, _norm_err(a, b))
        t = gv["t"]
        frac = np.abs((t - np.floor(t)) - 0.5)
        g, w = got["v_codes"], want["v_codes"]
        diff = g != w
        near = frac <= tqf.GROUP_CODE_MARGIN
        rep.codes += g.size
        rep.code_mismatch_in_margin += int(np.sum(diff & near))
        rep.code_mismatch_outside_margin += int(np.sum(diff & ~near))
    return rep


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    """||out - ref|| / ||ref|| over finite reference entries; NaN where the
    reference is finite fails (returns inf); NaN positions must match."""
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    if not np.array_equal(np.isnan(out), np.isnan(ref)):
        return float("inf")
    m = ~np.isnan(ref)
    den = np.linalg.norm(ref[m])
    return float(np.linalg.norm(out[m] - ref[m]) / max(den, 1e-30))


def float_field_mask(fmt: tqf.LayerFormat) -> np.ndarray:
    """Boolean [slot_bytes]: True at the bytes of float32 norm fields (norms and gamma)."""
    m = np.zeros(fmt.slot_bytes, bool)
    for f in fmt.fields:
        if f.dtype == "f4":
            m[f.offset:f.offset + f.nbytes] = True
    return m


def slots_equal_under_contract(got: np.ndarray, want: np.ndarray, fmt: tqf.LayerFormat) -> tuple[bool, str]:
    """Packed slots [..., slot_bytes] equal except float32 norm fields, which may differ
    within NORM_RTOL (norms) / RNORM_ATOL (gamma); NaN encodings must match bit-exactly."""
    fmask = float_field_mask(fmt)
    diff = np.argwhere(got[..., ~fmask] != want[..., ~fmask])
    if diff.size:
        return False, f"{len(diff)} code/sign/scale/padding bytes differ, first at {diff[:3].tolist()}"
    g = unpack_fields(np.ascontiguousarray(got), fmt)
    w = unpack_fields(np.ascontiguousarray(want), fmt)
    for f in fmt.fields:
        if f.dtype != "f4":
            continue
        a, b = g[f.name].astype(np.float64), w[f.name].astype(np.float64)
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            return False, f"{f.name}: NaN positions differ"
        ok = ~np.isnan(b)
        if f.name.startswith("k_rnorm"):
            err, tol = float(np.max(np.abs(a[ok] - b[ok]), initial=0.0)), tqf.RNORM_ATOL
        else:
            err, tol = _norm_err(a[ok], b[ok]), tqf.NORM_RTOL
        if err > tol:
            return False, f"{f.name}: error {err:.2e} > {tol:.0e}"
    return True, ""

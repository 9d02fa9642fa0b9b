"""SPEC.md stands alone: a torch-only encoder written from SPEC.md's text rebuilds the
golden cache bytes.

The encoder below uses none of NumPy's random numbers, LAPACK or the reference (which
appears only as the comparison of the second test): the seeds come from hashlib's SHA-256
(SPEC section 2), Pi and S from SplitMix64 words, Box-Muller and modified Gram-Schmidt
written out in torch float64, the codebooks from the shipped JSON data (section 3), the
channel split from section 1.1 and the slot layout from the rules of section 6 (only the
preset's parameters and SPEC's constants table come from turboquant.format).  The result must equal the committed
golden cache bytes (codes, signs, fp16 fields and padding exactly; float32 norms within
NORM_RTOL, gamma within RNORM_ATOL), and the rebuilt Pi and S must equal the reference's
float32 matrices to within one float32 ulp per entry (SPEC section 2's tolerance).
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import resources

import numpy as np
import pytest

from turboquant import format as tqf
from turboquant.conformance import golden as G
from turboquant.conformance.compare import slots_equal_under_contract

torch = pytest.importorskip("torch")

# ------------------------------------------------------------------ SPEC section 2, from its text
GAMMA, M1, M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _i64(c: int) -> int:
    """The int64 with the same 64 bits as the unsigned c."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(z, k: int):
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def seed_of(base_seed: int, layer: int, purpose: str, instance: int) -> int:
    text = f"turboquant/v1/{base_seed}/{layer}/{purpose}/{instance}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def words(seed: int, n: int):
    """z_k = mix(seed + (k+1) GAMMA), k = 0..n-1, as int64 bit patterns (wrapping arithmetic)."""
    z = torch.arange(1, n + 1, dtype=torch.int64) * _i64(GAMMA) + _i64(seed)
    z = (z ^ _shr(z, 30)) * _i64(M1)
    z = (z ^ _shr(z, 27)) * _i64(M2)
    return z ^ _shr(z, 31)


def gaussian(seed: int, m: int):
    u = (_shr(words(seed, m * m), 11).to(torch.float64) + 0.5) * 2.0**-53
    r = torch.sqrt(-2.0 * torch.log(u[0::2]))
    t = (2 * math.pi) * u[1::2]
    return torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1).reshape(m, m)


def haar(seed: int, m: int):
    a = gaussian(seed, m).clone()
    q = torch.empty_like(a)
    for j in range(m):
        qj = a[:, j] / torch.sqrt(torch.sum(a[:, j] * a[:, j]))
        q[:, j] = qj
        a[:, j + 1:] -= torch.outer(qj, qj @ a[:, j + 1:])
    return q.to(torch.float32)


def hadamard(seed: int, m: int):
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < m:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    s = 1.0 - 2.0 * _shr(words(seed, m), 63).to(torch.float64)
    return (h * s[None, :] / math.sqrt(m)).to(torch.float32)


# ------------------------------------------------------------------ SPEC sections 1, 3, 4, 5, 6, 8
def codebook(m: int, bits: int):
    books = json.loads(resources.files("turboquant").joinpath("data", "codebooks.json").read_text())["codebooks"]
    e = books[f"{m}/{bits}"]
    return torch.tensor(e["centroids"], dtype=torch.float32), torch.tensor(e["boundaries"], dtype=torch.float32)


def instances(preset, d: int, tensor: str):
    """[(index, channels, bits, qjl)] per SPEC 1.1 (uncalibrated split: outliers 0..n_o-1)."""
    mode, bits, out_bits = ((preset.key_mode, preset.key_bits, preset.key_outlier_bits) if tensor == "key"
                            else ("mse", preset.value_bits, preset.value_outlier_bits))
    qjl = mode == "prod"
    if not preset.outlier_fraction:
        return [(0, torch.arange(d), bits - qjl, qjl)]
    n = round(d * preset.outlier_fraction)
    return [(0, torch.arange(n), out_bits - qjl, qjl), (1, torch.arange(n, d), bits - qjl, qjl)]


def pack(codes, bits: int):
    """LSB-first bit stream of codes [t, n] -> uint8 [t, ceil(n bits / 8)]."""
    t, n = codes.shape
    stream = ((codes.to(torch.int64)[..., None] >> torch.arange(bits)) & 1).reshape(t, n * bits)
    stream = torch.nn.functional.pad(stream, (0, (-n * bits) % 8)).reshape(t, -1, 8)
    return (stream << torch.arange(8)).sum(-1).to(torch.uint8)


def f32_bytes(x):
    return x.to(torch.float32).contiguous().view(torch.uint8).reshape(x.shape[0], 4)


def encode_mse_prod(x, inst, rot, qjl_s):
    """One instance of SPEC 4.1-4.2: (norm, gamma | None, codes | None, signs | None)."""
    _, ch, bits, qjl = inst
    xc = x[:, ch]
    mx = xc.abs().amax(-1, keepdim=True)
    s = xc / torch.where(mx > 0, mx, 1.0)
    n = torch.sqrt(torch.sum(s * s, -1, keepdim=True))
    norm = (mx * n)[:, 0]
    u = s / torch.where(n > 0, n, 1.0)
    y = u @ rot.T
    codes, rec = None, torch.zeros_like(y)
    if bits:
        cent, bnd = codebook(len(ch), bits)
        codes = (y[..., None] > bnd).sum(-1)
        rec = cent[codes]
    if not qjl:
        return norm, None, codes, None
    r = y - rec
    return norm, torch.sqrt(torch.sum(r * r, -1)), codes, ((r @ qjl_s.T) >= 0).to(torch.int64)


def encode_slots(key, value, fmt_preset, d: int, layer: int, base_seed: int):
    """key/value float32 [t, d] of one KV head -> uint8 [t, slot bytes] by SPEC's rules."""
    p = fmt_preset
    nan32 = torch.tensor([tqf.NORM_NAN_BITS], dtype=torch.int32).view(torch.float32)
    f4, f2, streams = [], [], []
    kbad = ~torch.isfinite(key).all(-1)
    kparts = []
    for inst in instances(p, d, "key"):
        i, ch = inst[0], inst[1]
        seed = seed_of(base_seed, layer, "rotation", i)
        rot = haar(seed, len(ch)) if p.rotation == "haar" else hadamard(seed, len(ch))
        s = gaussian(seed_of(base_seed, layer, "qjl", i), len(ch)).to(torch.float32) if inst[3] else None
        kparts.append((inst, encode_mse_prod(key, inst, rot, s)))
    for _, (norm, _, _, _) in kparts:
        kbad |= ~torch.isfinite(norm)
    for _, (norm, _, _, _) in kparts:
        f4.append(torch.where(kbad, nan32, norm))
    for _, (_, gamma, _, _) in kparts:
        if gamma is not None:
            f4.append(torch.where(kbad, nan32, gamma))
    if p.value_mode == "mse":
        vbad = ~torch.isfinite(value).all(-1)
        vparts = []
        for inst in instances(p, d, "value"):
            rot_seed = seed_of(base_seed, layer, "rotation", inst[0])
            rot = haar(rot_seed, len(inst[1])) if p.rotation == "haar" else hadamard(rot_seed, len(inst[1]))
            vparts.append((inst, encode_mse_prod(value, inst, rot, None)))
        for _, (norm, _, _, _) in vparts:
            vbad |= ~torch.isfinite(norm)
        for _, (norm, _, _, _) in vparts:
            f4.append(torch.where(vbad, nan32, norm))
    else:  # SPEC 4.4
        g = value.reshape(value.shape[0], -1, p.group_size)
        mn, mx = g.amin(-1), g.amax(-1)
        zero16 = mn.to(torch.float16)
        scale16 = ((mx - mn) / float((1 << p.value_bits) - 1)).to(torch.float16)
        finite = torch.isfinite(zero16) & torch.isfinite(scale16) & torch.isfinite(mx.to(torch.float16))
        vbad = ~finite.all(-1) | ~torch.isfinite(value).all(-1)
        z, sc = zero16.to(torch.float32)[..., None], scale16.to(torch.float32)[..., None]
        t = torch.where(sc > 0, (g - z) / torch.where(sc > 0, sc, 1.0), 0.0)
        vcodes = torch.clamp(torch.floor(t + 0.5), 0, (1 << p.value_bits) - 1).reshape(value.shape)
        vcodes = torch.where(vbad[:, None], 0.0, vcodes)
        nan16 = torch.tensor([tqf.GROUP_NAN_BITS], dtype=torch.int16).view(torch.float16)
        for a in (scale16, zero16):
            f2.append(torch.where(vbad[:, None], nan16, a).contiguous().view(torch.uint8))
    for inst, (_, _, codes, _) in kparts:
        if codes is not None:
            streams.append(pack(torch.where(kbad[:, None], 0, codes), inst[2]))
    for _, (_, _, _, signs) in kparts:
        if signs is not None:
            streams.append(pack(torch.where(kbad[:, None], 0, signs), 1))
    if p.value_mode == "mse":
        for inst, (_, _, codes, _) in vparts:
            streams.append(pack(torch.where(vbad[:, None], 0, codes), inst[2]))
    else:
        streams.append(pack(vcodes, p.value_bits))
    slot = torch.cat([f32_bytes(a) for a in f4] + f2 + streams, dim=1)
    return torch.nn.functional.pad(slot, (0, (-slot.shape[1]) % tqf.SLOT_ALIGN))


# ------------------------------------------------------------------ the tests
@pytest.mark.parametrize("preset", G.golden_presets())
def test_golden_cache_from_spec_text(preset):
    g = G.load(preset)
    fmt = g["fmt"]
    key, value = torch.from_numpy(g["key"]), torch.from_numpy(g["value"])
    n, h, d = key.shape
    cache = torch.full(fmt.cache_shape(g["num_blocks"], g["block_size"], h), G.CACHE_FILL, dtype=torch.uint8)
    bs = g["block_size"]
    for head in range(h):
        slots = encode_slots(key[:, head], value[:, head], fmt.preset, d, fmt.layer, fmt.base_seed)
        assert slots.shape[1] == fmt.slot_bytes
        for t, s in enumerate(g["slot_mapping"].tolist()):
            if s >= 0:
                cache[s // bs, head, s % bs] = slots[t]
    ok, msg = slots_equal_under_contract(cache.numpy(), g["cache"], fmt)
    assert ok, msg


@pytest.mark.parametrize("kind,purpose,layer,inst,m", [
    ("haar", "rotation", 1, 0, 128), ("haar", "rotation", 0, 1, 96), ("haar", "rotation", 3, 0, 256),
    ("hadamard", "rotation", 1, 0, 128), ("qjl", "qjl", 1, 0, 128), ("qjl", "qjl", 0, 1, 32)])
def test_matrices_from_spec_text_within_one_ulp(kind, purpose, layer, inst, m):
    """Torch's log/cos/sin and dot orders differ from NumPy's: every float32 entry of Pi and S
    agrees with the reference's to one float32 ulp (almost all bit-identical)."""
    from turboquant.reference.qjl import qjl_matrix
    from turboquant.reference.rotation import rotation_matrix

    seed = seed_of(tqf.DEFAULT_BASE_SEED, layer, purpose, inst)
    assert seed == tqf.derive_seed(tqf.DEFAULT_BASE_SEED, layer, purpose, inst)
    if kind == "qjl":
        got, want = gaussian(seed, m).to(torch.float32).numpy(), qjl_matrix(m, seed)
    else:
        got = (haar(seed, m) if kind == "haar" else hadamard(seed, m)).numpy()
        want = rotation_matrix(kind, m, seed)
    ulps = np.abs(got.view(np.int32).astype(np.int64) - want.view(np.int32).astype(np.int64))
    assert ulps.max() <= 1, int(ulps.max())
    assert np.count_nonzero(ulps) <= 0.01 * ulps.size

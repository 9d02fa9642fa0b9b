"""store_mse.py (the store of the one-instance mse presets, rotation on tensor cores) against the
reference under SPEC §10's contract, and the generic store kernel beside it on the same inputs."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import triton

from turboquant import format as tqf
from turboquant.conformance.compare import compare_slots
from turboquant.triton_impl import KernelParams, store_kv
from turboquant.triton_impl.store_mse import store_mse, store_mse_applies

DEV = "cuda" if torch.cuda.is_available() else "cpu"
MSE_PRESETS = ("tq3", "k4v3", "tq4", "tq3_hadamard", "tq2")


def _inputs(n: int, h: int, d: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(n, h, d, generator=g) * 2.0
    v = torch.randn(n, h, d, generator=g)
    k[1, 0] = 0.0  # zero vector
    k[2, 1, 5] = float("nan")  # non-finite key token
    v[3, 0, 7] = float("inf")  # non-finite value token
    v[4, 1] = 0.0
    big = 3e38 if dtype != torch.float16 else 6e4
    k[5, 0] = torch.randn(d, generator=g).sign() * big / 16  # norm near the top of the dtype's range
    k[6, 1] = torch.randn(d, generator=g) * 1e-30 if dtype != torch.float16 else torch.randn(d, generator=g) * 1e-4
    if dtype == torch.float32:
        v[7, 0] = 3e38  # norm overflows float32: non-finite token (SPEC §4.1)
    return k.to(dtype), v.to(dtype)


def _token_slots(cache, slots):
    """[tokens, heads, slot_bytes] of the written tokens (cache [blocks, heads, block_size, bytes])."""
    nb, h, bs, sb = cache.shape
    return cache.permute(0, 2, 1, 3).reshape(nb * bs, h, sb)[slots[slots >= 0].to(cache.device)].cpu().numpy()


def _check(cache, slots, k, v, fmt):
    keep = slots >= 0
    rep = compare_slots(_token_slots(cache, slots), k[keep].float().numpy(), v[keep].float().numpy(), fmt)
    assert rep.ok, rep


def _same_bytes(fmt, p, k, v, slots, nb, bs, *options):
    """store_mse of k, v [n, h, d] (on DEV) into a fresh cache (0xAB) with each of the keyword sets ``options``:
    asserts that all store the first's bytes, checks them against the reference, returns them (CPU)."""
    out = []
    for kw in options:
        cache = torch.full(fmt.cache_shape(nb, bs, k.shape[1]), 0xAB, dtype=torch.uint8, device=DEV)
        store_mse(k, v, cache, slots, p, **kw)
        out.append(cache.cpu())
    for other in out[1:]:
        assert torch.equal(out[0], other)
    _check(out[0], slots.cpu(), k.cpu(), v.cpu(), fmt)
    return out[0]


def _slots(n, nb, bs, seed=1):
    g = torch.Generator().manual_seed(seed)
    s = torch.randperm(nb * bs, generator=g)[:n].to(torch.int64)
    s[0] = -1  # padding (vLLM's padded slot mapping): nothing written
    return s


@pytest.mark.parametrize("preset", MSE_PRESETS)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_store_mse_meets_the_contract(preset, d, dtype):
    fmt = tqf.LayerFormat(tqf.get_preset(preset), d)
    p = KernelParams.build(fmt, DEV)
    assert store_mse_applies(p)
    n, h, nb, bs = 37, 3, 4, 16
    k, v = _inputs(n, h, d, dtype)
    slots = _slots(n, nb, bs)
    cache = torch.full(fmt.cache_shape(nb, bs, h), 0xAB, dtype=torch.uint8, device=DEV)
    store_kv(k.to(DEV), v.to(DEV), cache, slots.to(DEV), p, kernel="mse")
    # untouched: every slot the mapping does not name
    written = torch.zeros(nb * bs, dtype=torch.bool)
    written[slots[slots >= 0]] = True
    flat = cache.permute(0, 2, 1, 3).reshape(nb * bs, h, -1).cpu()
    assert bool((flat[~written] == 0xAB).all())
    _check(cache, slots, k, v, fmt)


@pytest.mark.parametrize("preset", ["tq3", "k4v3"])
def test_store_mse_equals_generic_kernel_within_contract(preset):
    """Both kernels on the same strided K/V (views of a fused qkv tensor, as vLLM passes them)."""
    fmt = tqf.LayerFormat(tqf.get_preset(preset), 128)
    p = KernelParams.build(fmt, DEV)
    n, h, nb, bs = 50, 2, 4, 32
    qkv = torch.randn(n, 4 + 2 * h, 128, dtype=torch.bfloat16)
    k, v = qkv[:, 4:4 + h], qkv[:, 4 + h:]
    slots = _slots(n, nb, bs, seed=3)
    a = torch.zeros(fmt.cache_shape(nb, bs, h), dtype=torch.uint8, device=DEV)
    b = a.clone()
    store_kv(k.to(DEV), v.to(DEV), a, slots.to(DEV), p, kernel="mse", block_tokens=32)
    store_kv(k.to(DEV), v.to(DEV), b, slots.to(DEV), p, kernel="generic", rotation="fma")
    fm = fmt.field_map
    codes = [(f.offset, f.offset + f.nbytes) for name, f in fm.items() if "codes" in name]
    ga, gb = _token_slots(a, slots), _token_slots(b, slots)
    differing = sum(int(np.count_nonzero(ga[..., s:e] != gb[..., s:e])) for s, e in codes)
    assert differing <= 2, differing  # only codes within CODE_MARGIN of a boundary may differ
    _check(a, slots, k, v, fmt)


@pytest.mark.parametrize("block_rows", [16, 64])
def test_debug_rotated_coordinates_match_the_generic_kernel(block_rows):
    """The conformance hook (debug_rotated: y = Pi u per row) of store_mse beside the generic kernel's,
    special rows included; a buffer too small for its layout is refused (the kernels would write past
    it: heap corruption under the interpreter, silent corruption on a GPU)."""
    fmt = tqf.LayerFormat(tqf.get_preset("tq3"), 128)
    p = KernelParams.build(fmt, DEV)
    m = p.meta
    need = 9 * 2 * (m["K0_MP"] + m["K1_MP"] + m["V0_MP"] + m["V1_MP"])
    k, v = _inputs(9, 2, 128, torch.bfloat16)
    k, v = k.to(DEV), v.to(DEV)
    ys = []
    for kernel, kw in (("mse", {"block_tokens": block_rows}), ("generic", {}),
                       ("mse", {"block_tokens": block_rows, "variant": ("prefetch", "lean", "search", "kv")})):
        cache = torch.zeros(fmt.cache_shape(9, 1, 2), dtype=torch.uint8, device=DEV)
        y = torch.zeros(need, dtype=torch.float32, device=DEV)
        store_kv(k, v, cache, torch.arange(9, device=DEV), p, debug_rotated=y, kernel=kernel, **kw)
        ys.append(y.cpu().numpy())
        for bad in (torch.zeros(need - 1, device=DEV), torch.zeros(need, dtype=torch.float64, device=DEV),
                    torch.zeros(2 * need, device=DEV)[::2]):
            with pytest.raises(ValueError, match=f"debug_rotated must be a contiguous float32 tensor .* "
                                                 f"at least {need}"):
                store_kv(k, v, cache, torch.arange(9, device=DEV), p, debug_rotated=bad, kernel=kernel, **kw)
    # both write 0 for non-finite rows; elsewhere the same y up to the rotation's rounding (SPEC §4)
    np.testing.assert_allclose(ys[0], ys[1], rtol=0, atol=2e-6)
    np.testing.assert_array_equal(ys[2], ys[0])  # one launch for keys and values ("kv"): the same y
    assert np.abs(ys[0]).max() > 0.1


@pytest.mark.parametrize("preset,d", [("tq3_qjl", 128), ("k4g4", 128), ("tq2.5", 128), ("tq3", 96),
                                      ("tq3", 256)])
def test_store_mse_refuses_other_formats(preset, d):
    fmt = tqf.LayerFormat(tqf.get_preset(preset), d)
    p = KernelParams.build(fmt, DEV)
    assert not store_mse_applies(p)
    x = torch.zeros(2, 1, d, dtype=torch.bfloat16, device=DEV)
    cache = torch.zeros(fmt.cache_shape(1, 16, 1), dtype=torch.uint8, device=DEV)
    with pytest.raises(ValueError, match="store_mse does not cover"):
        store_kv(x, x, cache, torch.arange(2, device=DEV), p, kernel="mse")
    store_kv(x, x, cache, torch.arange(2, device=DEV), p)  # "auto" takes the generic kernel


def test_store_mse_argument_errors_name_the_parameter():
    fmt = tqf.LayerFormat(tqf.get_preset("tq3"), 128)
    p = KernelParams.build(fmt, DEV)
    x = torch.zeros(2, 1, 128, dtype=torch.bfloat16, device=DEV)
    cache = torch.zeros(fmt.cache_shape(1, 16, 1), dtype=torch.uint8, device=DEV)
    with pytest.raises(ValueError, match="block_rows must be a power of two"):
        store_mse(x, x, cache, torch.arange(2, device=DEV), p, block_rows=48)
    with pytest.raises(ValueError, match="kernel"):
        store_kv(x, x, cache, torch.arange(2, device=DEV), p, kernel="fast")
    with pytest.raises(ValueError, match="rotation='fma' applies to kernel='generic' only"):
        store_kv(x, x, cache, torch.arange(2, device=DEV), p, kernel="mse", rotation="fma")
    assert not cache.any()  # nothing written by a refused call


@pytest.mark.parametrize("kw", [
    *[{"variant": v} for v in [("prefetch",), ("lean",), ("halves",), ("prefetch", "lean"), ("search",),
                               ("prefetch", "lean", "search"), ("kv",), ("prefetch", "lean", "search", "kv")]],
    *[{"variant": v, "col_blocks": c} for c, v in [(2, ()), (4, ("prefetch", "lean", "search")),
                                                   (2, ("prefetch", "lean", "search", "kv")), (4, ("kv",))]],
], ids=lambda kw: "+".join(kw["variant"]) + (f"-c{kw['col_blocks']}" if "col_blocks" in kw else ""))
@pytest.mark.parametrize("preset,d,dtype", [("tq3", 128, torch.bfloat16), ("k4v3", 128, torch.float32),
                                            ("tq2", 64, torch.float16), ("tq3", 64, torch.bfloat16)])
def test_store_mse_options_store_the_default_bytes(kw, preset, d, dtype):
    """Each kernel option stores the plain kernel's bytes, bit for bit (the same arithmetic), and the debug
    hook's y in place: store_mse.VARIANTS ("kv": keys and values in one launch) on tiles of 16 rows x 1 warp,
    where the lean variants' column permutation applies (tq3 at d = 64: the words do not split by lane group,
    so only the finiteness fold applies), and col_blocks (each row tile's coordinates over programs, each
    storing its block's whole code words and block 0 the norm; at d = 64 at most 2 blocks of 32
    coordinates); two programs an SM over 7 row tiles, so that each program's loop also runs past the last
    tile (prefetch past the last)."""
    fmt = tqf.LayerFormat(tqf.get_preset(preset), d)
    p = KernelParams.build(fmt, DEV)
    m = p.meta
    n, h, nb, bs = 37, 3, 4, 16
    k, v = _inputs(n, h, d, dtype)
    k, v = k.to(DEV), v.to(DEV)
    slots = _slots(n, nb, bs).to(DEV)
    if "col_blocks" in kw:
        kw = {**kw, "col_blocks": min(kw["col_blocks"], d // 32)}
    out, ys = [], []
    for opts in ({"variant": ()}, kw):
        cache = torch.full(fmt.cache_shape(nb, bs, h), 0xAB, dtype=torch.uint8, device=DEV)
        y = torch.zeros(n * h * (m["K0_MP"] + m["K1_MP"] + m["V0_MP"] + m["V1_MP"]), dtype=torch.float32, device=DEV)
        store_mse(k, v, cache, slots, p, y, block_rows=16, num_warps=1, programs_per_sm=2, **opts)
        out.append(cache.cpu())
        ys.append(y.cpu())
    assert torch.equal(out[0], out[1])
    assert torch.equal(ys[0], ys[1])
    _check(out[1], slots.cpu(), k.cpu(), v.cpu(), fmt)


@pytest.mark.parametrize("programs,tiles,bits,nb,want", [
    # k4v3 at 32k tokens x 8 heads on 132 SMs: 216 key programs of 19 tiles or fewer (28,538 instructions) and 180
    # value programs of up to 23 (29,233), against 30,040 at the proportional 214 and 31,542 at half (198: 21 tiles)
    (396, 4096, (4, 3), 1, 216),
    (396, 4096, (3, 4), 1, 180),
    (396, 4096, (3, 3), 1, 198), (396, 4096, (4, 4), 1, 198), (396, 4096, (2, 3), 1, 198),  # no cost: half
    (396, 256, (4, 3), 1, 256),  # 2k tokens: one key tile a program, two value tiles (2,542 against half's 3,004)
    (16, 8, (4, 3), 1, 8),  # no more key programs than key tiles (9 by the share)
    (14, 7, (4, 3), 1, 7),  # nor value programs: every tile its own program either way
    (2, 1, (4, 3), 1, 1),  # one program a tensor at least
    (48, 40, (4, 3), 2, 28),  # whole row tiles with column blocks: 14 of 24 two-program units (3 tiles against 4)
    (64, 40, (4, 3), 4, 32),  # 8 of 16 units: 9 would not shorten the keys (5 tiles) but lengthen the values
])
def test_key_programs_share_by_tile_cost(programs, tiles, bits, nb, want):
    """store_wg.key_programs: with "balance", the key program count whose longest program (keys' or values', at
    store_wg.TILE_COST a tile) is shortest, nearest the proportional share among equals, in whole column-block
    units, within [1, tiles] a tensor; half otherwise."""
    from turboquant.triton_impl.store_wg import key_programs

    assert key_programs(programs, tiles, *bits, balance=True, col_blocks=nb) == want
    assert key_programs(programs, tiles, *bits, balance=False, col_blocks=nb) == programs // 2


@pytest.mark.parametrize("variant,col_blocks", [(("prefetch", "lean", "search", "kv", "balance"), None),
                                                (("kv", "balance"), 2)])
def test_balance_stores_the_default_bytes(variant, col_blocks):
    """Variant "balance" moves rows between the keys' and the values' programs of one launch, not their
    arithmetic: k4v3 (4-bit keys, 3-bit values) stores the half-and-half launch's bytes, bit for bit, with a
    split that is not half (checked): at least 25 row tiles a tensor, more where half the launch's programs
    would take them all (a GPU's SM count), since a tensor gets no more programs than it has tiles."""
    from turboquant.triton_impl.device import sm_count
    from turboquant.triton_impl.store_wg import key_programs

    fmt = tqf.LayerFormat(tqf.get_preset("k4v3"), 128)
    p = KernelParams.build(fmt, DEV)
    c, sm = col_blocks or 1, sm_count(torch.device(DEV))
    pps = 40 // sm or 1
    tiles = max(25, pps * sm // 2 // c + 8)  # 16-row tiles of (token, head) rows a tensor
    h, bs, block_rows = 4, 16, 16
    n = tiles * block_rows // h
    nb = n // bs + 2
    k, v = (t.to(DEV) for t in _inputs(n, h, 128, torch.bfloat16))
    slots = _slots(n, nb, bs).to(DEV)
    programs = 2 * c * min(tiles, pps * sm // 2 // c)
    assert key_programs(programs, tiles, 4, 3, balance=True, col_blocks=c) != programs // 2
    kw = {"block_rows": block_rows, "num_warps": 1, "programs_per_sm": pps, "col_blocks": col_blocks}
    _same_bytes(fmt, p, k, v, slots, nb, bs, {**kw, "variant": tuple(x for x in variant if x != "balance")},
                {**kw, "variant": variant})


@pytest.mark.parametrize("d", [64, 128])
def test_small_row_launch_takes_over_at_most_small_rows(monkeypatch, d):
    """store_mse.SMALL_ROWS: a call that chooses nothing itself and stores at most that many rows of
    (token, head) takes SMALL_LAUNCH (one launch for keys and values, column blocks: at d = 64 two), the
    default's bytes; one row more, or any choice of the caller's, keeps the defaults (64-row tiles, all of
    a row's coordinates in one program; keys and values in one launch too, DEFAULT_VARIANT's "kv")."""
    import turboquant.triton_impl.store_mse as sm

    fmt = tqf.LayerFormat(tqf.get_preset("tq3"), d)
    p = KernelParams.build(fmt, DEV)
    n, h, nb, bs = 11, 3, 2, 16
    k, v = _inputs(n, h, d, torch.bfloat16)
    k, v = k.to(DEV), v.to(DEV)
    slots = _slots(n, nb, bs).to(DEV)
    launches = []

    class Spy:  # records which kernel ran on how many programs, then runs it
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            launches.append((self.name, grid[0]))
            return self.kernel[grid]

    monkeypatch.setattr(sm.store_wg, "why_not", lambda *a: "off")  # the Triton launches (store_wg's: below)
    monkeypatch.setattr(sm, "_store_mse_kernel", Spy("one", sm._store_mse_kernel))
    monkeypatch.setattr(sm, "_store_mse_kv_kernel", Spy("kv", sm._store_mse_kv_kernel))
    out = []
    for small_rows, kw in ((0, {}), (n * h, {}), (n * h - 1, {}), (n * h, {"block_rows": 64})):
        monkeypatch.setattr(sm, "SMALL_ROWS", small_rows)
        launches.clear()
        cache = torch.full(fmt.cache_shape(nb, bs, h), 0xAB, dtype=torch.uint8, device=DEV)
        store_kv(k, v, cache, slots, p, block_tokens=kw.get("block_rows"))
        out.append(cache.cpu())
        assert [name for name, _ in launches] == ["kv"], launches  # keys and values in one launch either way
        if small_rows == n * h and not kw:
            cols = min(4, d // 32)  # programs: keys and values, each a multiple of the column blocks
            assert launches[0][1] % (2 * cols) == 0, launches
        else:
            assert launches[0][1] == 2, launches  # the one 64-row tile of keys and of values, all columns
        assert torch.equal(out[-1], out[0])
    _check(out[1], slots.cpu(), k.cpu(), v.cpu(), fmt)


@pytest.mark.parametrize("variant", [("prefetch", "lean", "search", "kv"), ("prefetch", "lean", "search")])
@pytest.mark.parametrize("kdt,vdt", [(torch.bfloat16, torch.float32), (torch.float32, torch.float16)])
def test_keys_and_values_of_different_dtypes_meet_the_contract(variant, kdt, vdt):
    """A 16-bit tensor and a float32 one (check_store accepts each its own dtype): each gets its own number of
    fp16 parts of x 2^-e (one, exact, for 16-bit input; two for float32), in one launch ("kv") or two: each
    tensor's rotated coordinates (the debug hook's y) are those of a call where both tensors have its dtype,
    to 2^-16 of the largest |y| (one part for a float32 tensor would err by ~2^-12 of |y|, past CODE_MARGIN at
    worst; on the GPU the one-launch kernel's specialization for the other tensor's dtype may round a product-sum
    otherwise, which exact equality failed on), and the stored bytes meet the contract."""
    fmt = tqf.LayerFormat(tqf.get_preset("k4v3"), 128)
    p = KernelParams.build(fmt, DEV)
    m = p.meta
    n, h, nb, bs = 37, 3, 4, 16
    k, v = _inputs(n, h, 128, torch.float32)
    k[7, 0] = 1.0  # _inputs' float32-only overflow row, outside bf16 / fp16's own tests
    v[7, 0] = 1.0
    k, v = k.to(kdt).to(DEV), v.to(vdt).to(DEV)
    slots = _slots(n, nb, bs).to(DEV)
    ky = n * h * (m["K0_MP"] + m["K1_MP"])  # rotated_debug: the keys' coordinates, then the values'
    ys = []
    for kk, vv in ((k, v), (k, v.to(kdt)), (k.to(vdt), v)):
        cache = torch.full(fmt.cache_shape(nb, bs, h), 0xAB, dtype=torch.uint8, device=DEV)
        y = torch.zeros(n * h * (m["K0_MP"] + m["K1_MP"] + m["V0_MP"] + m["V1_MP"]), dtype=torch.float32, device=DEV)
        store_mse(kk, vv, cache, slots, p, y, variant=variant, block_rows=16, num_warps=1)
        ys.append(y.cpu())
        if kk is k and vv is v:
            _check(cache, slots.cpu(), k.cpu(), v.cpu(), fmt)
    for got, want, what in ((ys[0][:ky], ys[1][:ky], "keys"), (ys[0][ky:], ys[2][ky:], "values")):
        # the keys' y as when both are the keys' dtype, the values' as when both are the values'
        diff = (got - want).abs().max().item()
        assert diff <= 2.0 ** -16 * want.abs().max().item(), (what, diff, want.abs().max().item())


@pytest.mark.parametrize("preset", ["tq3", "k4v3"])
def test_store_mse_register_cap_stores_the_default_bytes(preset):
    """maxnreg (a register cap; on the GPU 128 at 128 rows x 8 warps spills to the stack so that two
    programs share an SM) changes where values live, not the arithmetic: the default's bytes."""
    fmt = tqf.LayerFormat(tqf.get_preset(preset), 128)
    p = KernelParams.build(fmt, DEV)
    n, h, nb, bs = 37, 5, 4, 16
    k, v = _inputs(n, h, 128, torch.bfloat16)
    k, v = k.to(DEV), v.to(DEV)
    slots = _slots(n, nb, bs).to(DEV)
    _same_bytes(fmt, p, k, v, slots, nb, bs, {}, {"block_rows": 128, "num_warps": 8, "maxnreg": 128})


def test_store_mse_variant_errors_name_the_parameter():
    fmt = tqf.LayerFormat(tqf.get_preset("tq3"), 128)
    p = KernelParams.build(fmt, DEV)
    x = torch.zeros(2, 1, 128, dtype=torch.bfloat16, device=DEV)
    cache = torch.zeros(fmt.cache_shape(1, 16, 1), dtype=torch.uint8, device=DEV)
    with pytest.raises(ValueError, match=r"variant='fast' is not supported; allowed values: \['prefetch', 'lean'"):
        store_kv(x, x, cache, torch.arange(2, device=DEV), p, kernel="mse", variant=("fast",))
    with pytest.raises(ValueError, match="programs_per_sm must be a positive integer, got 0"):
        store_kv(x, x, cache, torch.arange(2, device=DEV), p, kernel="mse", programs_per_sm=0)
    # "balance" splits one launch's programs between keys and values: not two launches'
    with pytest.raises(ValueError, match="variant 'balance' .* needs 'kv' or 'wg'"):
        store_kv(x, x, cache, torch.arange(2, device=DEV), p, kernel="mse", variant=("prefetch", "balance"))
    for bad in (0, 16, 256, 128.0, True):
        with pytest.raises(ValueError, match=rf"maxnreg must be None or an integer 24 to 255, got {bad!r}"):
            store_kv(x, x, cache, torch.arange(2, device=DEV), p, kernel="mse", maxnreg=bad)
    with pytest.raises(ValueError, match=r"maxnreg=128 and col_blocks=None apply to store_mse.py only"):
        store_kv(x, x, cache, torch.arange(2, device=DEV), p, kernel="generic", maxnreg=128)
    with pytest.raises(ValueError, match="apply to store_mse.py only"):
        store_kv(x, x, cache, torch.arange(2, device=DEV), p, kernel="generic", variant=("lean",))
    with pytest.raises(ValueError, match=r"col_blocks=2 apply to store_mse.py only"):
        store_kv(x, x, cache, torch.arange(2, device=DEV), p, kernel="generic", col_blocks=2)
    for bad in (0, 3, 8, 2.0, True, "2"):
        with pytest.raises(ValueError, match=rf"col_blocks must be one of \[1, 2, 4\] at head_size=128 .*got "
                                             rf"{bad!r}"):
            store_kv(x, x, cache, torch.arange(2, device=DEV), p, kernel="mse", col_blocks=bad)
    assert not cache.any()  # nothing written by a refused call


HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


@pytest.mark.skipif(not HOPPER, reason="store_wg's kernel needs a Hopper GPU (wgmma)")
@pytest.mark.parametrize("preset,d", [("tq3", 128), ("k4v3", 128), ("tq4", 128), ("tq4", 64), ("tq2", 64),
                                      ("tq3_hadamard", 128)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,h,pps", [(37, 3, 2), (4100, 8, 2), (2500, 5, 3)])
def test_wg_variant_meets_the_contract(preset, d, dtype, n, h, pps):
    """variant "wg" (store_wg's Gluon kernel) under SPEC §10's contract: zero, non-finite, huge and tiny
    vectors, a padded slot (-1) and every slot the mapping does not name untouched; 2 and 37 row tiles of
    64 (a partial last tile) and, at 4,100 x 8 and 2,500 x 5 rows, several tiles a persistent program (its
    prefetch past the last); within the contract of store_mse's default bytes too (the same reference)."""
    fmt = tqf.LayerFormat(tqf.get_preset(preset), d)
    p = KernelParams.build(fmt, DEV)
    k, v = _inputs(n, h, d, dtype)
    nb, bs = triton.cdiv(n + 1, 16), 16
    slots = _slots(n, nb, bs)
    cache = torch.full(fmt.cache_shape(nb, bs, h), 0xAB, dtype=torch.uint8, device=DEV)
    store_kv(k.to(DEV), v.to(DEV), cache, slots.to(DEV), p, kernel="mse",
             variant=("prefetch", "lean", "search", "wg"), programs_per_sm=pps)
    written = torch.zeros(nb * bs, dtype=torch.bool)
    written[slots[slots >= 0]] = True
    flat = cache.permute(0, 2, 1, 3).reshape(nb * bs, h, -1).cpu()
    assert bool((flat[~written] == 0xAB).all())
    _check(cache, slots, k, v, fmt)
    # beside store_mse's default: every norm within NORM_RTOL, codes equal but for rare boundary ties
    ref = torch.full_like(cache, 0xAB)
    store_kv(k.to(DEV), v.to(DEV), ref, slots.to(DEV), p, kernel="mse")
    a, b = _token_slots(cache, slots), _token_slots(ref, slots)
    m = p.meta
    for norm_at, codes_at, bits in ((m["K0_NORM"], m["K0_CODES"], m["K0_BITS"]),
                                    (m["V0_NORM"], m["V0_CODES"], m["V0_BITS"])):
        na = np.ascontiguousarray(a[..., norm_at:norm_at + 4]).view(np.float32)
        nb_ = np.ascontiguousarray(b[..., norm_at:norm_at + 4]).view(np.float32)
        fin = np.isfinite(nb_)
        assert np.array_equal(np.isfinite(na), fin)
        assert np.allclose(na[fin], nb_[fin], rtol=tqf.NORM_RTOL, atol=0)
        span = slice(codes_at, codes_at + d * bits // 8)
        assert (a[..., span] != b[..., span]).any(axis=-1).mean() <= 0.01


@pytest.mark.skipif(not HOPPER, reason="store_wg's kernel needs a Hopper GPU (wgmma)")
@pytest.mark.parametrize("n,h", [(4100, 8), (37, 3)])
def test_wg_balance_stores_the_wg_bytes(n, h):
    """Variant "balance" on store_wg's kernel: k4v3's keys get more of the persistent programs than its values
    (store_wg.key_programs), and every row is still encoded by the same instructions: the same bytes as "wg"'s
    half-and-half launch, bit for bit (several tiles a program at 4,100 x 8 rows; 2 tiles a tensor at 37 x 3)."""
    fmt = tqf.LayerFormat(tqf.get_preset("k4v3"), 128)
    p = KernelParams.build(fmt, DEV)
    k, v = (t.to(DEV) for t in _inputs(n, h, 128, torch.bfloat16))
    nb, bs = triton.cdiv(n + 1, 16), 16
    slots = _slots(n, nb, bs).to(DEV)
    _same_bytes(fmt, p, k, v, slots, nb, bs, {"variant": ("prefetch", "lean", "search", "wg")},
                {"variant": ("prefetch", "lean", "search", "wg", "balance")})


@pytest.mark.parametrize("preset,d,dtype,kw,why", [
    ("tq3", 128, torch.float32, {}, "it takes bfloat16 or float16 keys and values, got torch.float32 and "
                                    "torch.float32"),
    ("tq3", 128, torch.bfloat16, {"value_dtype": torch.float32}, "it takes bfloat16 or float16 keys and values, "
                                                                "got torch.bfloat16 and torch.float32"),
    ("tq3", 64, torch.bfloat16, {}, "head_size=64 with 3-bit keys and 3-bit values does not give whole code words "
                                         "a lane"),
    ("tq3", 128, torch.bfloat16, {"debug": True}, "it writes no rotated_debug output"),
    ("tq3", 128, torch.bfloat16, {"block_rows": 16}, "it runs block_rows=64, num_warps=4, col_blocks=1, no maxnreg; "
                                                     "got 16, 4, 1, None"),
    ("k4v3", 128, torch.bfloat16, {"maxnreg": 128}, "it runs block_rows=64, num_warps=4, col_blocks=1, no maxnreg; "
                                                    "got 64, 4, 1, 128"),
])
def test_wg_variant_names_what_it_cannot_serve(preset, d, dtype, kw, why):
    """variant "wg" refuses a call it cannot serve with the reason, before writing anything; the GPU it needs
    is named after every other reason (so a CPU-only machine checks those too)."""
    fmt = tqf.LayerFormat(tqf.get_preset(preset), d)
    p = KernelParams.build(fmt, DEV)
    x = torch.zeros(3, 2, d, dtype=dtype, device=DEV)
    cache = torch.zeros(fmt.cache_shape(1, 16, 2), dtype=torch.uint8, device=DEV)
    debug = kw.pop("debug", False)
    v = x.to(kw.pop("value_dtype", dtype))
    y = torch.zeros(3 * 2 * 4 * d, dtype=torch.float32, device=DEV) if debug else None
    with pytest.raises(ValueError, match=r"store variant 'wg' cannot serve this call: " + re.escape(why)):
        store_mse(x, v, cache, torch.arange(3, device=DEV), p, y, variant=("wg",), **kw)
    if not HOPPER:  # a call it would serve on a Hopper GPU
        with pytest.raises(ValueError, match=r"store variant 'wg' cannot serve this call: it needs a Hopper GPU"):
            store_mse(x.to(torch.bfloat16), x.to(torch.bfloat16), cache, torch.arange(3, device=DEV),
                      KernelParams.build(tqf.LayerFormat(tqf.get_preset("tq4"), d), DEV), variant=("wg",))
    assert not cache.any()


@pytest.mark.parametrize("rows,kw,want", [
    (2049, {}, "wg"),  # more than SMALL_ROWS, nothing chosen: store_wg's kernel, 3 programs an SM
    (2048, {}, "small"),
    (2048, {"batch_invariant": True}, "wg"),  # one launch for every call size
    (2049, {"block_rows": 64}, "triton"),  # any choice of the caller's keeps it
    (2049, {"variant": ("prefetch", "lean", "search", "kv")}, "triton"),
    (2049, {"debug": True}, "triton"),  # store_wg writes no rotated_debug
])
def test_default_launch_by_rows_and_batch_invariance(monkeypatch, rows, kw, want):
    """store_mse's choice of launch where store_wg's kernel could serve (why_not faked to None; the launches
    recorded, not run): WG_LAUNCH above SMALL_ROWS rows, SMALL_LAUNCH up to it unless batch_invariant (whose
    rows must get the same bytes whatever the call's size), the Triton kernels for any explicit choice."""
    import turboquant.triton_impl.store_mse as sm

    fmt = tqf.LayerFormat(tqf.get_preset("tq3"), 128)
    p = KernelParams.build(fmt, "cpu")
    x = torch.zeros(rows, 1, 128, dtype=torch.bfloat16)
    cache = torch.zeros(fmt.cache_shape(rows // 16 + 1, 16, 1), dtype=torch.uint8)
    seen = []
    monkeypatch.setattr(sm.store_wg, "why_not", lambda key, value, d, kb, vb, debug: "debug" if debug else None)
    monkeypatch.setattr(sm.store_wg, "launch", lambda *a, programs_per_sm, sm, search, balance: seen.append(
        ("wg", programs_per_sm, search, balance)))

    class Spy:
        def __getitem__(self, grid):
            return lambda *a, **k: seen.append(("small" if k["BR"] == sm.SMALL_LAUNCH["block_rows"] else "triton",))

    monkeypatch.setattr(sm, "_store_mse_kv_kernel", Spy())
    debug = kw.pop("debug", False)
    y = torch.zeros(rows * 4 * 128, dtype=torch.float32) if debug else None
    sm.store_mse(x, x, cache, torch.arange(rows), p, y, **kw)
    assert [e[0] for e in seen] == [want], seen
    if want == "wg":
        assert seen[0][1:] == (sm.WG_LAUNCH["programs_per_sm"], True, "balance" in sm.WG_LAUNCH["variant"])

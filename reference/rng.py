"""The portable random numbers behind Pi and S (SPEC.md section 2).

Every random number of the format comes from one counter-based generator that
a reader can implement from SPEC.md with 64-bit integer arithmetic and four
float64 functions (sqrt, log, cos, sin).  The constants live in
``turboquant.format`` (``SPLITMIX64_*``); this module is the readable NumPy form.

* ``splitmix64(seed, k)``: word k of stream ``seed`` is the SplitMix64 output
  for state ``seed + (k + 1) * GAMMA`` (mod 2^64), i.e. the (k+1)-th output
  of a SplitMix64 generator started at ``seed``:
  z ^= z >> 30; z *= M1; z ^= z >> 27; z *= M2; z ^= z >> 31 (all mod 2^64).
* ``uniforms``: U_k = ((z_k >> 11) + 0.5) * 2^-53, exactly representable in
  float64 and strictly inside (0, 1).
* ``normals``: Box-Muller on consecutive pairs, n = 2p and 2p + 1:
  R = sqrt(-2 log U_2p), t = TWO_PI * U_2p+1 (float64 product),
  Z_2p = R cos t, Z_2p+1 = R sin t.
* ``signs``: s_k = +1 if the top bit of z_k is 0, else -1.

Every function takes a scalar seed or an array of seeds (a leading batch
axis), so tests can draw hundreds of matrices at once.
"""

from __future__ import annotations

import numpy as np

from turboquant import format as tqf

_GAMMA = np.uint64(tqf.SPLITMIX64_GAMMA)
_M1, _M2 = (np.uint64(c) for c in tqf.SPLITMIX64_MULTIPLIERS)
_S1, _S2, _S3 = (np.uint64(s) for s in tqf.SPLITMIX64_SHIFTS)


def _seeds(seed) -> np.ndarray:
    s = np.asarray(seed)
    if s.dtype.kind not in "iu" and s.dtype != object:
        raise TypeError(f"seed must be an integer or an array of integers, got dtype {s.dtype}")
    if np.any(s < 0) or np.any(s >= 2**64):
        raise ValueError(f"seed must lie in [0, 2^64), got {seed!r}")
    return s.astype(np.uint64)[..., None]


def splitmix64(seed, n: int) -> np.ndarray:
    """Words 0..n-1 of stream ``seed`` as uint64, shape [*seed.shape, n]."""
    k = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = _seeds(seed) + k * _GAMMA  # uint64 arithmetic wraps mod 2^64
        z = (z ^ (z >> _S1)) * _M1
        z = (z ^ (z >> _S2)) * _M2
    return z ^ (z >> _S3)


def uniforms(seed, n: int) -> np.ndarray:
    """U_k = ((z_k >> 11) + 0.5) * 2^-53 in (0, 1), float64."""
    return ((splitmix64(seed, n) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def normals(seed, n: int) -> np.ndarray:
    """n standard normals (n even) by Box-Muller on the pairs (U_2p, U_2p+1), float64."""
    if n % 2:
        raise ValueError(f"n must be even (normals come in Box-Muller pairs), got n={n}")
    u = uniforms(seed, n)
    radius = np.sqrt(-2.0 * np.log(u[..., 0::2]))
    angle = tqf.BOX_MULLER_TWO_PI * u[..., 1::2]
    out = np.empty(u.shape, np.float64)
    out[..., 0::2] = radius * np.cos(angle)
    out[..., 1::2] = radius * np.sin(angle)
    return out


def gaussian_matrix(seed, m: int) -> np.ndarray:
    """G[i, j] = Z_{i m + j}: an m x m matrix of standard normals, float64, row-major."""
    return normals(seed, m * m).reshape(*np.shape(seed), m, m)


def signs(seed, n: int, start: int = 0) -> np.ndarray:
    """s_k = +1 if the top bit of z_k is 0, else -1, for k = start .. start+n-1 (float64)."""
    top = splitmix64(seed, start + n)[..., start:] >> np.uint64(63)
    return 1.0 - 2.0 * top.astype(np.float64)

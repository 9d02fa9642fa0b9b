"""Random rotations Pi (paper, Sec. 3: "multiply by a random rotation matrix").

Both kinds are generated in float64 from NumPy's PCG64 seeded with
``LayerFormat.seed("rotation", instance)`` and returned as float32.  The
rotated vector is ``y = Pi @ x``; the inverse is ``Pi.T``.

* ``haar``: G ~ N(0,1)^{d x d} (``rng.standard_normal((d, d))``), Q R = G
  (``numpy.linalg.qr``), Pi = Q * sign(diag(R)) column-wise (sign(0) := +1).
  This is Haar-distributed on O(d).
* ``hadamard``: s ~ Rademacher^d (``rng.integers(0, 2, d) * 2 - 1``),
  Pi = H_d diag(s) / sqrt(d) with H_d the Sylvester Hadamard matrix
  (H_1 = [1], H_2n = [[H, H], [H, -H]]).  d must be a power of two.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from turboquant import format as tqf


def sylvester_hadamard(d: int) -> np.ndarray:
    if d < 1 or d & (d - 1):
        raise ValueError(f"hadamard needs a power-of-two dimension, got d={d}")
    h = np.ones((1, 1))
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    return h


@lru_cache(maxsize=256)
def rotation_matrix(kind: str, d: int, seed: int) -> np.ndarray:
    """The d x d float32 rotation Pi for ``kind`` and ``seed`` (read-only)."""
    tqf.check_choice("rotation", kind, tqf.ROTATION_KINDS)
    rng = np.random.Generator(np.random.PCG64(seed))
    if kind == "haar":
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        s = np.sign(np.diag(r))
        s[s == 0] = 1.0
        pi = q * s[None, :]
    else:
        s = rng.integers(0, 2, size=d) * 2.0 - 1.0
        pi = sylvester_hadamard(d) * s[None, :] / np.sqrt(d)
    out = np.ascontiguousarray(pi, dtype=np.float32)
    out.flags.writeable = False
    return out


def layer_rotation(fmt: tqf.LayerFormat, instance: tqf.Instance) -> np.ndarray:
    """The rotation of ``instance`` in layer ``fmt`` (shared by K and V)."""
    return rotation_matrix(fmt.preset.rotation, instance.dim, fmt.seed("rotation", instance.index))


def matrix_sha256(m: np.ndarray) -> str:
    """SHA-256 of a matrix's little-endian float32 bytes, row-major."""
    return hashlib.sha256(np.ascontiguousarray(m, dtype="<f4").tobytes()).hexdigest()

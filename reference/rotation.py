"""Random rotations Pi (paper, Sec. 3: "multiply by a random rotation matrix").

Every kind is built in float64 from the portable generator of
``turboquant.reference.rng`` (stream ``LayerFormat.seed("rotation", instance)``)
and returned as float32.  The rotated vector is ``y = Pi @ x``; the inverse
is ``Pi.T``.  SPEC.md section 2 is the same definition in prose.

* ``haar``: G = ``rng.gaussian_matrix(seed, m)``; Pi = the Q factor of
  G = Q R with diag(R) > 0, computed by modified Gram-Schmidt on the columns
  of G (``gram_schmidt_q``).  Haar-distributed on O(m).
* ``hadamard`` (not in the paper): s = ``rng.signs(seed, m)``,
  Pi = H_m diag(s) / sqrt(m), H_m the Sylvester Hadamard matrix
  (H_1 = [1], H_2n = [[H, H], [H, -H]]).  m must be a power of two.
  It does not keep Theorem 1's worst-case bound (SPEC.md, "Departures from
  the paper"); neither does the two-round H diag(s2) H diag(s1) / m, which
  is therefore not offered (conformance/paper.py measures both).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from turboquant import format as tqf

from . import rng


def sylvester_hadamard(d: int) -> np.ndarray:
    if d < 1 or d & (d - 1):
        raise ValueError(f"hadamard needs a power-of-two dimension, got d={d}")
    h = np.ones((1, 1))
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    return h


def gram_schmidt_q(g: np.ndarray) -> np.ndarray:
    """Q of G = Q R (diag R > 0) by modified Gram-Schmidt over the columns, float64.

    For j = 0 .. m-1: r_jj = sqrt(sum_i a_ij^2); q_j = a_j / r_jj; then every
    later column k > j loses its component along q_j: a_k <- a_k - (q_j . a_k) q_j.
    Works on a batch [..., m, m]."""
    a = np.array(g, dtype=np.float64)
    m = a.shape[-1]
    q = np.empty_like(a)
    for j in range(m):
        col = a[..., :, j]
        r = np.sqrt(np.sum(col * col, axis=-1, keepdims=True))
        if np.any(r == 0):
            raise ValueError("G is singular: Gram-Schmidt met a zero column")
        qj = col / r
        q[..., :, j] = qj
        rest = a[..., :, j + 1:]
        proj = np.einsum("...i,...ik->...k", qj, rest)
        a[..., :, j + 1:] = rest - qj[..., :, None] * proj[..., None, :]
    return q


def rotation_matrices(kind: str, d: int, seeds) -> np.ndarray:
    """Pi for ``kind`` and each seed, float64 [*seeds.shape, d, d] (before float32 rounding)."""
    tqf.check_choice("rotation", kind, tqf.ROTATION_KINDS)
    if kind == "haar":
        return gram_schmidt_q(rng.gaussian_matrix(seeds, d))
    return sylvester_hadamard(d) * rng.signs(seeds, d)[..., None, :] / np.sqrt(d)


@lru_cache(maxsize=256)
def rotation_matrix(kind: str, d: int, seed: int) -> np.ndarray:
    """The d x d float32 rotation Pi for ``kind`` and ``seed`` (read-only)."""
    out = np.ascontiguousarray(rotation_matrices(kind, d, seed), dtype=np.float32)
    out.flags.writeable = False
    return out


def layer_rotation(fmt: tqf.LayerFormat, instance: tqf.Instance) -> np.ndarray:
    """The rotation of ``instance`` in layer ``fmt`` (shared by K and V)."""
    return rotation_matrix(fmt.preset.rotation, instance.dim, fmt.seed("rotation", instance.index))


def matrix_sha256(m: np.ndarray) -> str:
    """SHA-256 of a matrix's little-endian float32 bytes, row-major."""
    return hashlib.sha256(np.ascontiguousarray(m, dtype="<f4").tobytes()).hexdigest()

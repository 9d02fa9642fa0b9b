"""Lloyd-Max codebooks for one coordinate of a random unit vector (paper, Sec. 3.1).

After a uniformly random rotation, each coordinate x of a unit vector in R^d
has the density

    f_d(x) = Gamma(d/2) / (sqrt(pi) Gamma((d-1)/2)) * (1 - x^2)^((d-3)/2),   x in [-1, 1],

i.e. (x+1)/2 ~ Beta((d-1)/2, (d-1)/2).  The b-bit codebook solves the
continuous 1-D k-means (Lloyd-Max) problem for f_d with 2^b cells.  Every
moment needed is closed form:

    P(a<x<b)        = I_{(b+1)/2}(a', a') - I_{(a+1)/2}(a', a'),   a' = (d-1)/2
    int_a^b x f_d   = c_d ((1-a^2)^((d-1)/2) - (1-b^2)^((d-1)/2)) / (d-1)
    int_a^b x^2 f_d = P_d(a, b) - (d-1)/d * P_{d+2}(a, b)

(the last from (1-x^2) f_d = (d-1)/d * f_{d+2}).  SciPy is used here only.
Shipped codebooks live in ``turboquant/data/codebooks.json``; ``load`` reads
them (no SciPy needed) and checks their content hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

import numpy as np

from turboquant import format as tqf

# Convergence rule: stop when no centroid moves by more than
# CONVERGENCE_TOL * sigma (sigma = 1/sqrt(d), a coordinate's std) in one
# Lloyd step, or after MAX_ITERATIONS steps (an error: never reached for
# the shipped dimensions).
CONVERGENCE_TOL = 1e-13
MAX_ITERATIONS = 100_000
CODEBOOK_FILE = "codebooks.json"
# Dimensions shipped: every supported head size, and the sub-dimensions of
# the outlier split (fractions in tqf.OUTLIER_FRACTIONS).
SHIPPED_BITS = tqf.SUPPORTED_BITS


def shipped_dims() -> tuple[int, ...]:
    dims = set(tqf.SUPPORTED_HEAD_SIZES)
    for d in tqf.SUPPORTED_HEAD_SIZES:
        for frac in tqf.OUTLIER_FRACTIONS:
            if frac:
                n_out = int(round(d * frac))
                dims.update((n_out, d - n_out))
    return tuple(sorted(dims))


@dataclass(frozen=True)
class Codebook:
    """``centroids`` (2^b, ascending) and ``boundaries`` (2^b - 1 midpoints),
    float32 as used by every implementation; ``mse_total`` = d * E[(x - Q(x))^2],
    the distortion of a unit vector (paper's D_mse)."""

    dim: int
    bits: int
    centroids: np.ndarray
    boundaries: np.ndarray
    mse_total: float


# ------------------------------------------------------------------ building
def _moments(d: int, lo: np.ndarray, hi: np.ndarray):
    """Probability, first and second moment of f_d over the cells [lo, hi]."""
    from scipy.special import betainc, gammaln

    a = (d - 1) / 2.0
    a2 = (d + 1) / 2.0

    def prob(alpha, x0, x1):
        return betainc(alpha, alpha, (x1 + 1) / 2) - betainc(alpha, alpha, (x0 + 1) / 2)

    p = prob(a, lo, hi)
    log_c = gammaln(d / 2.0) - 0.5 * np.log(np.pi) - gammaln((d - 1) / 2.0)
    e = (d - 1) / 2.0
    m1 = np.exp(log_c) * (np.power(1 - lo**2, e) - np.power(1 - hi**2, e)) / (d - 1)
    m2 = p - (d - 1) / d * prob(a2, lo, hi)
    return p, m1, m2


def lloyd_max(dim: int, bits: int) -> Codebook:
    """Solve Lloyd-Max for f_dim with 2^bits cells (float64), then round to float32."""
    tqf.check_choice("bits", bits, tqf.SUPPORTED_BITS)
    if not isinstance(dim, (int, np.integer)) or dim < 3:
        raise ValueError(f"dim must be an integer >= 3, got dim={dim!r}")
    from scipy.special import betaincinv

    a = (dim - 1) / 2.0
    k = 2**bits
    # Start from the equal-probability cells.
    q = betaincinv(a, a, np.arange(1, k) / k) * 2 - 1
    edges = np.concatenate(([-1.0], q, [1.0]))
    sigma = 1.0 / np.sqrt(dim)
    cent = None
    for _ in range(MAX_ITERATIONS):
        p, m1, _ = _moments(dim, edges[:-1], edges[1:])
        new = m1 / p
        new = 0.5 * (new - new[::-1])  # exact symmetry
        moved = np.inf if cent is None else np.max(np.abs(new - cent))
        cent = new
        edges = np.concatenate(([-1.0], 0.5 * (cent[1:] + cent[:-1]), [1.0]))
        if moved <= CONVERGENCE_TOL * sigma:
            break
    else:  # pragma: no cover - guarded by the shipped-data test
        raise RuntimeError(f"Lloyd-Max did not converge for dim={dim}, bits={bits}")
    p, m1, m2 = _moments(dim, edges[:-1], edges[1:])
    mse = float(dim * np.sum(m2 - 2 * cent * m1 + cent**2 * p))
    return Codebook(dim, bits, cent, edges[1:-1], mse)


def build_all() -> dict:
    """The content of the shipped data file (float64 values as JSON numbers)."""
    books = {}
    for d in shipped_dims():
        for b in SHIPPED_BITS:
            cb = lloyd_max(d, b)
            books[f"{d}/{b}"] = {
                "centroids": [float(x) for x in cb.centroids],
                "boundaries": [float(x) for x in cb.boundaries],
                "mse_total": cb.mse_total,
            }
    return {
        "spec_version": tqf.SPEC_VERSION,
        "density": "f_d(x) ~ (1-x^2)^((d-3)/2) on [-1,1]",
        "convergence_tol_sigma": CONVERGENCE_TOL,
        "codebooks": books,
        "sha256": content_hash(books),
    }


def content_hash(books: dict) -> str:
    """SHA-256 of the codebooks' float32 bytes: for each "d/b" key in sorted
    order, the key, the float32 centroids and the float32 boundaries."""
    h = hashlib.sha256()
    for key in sorted(books, key=lambda s: tuple(int(t) for t in s.split("/"))):
        h.update(key.encode())
        h.update(np.asarray(books[key]["centroids"], dtype="<f4").tobytes())
        h.update(np.asarray(books[key]["boundaries"], dtype="<f4").tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------ loading
@lru_cache(maxsize=1)
def _shipped() -> dict:
    text = resources.files("turboquant").joinpath("data", CODEBOOK_FILE).read_text()
    data = json.loads(text)
    if content_hash(data["codebooks"]) != data["sha256"]:
        raise RuntimeError(f"{CODEBOOK_FILE}: content hash mismatch, the shipped codebooks are corrupted")
    return data


def shipped_hash() -> str:
    return _shipped()["sha256"]


@cache
def load(dim: int, bits: int) -> Codebook:
    """The shipped codebook for (dim, bits), as float32 arrays."""
    tqf.check_choice("bits", bits, tqf.SUPPORTED_BITS)
    entry = _shipped()["codebooks"].get(f"{dim}/{bits}")
    if entry is None:
        raise ValueError(f"dim={dim} has no shipped codebook; allowed: {list(shipped_dims())}")
    cent = np.asarray(entry["centroids"], dtype=np.float32)
    bnd = np.asarray(entry["boundaries"], dtype=np.float32)
    cent.flags.writeable = False
    bnd.flags.writeable = False
    return Codebook(dim, bits, cent, bnd, float(entry["mse_total"]))

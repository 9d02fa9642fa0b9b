"""The portable generator of Pi and S (SPEC.md section 2): known answers, the Box-Muller and
sign rules as written, Gram-Schmidt against an independent QR, and bad input."""

import math

import numpy as np
import pytest

from turboquant import format as tqf
from turboquant.reference import rng
from turboquant.reference.rotation import gram_schmidt_q, rotation_matrices, rotation_matrix


def test_splitmix64_known_answers():
    """SplitMix64 started at state 0 (the published first outputs) is stream 0."""
    assert [int(w) for w in rng.splitmix64(0, 3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert tqf.RANDOM_GENERATOR.startswith("splitmix64")


def test_words_are_counter_based_and_batched():
    seeds = np.array([0, 5, 2**64 - 1], np.uint64)
    batch = rng.splitmix64(seeds, 8)
    for i, s in enumerate(seeds):
        assert np.array_equal(batch[i], rng.splitmix64(int(s), 8))
    assert np.array_equal(rng.splitmix64(5, 8)[3:], rng.splitmix64(5, 3 + 5)[3:])


def test_uniforms_normals_signs_follow_the_spec_text():
    w = [int(x) for x in rng.splitmix64(11, 4)]
    u = [((x >> 11) + 0.5) * 2.0**-53 for x in w]
    assert np.array_equal(rng.uniforms(11, 4), u)
    r = math.sqrt(-2.0 * math.log(u[0]))
    t = tqf.BOX_MULLER_TWO_PI * u[1]
    assert tqf.BOX_MULLER_TWO_PI == 2 * math.pi
    np.testing.assert_allclose(rng.normals(11, 4)[:2], [r * math.cos(t), r * math.sin(t)], rtol=4e-16, atol=0)
    assert list(rng.signs(11, 4)) == [1.0 if x >> 63 == 0 else -1.0 for x in w]
    assert list(rng.signs(11, 2, start=2)) == [1.0 if x >> 63 == 0 else -1.0 for x in w[2:]]


def test_normals_are_standard():
    z = rng.normals(3, 200_000)
    assert abs(z.mean()) < 5 / np.sqrt(z.size) and abs(z.var() - 1) < 5 * np.sqrt(2 / z.size)


def test_gram_schmidt_is_the_positive_diagonal_qr():
    """MGS gives the unique Q of G = QR with diag R > 0 (checked against LAPACK, independent)."""
    g = rng.gaussian_matrix(9, 64)
    q, r = np.linalg.qr(g)
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]
    np.testing.assert_allclose(gram_schmidt_q(g), q, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind,d", [("haar", 128), ("haar", 96), ("hadamard", 128)])
def test_rotations_are_orthogonal_float32(kind, d):
    p = rotation_matrix(kind, d, tqf.derive_seed(tqf.DEFAULT_BASE_SEED, 0, "rotation"))
    assert p.dtype == np.float32
    np.testing.assert_allclose(p.astype(np.float64) @ p.T.astype(np.float64), np.eye(d), rtol=0, atol=1e-6)


def test_batched_rotations_equal_single():
    seeds = np.array([1, 2, 3], np.uint64)
    batch = rotation_matrices("haar", 32, seeds)
    for i, s in enumerate(seeds):
        np.testing.assert_array_equal(batch[i].astype(np.float32), rotation_matrix("haar", 32, int(s)))


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\^64\)"):
        rng.splitmix64(-1, 4)
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\^64\)"):
        rng.splitmix64(2**64, 4)
    with pytest.raises(TypeError, match="seed must be an integer"):
        rng.splitmix64(1.5, 4)
    with pytest.raises(ValueError, match="n must be even"):
        rng.normals(0, 3)
    with pytest.raises(ValueError, match="singular"):
        gram_schmidt_q(np.zeros((4, 4)))

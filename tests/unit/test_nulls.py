"""The sign-flip data null: planted shared structure is destroyed, per-entry magnitudes are kept."""

import numpy as np
import pytest

from rankaudit import nulls, spectra


def _numpy_energy_rank(matrix: np.ndarray, eps: float) -> int:
    """rank_eps straight from numpy's SVD (independent of rankaudit.spectra)."""
    energies = np.linalg.svd(matrix, compute_uv=False) ** 2
    return int(np.argmax(np.cumsum(energies) >= (1 - eps) * energies.sum()) + 1)


def test_shared_shift_plus_pair_noise_has_a_much_higher_sign_flip_rank():
    """M = shared rank-3 shift + small pair noise, rows scaled to equal norms: the data's rank_eps is 3, the null's ~n.

    Expected null, derived independently: with equal row norms, E[(R*M)(R*M)^T] = (||M||_F^2 / n) I, and for
    d >> n the eigenvalues of one draw concentrate in (1 +- sqrt(n/d))^2 times that (here ratio max/min ~ 1.8).
    If all n eigenvalues lie within a ratio b/a <= 3, the top k carry at most k b / (k b + (n - k) a) of the
    energy, so reaching 0.95 needs k >= 0.95 n / (0.05 b/a + 0.95) >= 34.5 for n = 40: the null's rank >= 35.
    """
    rng = np.random.default_rng(1)
    n, d, r = 40, 2000, 3
    matrix = rng.standard_normal((n, r)) @ rng.standard_normal((r, d)) + 1e-3 * rng.standard_normal((n, d))
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    assert _numpy_energy_rank(matrix, 0.05) == r
    ranks = nulls.sign_flip_ranks(matrix, [0.05], draws=5, seed=0)
    assert ranks.shape == (5, 1)
    assert ranks.min() >= 35 and ranks.max() <= n
    assert spectra.energy_rank(spectra.singular_values(matrix), 0.05) == r


def test_sign_flip_keeps_coordinate_scales():
    """All energy in two coordinates: every flip keeps exactly those two columns, so the null's rank is <= 2
    (the Gaussian null of the same shape is ~0.9 n): the null sees the data's coordinate scales."""
    rng = np.random.default_rng(2)
    n, d = 30, 200
    matrix = np.zeros((n, d))
    matrix[:, 7] = rng.standard_normal(n)
    matrix[:, 90] = 0.1 * rng.standard_normal(n)
    ranks = nulls.sign_flip_ranks(matrix, [0.05, 0.5], draws=4, seed=3)
    assert np.all(ranks <= 2) and np.all(ranks[:, 1] == 1)
    assert spectra.noise_ranks(n, d, 0.05, draws=1, seed=0)[0] > 20


def test_row_sign_flips_would_be_no_null():
    """Flipping whole rows (D M, D a +-1 diagonal) keeps every singular value: why the null flips entries."""
    rng = np.random.default_rng(4)
    matrix = rng.standard_normal((20, 60)) + 3.0
    flips = np.where(rng.random(20) < 0.5, -1.0, 1.0)
    np.testing.assert_allclose(np.linalg.svd(flips[:, None] * matrix, compute_uv=False),
                               np.linalg.svd(matrix, compute_uv=False), rtol=1e-12)


def test_sign_matrices_are_fair_signs_and_reproducible():
    first = nulls.sign_matrices(50, 333, 2, 7)
    assert len(first) == 2 and all(signs.shape == (50, 333) for signs in first)
    assert set(np.unique(first[0])) == {-1.0, 1.0}
    assert abs(first[0].mean()) < 0.02  # 16 650 fair signs: standard deviation of the mean ~0.008
    assert not np.array_equal(first[0], first[1])
    nulls.sign_matrices.cache_clear()
    np.testing.assert_array_equal(nulls.sign_matrices(50, 333, 2, 7)[1], first[1])
    with pytest.raises(ValueError, match="draws"):
        nulls.sign_flip_ranks(np.ones((3, 4)), [0.05], draws=0, seed=0)

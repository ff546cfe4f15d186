"""Spectra and rank measures against numpy's SVD, constructed spectra and planted ground truth."""

import numpy as np
import pytest

from rankaudit import spectra


def _matrix_with_spectrum(values, n, d, seed):
    """n x d matrix whose singular values are exactly `values` (random orthonormal singular vectors)."""
    rng = np.random.default_rng(seed)
    k = len(values)
    left, _ = np.linalg.qr(rng.standard_normal((n, k)))
    right, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return (left * np.asarray(values, dtype=float)) @ right.T


@pytest.mark.parametrize("shape", [(30, 80), (80, 30), (40, 40), (1, 7), (200, 4096)])
@pytest.mark.parametrize("method", ["gram", "svd"])
def test_singular_values_match_numpy(shape, method):
    matrix = np.random.default_rng(sum(shape)).standard_normal(shape)
    expected = np.linalg.svd(matrix, compute_uv=False)
    got = spectra.singular_values(matrix, method=method)
    assert got.dtype == np.float64 and got.shape == expected.shape
    assert np.all(np.diff(got) <= 0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10 * expected[0])


def test_singular_values_reject_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        spectra.singular_values(np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        spectra.singular_values(np.array([[1.0, np.nan]]))


def test_energy_rank_constructed_spectra():
    values = np.sqrt([0.5, 0.3, 0.15, 0.05])
    assert spectra.energy_rank(values, 0.05) == 3  # exactly at the threshold: 0.95 >= 0.95
    assert spectra.energy_rank(values, 0.0499) == 4
    assert spectra.energy_rank(values, 0.2) == 2  # 0.8 >= 0.8, at the threshold again
    assert spectra.energy_rank(values, 0.21) == 2
    assert spectra.energy_rank(values, 0.5) == 1
    assert spectra.energy_rank(values, 0.0) == 4
    assert spectra.energy_rank(values[::-1], 0.05) == 3  # order of the input does not matter
    assert spectra.energy_rank(np.zeros(5), 0.05) == 0
    assert spectra.energy_rank(np.ones(10), 0.1) == 9  # flat: 9/10 = 0.9 meets 1 - 0.1 exactly
    assert spectra.energy_rank(np.ones(10), 0.09) == 10
    with pytest.raises(ValueError, match="eps"):
        spectra.energy_rank(values, 1.0)


def test_energy_rank_at_threshold_through_a_matrix():
    """Round-off from an actual decomposition must not move an at-threshold answer."""
    matrix = _matrix_with_spectrum(np.sqrt([0.5, 0.3, 0.15, 0.05]) * 7.3, 25, 60, seed=1)
    for method in ("gram", "svd"):
        assert spectra.energy_rank(spectra.singular_values(matrix, method), 0.05) == 3
        assert spectra.energy_rank(spectra.singular_values(matrix, method), 0.2) == 2


@pytest.mark.parametrize("planted", [1, 3, 8])
def test_planted_rank_plus_tiny_noise(planted):
    rng = np.random.default_rng(planted)
    signal = _matrix_with_spectrum(np.linspace(10, 5, planted), 60, 300, seed=planted)
    matrix = signal + 1e-6 * rng.standard_normal(signal.shape)
    values = spectra.singular_values(matrix)
    for eps in (1e-6, 1e-3, 0.01):
        assert spectra.energy_rank(values, eps) == planted
    summary = spectra.spectrum_summary(matrix, [1e-6, 0.01], centered=False)
    assert summary.rank_eps == (planted, planted)
    assert summary.noise_count_gavish_donoho == planted


def _ordering_holds(summary):
    chain = [1.0, summary.stable_rank, summary.participation_ratio, summary.energy_entropy_rank,
             summary.roy_vetterli_rank, float(summary.numerical_rank)]
    return all(a <= b * (1 + 1e-9) for a, b in zip(chain, chain[1:])), chain


def test_rank_ordering_random_and_structured_spectra():
    rng = np.random.default_rng(0)
    spectra_to_test = [
        [1.0], [1.0, 1.0, 1.0], [5.0, 1e-3], [3.0, 2.0, 2.0, 2.0, 1e-9], np.geomspace(1, 1e-4, 30),
        np.linspace(1, 0.01, 50), [1.0] + [1e-2] * 40,
    ]
    spectra_to_test += [np.sort(rng.exponential(size=rng.integers(1, 40)))[::-1] ** rng.uniform(0.2, 4) for _ in range(150)]
    for values in spectra_to_test:
        values = np.asarray(values, dtype=float)
        matrix = _matrix_with_spectrum(values, len(values) + 5, len(values) + 12, seed=len(values))
        summary = spectra.spectrum_summary(matrix, [0.05], centered=False)
        holds, chain = _ordering_holds(summary)
        assert holds, (values, chain)
    for shape in [(20, 50), (50, 20), (10, 10)]:
        for _ in range(20):
            matrix = rng.standard_normal(shape) * rng.uniform(0.1, 10, size=shape[1])
            for centered in (False, True):
                holds, chain = _ordering_holds(spectra.spectrum_summary(matrix, [0.05], centered=centered))
                assert holds, chain


def test_rank_measures_hand_values():
    values = np.array([2.0, 1.0, 1.0])  # energies 4, 1, 1
    assert spectra.stable_rank(values) == pytest.approx(6 / 4)
    assert spectra.participation_ratio(values) == pytest.approx(36 / 18)
    p = np.array([4, 1, 1]) / 6
    assert spectra.entropy_rank(values**2) == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    q = values / values.sum()
    assert spectra.entropy_rank(values) == pytest.approx(np.exp(-(q * np.log(q)).sum()))
    flat = np.ones(7)
    for measure in (spectra.stable_rank, spectra.participation_ratio):
        assert measure(flat) == pytest.approx(7)
    assert spectra.entropy_rank(flat) == pytest.approx(7)


def test_centered_summary_and_mean_energy_fraction():
    rng = np.random.default_rng(3)
    shift = rng.standard_normal(40) * 5
    noise = rng.standard_normal((30, 40))
    matrix = noise + shift
    raw = spectra.spectrum_summary(matrix, [0.05, 0.2], centered=False)
    centered = spectra.spectrum_summary(matrix, [0.05, 0.2], centered=True)
    expected_fraction = 30 * np.sum(matrix.mean(0) ** 2) / np.sum(matrix**2)
    assert raw.mean_energy_fraction == pytest.approx(expected_fraction, rel=1e-12)
    assert centered.mean_energy_fraction == raw.mean_energy_fraction
    expected = np.linalg.svd(matrix - matrix.mean(0), compute_uv=False)
    # the centered matrix has an exact zero singular value; the Gram route is accurate in energies (s^2)
    np.testing.assert_allclose(centered.singular_values**2, expected**2, atol=1e-12 * expected[0] ** 2)
    assert centered.frobenius_sq == pytest.approx(raw.frobenius_sq * (1 - raw.mean_energy_fraction), rel=1e-10)
    assert raw.rank_at(0.05) < centered.rank_at(0.05)  # the mean shift dominates the uncentered spectrum
    assert raw.rho_d[0] == raw.rank_eps[0] / 40 and raw.rho_min[0] == raw.rank_eps[0] / 30
    curve = raw.explained_energy
    assert curve[-1] == pytest.approx(1.0) and np.all(np.diff(curve) >= 0)
    payload = raw.to_dict()
    assert payload["rank_eps"] == list(raw.rank_eps) and isinstance(payload["singular_values"], list)


def test_noise_calibrated_counts():
    rng = np.random.default_rng(5)
    signal = _matrix_with_spectrum([300.0, 200.0], 100, 400, seed=2)
    matrix = signal + rng.standard_normal((100, 400))
    summary = spectra.spectrum_summary(matrix, [0.05], centered=False, null_seed=11)
    assert summary.noise_count_gavish_donoho == 2
    assert summary.noise_count_null == 2
    pure = spectra.spectrum_summary(rng.standard_normal((100, 400)), [0.05], centered=False, null_seed=11)
    assert pure.noise_count_gavish_donoho == 0
    # the null's top value scales with the matrix's Frobenius norm
    expected_ratio = spectra.null_top_ratio(100, 400, 11)
    assert summary.null_top_singular_value == pytest.approx(expected_ratio * np.sqrt(summary.frobenius_sq))
    assert 0.5 < expected_ratio * np.sqrt(100 * 400) / (10 + 20) < 1.5  # edge ~ sqrt(n) + sqrt(d)


def test_noise_rho_in_predicted_range():
    n, d = 200, 4096
    rho = spectra.noise_rho(n, d, 0.05, draws=2, seed=0)
    assert 0.85 * n / d <= rho <= 0.95 * n / d
    ranks = spectra.noise_ranks(60, 1500, 0.05, draws=3, seed=1)
    assert np.all((ranks >= 0.85 * 60) & (ranks <= 0.95 * 60))


def test_zero_matrix_summary():
    summary = spectra.spectrum_summary(np.zeros((5, 8)), [0.05], centered=True)
    assert summary.rank_eps == (0,) and summary.numerical_rank == 0 and summary.stable_rank == 0.0
    assert summary.noise_count_null == 0 and summary.mean_energy_fraction == 0.0


# --- Gavish-Donoho threshold against the paper's omega(beta) -----------------------------------------------------
# M. Gavish and D. L. Donoho, "The Optimal Hard Threshold for Singular Values is 4/sqrt(3)", IEEE Trans. Inf.
# Theory 60(8):5040-5053, 2014 (arXiv:1305.5870). Abstract: for a square matrix the optimal threshold is
# (4/sqrt(3)) sqrt(n) sigma ~ 2.309 sqrt(n) sigma when sigma is known and 2.858 y_med when it is unknown (y_med the
# median singular value). For aspect ratio beta the known-noise coefficient is
# lambda*(beta) = sqrt(2 (beta + 1) + 8 beta / (beta + 1 + sqrt(beta^2 + 14 beta + 1))), and the unknown-noise one
# omega(beta) = lambda*(beta) / sqrt(mu_beta), mu_beta the median of the Marchenko-Pastur law of ratio beta. The
# library uses the paper's cubic fit of omega; the exact omega is computed here by quadrature.

def _lambda_star(beta):
    return np.sqrt(2 * (beta + 1) + 8 * beta / (beta + 1 + np.sqrt(beta**2 + 14 * beta + 1)))


def _marchenko_pastur_median(beta):
    import scipy.integrate
    import scipy.optimize

    low, high = (1 - np.sqrt(beta)) ** 2, (1 + np.sqrt(beta)) ** 2

    def density(x):
        return np.sqrt(max(0.0, (high - x) * (x - low))) / (2 * np.pi * beta * x)

    return scipy.optimize.brentq(lambda t: scipy.integrate.quad(density, low, t)[0] - 0.5, low, high)


def _omega(beta):
    return _lambda_star(beta) / np.sqrt(_marchenko_pastur_median(beta))


def test_the_exact_omega_reproduces_the_papers_square_case():
    assert _lambda_star(1.0) == pytest.approx(4 / np.sqrt(3)) and _lambda_star(1.0) == pytest.approx(2.309, abs=5e-4)
    assert _omega(1.0) == pytest.approx(2.858, abs=5e-4)


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0])
def test_gavish_donoho_threshold_is_omega_times_the_median_singular_value(beta):
    d = 1000
    n = int(round(beta * d))
    values = np.random.default_rng(0).uniform(0.5, 3.0, size=n)
    median = np.median(values)
    for shape in ((n, d), (d, n)):  # beta = min / max: the orientation does not matter
        # the cubic fit stays within 0.01 of the exact coefficient over (0, 1] (largest gap 0.006, at beta = 0.1)
        assert spectra.gavish_donoho_threshold(values, shape) / median == pytest.approx(_omega(beta), abs=0.01)
    assert spectra.gavish_donoho_threshold(np.array([1.0, 2.0, 3.0]), (40, 40)) == pytest.approx(2.858 * 2.0, abs=0.01)
    assert spectra.gavish_donoho_threshold(np.array([]), (0, 5)) == 0.0

"""kappa, gamma and the tail-energy budget: hand computations, the structural bound, and the budget theorem."""

import math

import numpy as np
import pytest

from rankaudit import bounds, spectra


def test_hand_computed_two_by_two():
    honest = np.array([[3.0, 0.0], [0.0, 0.0]])
    unsafe = np.array([[0.0, 0.0], [0.0, 1.0]])  # S = diag(3, -1): energies 9, 1; pair energy 9 + 1
    result = bounds.spectral_gap(honest, unsafe, 0.05)
    assert result["r"] == 2 and result["s_r"] == pytest.approx(1.0)
    assert result["kappa"] == pytest.approx(1 / (0.05 * 10))
    assert result["kappa_bound"] == pytest.approx(2 / (0.05 * 2))
    assert result["gamma"] == pytest.approx(1.0)
    assert result["kappa_bound_gamma"] == pytest.approx(1.0 / (0.05 * 2))
    assert result["bound_holds"] and not result["kappa_gt_8"]

    at_threshold = bounds.spectral_gap(honest, unsafe, 0.1)  # tail 1 = 0.1 * 10 exactly -> r = 1
    assert at_threshold["r"] == 1 and at_threshold["s_r"] == pytest.approx(3.0)
    assert at_threshold["kappa"] == pytest.approx(9 / (0.1 * 10))
    assert at_threshold["kappa_gt_8"] and at_threshold["bound_holds"]
    beta = (math.sqrt(0.1) - math.sqrt(0.025)) / (1 + math.sqrt(0.025))
    assert at_threshold["eps_strict"] == pytest.approx(0.025)
    assert at_threshold["budget_factor"] == pytest.approx(beta)
    assert at_threshold["residual_budget"] == pytest.approx(beta * math.sqrt(10))
    assert at_threshold["residual_budget_relative"] == pytest.approx(beta * 1.0)
    assert at_threshold["per_mode_budget"] == pytest.approx(beta * math.sqrt(10))
    assert at_threshold["per_mode_budget_ratio"] == pytest.approx(beta * math.sqrt(10) / 3)
    exact = (math.sqrt(10) - math.sqrt(0.025) * math.sqrt(10)) / (1 + math.sqrt(0.025))
    assert at_threshold["residual_budget_exact"] == pytest.approx(exact)


def test_hand_computed_rectangular():
    honest = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])
    unsafe = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # S = [[0, 2, 0], [0, 0, 1]]: singular values 2, 1; ||M_h||^2 = 7, ||M_u||^2 = 2
    result = bounds.spectral_gap(honest, unsafe, 0.05, eps_strict=0.01)
    assert result["r"] == 2
    assert result["kappa"] == pytest.approx(1 / (0.05 * 9))
    assert result["gamma"] == pytest.approx(5 / 9)
    assert result["residual_budget"] == pytest.approx((math.sqrt(0.05) - 0.1) / 1.1 * math.sqrt(5))
    assert result["per_mode_budget"] == pytest.approx(result["residual_budget"] / math.sqrt(2))


def test_identical_shifts():
    honest = np.arange(6.0).reshape(2, 3)
    result = bounds.spectral_gap(honest, honest.copy(), 0.05)
    assert result["r"] == 0 and math.isnan(result["kappa"]) and result["bound_holds"]
    assert result["gamma"] == 0.0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="m_unsafe"):
        bounds.spectral_gap(np.ones((2, 3)), np.ones((3, 3)), 0.05)
    with pytest.raises(ValueError, match="eps'"):
        bounds.spectral_gap(np.ones((2, 3)), np.zeros((2, 3)), 0.05, eps_strict=0.05)


def _random_pair(rng):
    n, d = rng.integers(2, 30), rng.integers(2, 60)
    kind = rng.integers(5)
    honest = rng.standard_normal((n, d)) * rng.uniform(0.01, 10)
    if kind == 0:
        unsafe = rng.standard_normal((n, d)) * rng.uniform(0.01, 10)
    elif kind == 1:
        unsafe = honest + rng.uniform(1e-3, 1) * rng.standard_normal((n, d))
    elif kind == 2:
        unsafe = -honest * rng.uniform(0.5, 1.5)  # near the gamma = 2 extreme
    elif kind == 3:
        k = rng.integers(1, min(n, d) + 1)
        unsafe = honest + rng.standard_normal((n, k)) @ rng.standard_normal((k, d)) * rng.uniform(0.1, 5)
    else:
        honest = np.outer(rng.standard_normal(n), rng.standard_normal(d))
        unsafe = np.outer(rng.standard_normal(n), rng.standard_normal(d))
    return honest, unsafe


def test_structural_bound_never_violated():
    rng = np.random.default_rng(0)
    for _ in range(1500):
        honest, unsafe = _random_pair(rng)
        eps = float(rng.choice([0.01, 0.05, 0.1, 0.2, 0.5]))
        result = bounds.spectral_gap(honest, unsafe, eps)
        assert result["bound_holds"], result
        assert result["kappa"] <= 2 / (eps * result["r"]) * (1 + 1e-9)
        assert 0.0 <= result["gamma"] <= 2.0 * (1 + 1e-12)
        assert result["residual_budget_exact"] >= result["residual_budget"] * (1 - 1e-9)


def test_gap_certificate_is_sound():
    """kappa > 2 must imply max(rank_eps(M_h), rank_eps(M_u)) >= r / 2, on pairs built to have a large gap."""
    rng = np.random.default_rng(2)
    certified = 0
    for _ in range(600):
        n, d, k = rng.integers(5, 25), rng.integers(5, 40), rng.integers(1, 4)
        eps = float(rng.choice([0.01, 0.05, 0.1]))
        basis = rng.standard_normal((n, 2 * k)) @ rng.standard_normal((2 * k, d))
        honest = basis + rng.uniform(0, 0.3) * rng.standard_normal((n, d))
        unsafe = rng.uniform(-1, 1) * honest + rng.uniform(0, 0.3) * rng.standard_normal((n, d))
        result = bounds.spectral_gap(honest, unsafe, eps)
        ranks = [spectra.energy_rank(spectra.singular_values(m, "svd"), eps) for m in (honest, unsafe)]
        if result["kappa"] > 2:
            certified += 1
            assert result["certified_max_rank"] == math.ceil(result["r"] / 2)
            assert max(ranks) >= result["r"] / 2, (result, ranks)
        else:
            assert result["certified_max_rank"] == 0
    assert certified > 50  # the test exercised the certificate, not only the vacuous branch


def test_tail_energy_budget_is_certified():
    """A residual of norm within the budget never lowers rank_eps'(S - E) below rank_eps(S)."""
    rng = np.random.default_rng(1)
    for _ in range(400):
        honest, unsafe = _random_pair(rng)
        eps = float(rng.choice([0.05, 0.1, 0.2]))
        eps_strict = eps * float(rng.uniform(0.05, 0.95))
        result = bounds.spectral_gap(honest, unsafe, eps, eps_strict)
        difference = honest - unsafe
        if result["r"] == 0:
            continue
        # adversarial residual: remove as much tail as the budget allows (along the tail itself)...
        u, s, vt = np.linalg.svd(difference, full_matrices=False)
        tail = (u[:, result["r"] - 1 :] * s[result["r"] - 1 :]) @ vt[result["r"] - 1 :]
        residuals = [tail / np.linalg.norm(tail)] if np.linalg.norm(tail) > 0 else []
        # ...and random directions
        residuals += [rng.standard_normal(difference.shape) for _ in range(3)]
        for residual in residuals:
            for budget in (result["residual_budget"], result["residual_budget_exact"]):
                scaled = residual / np.linalg.norm(residual) * budget * (1 - 1e-9)
                perturbed = spectra.singular_values(difference - scaled, method="svd")
                assert spectra.energy_rank(perturbed, eps_strict) >= result["r"], (result, budget)


def test_budget_is_close_to_tight_for_the_tail_direction():
    """S = diag(3, 1): shrinking the tail by t drops rank_0.01 to 1 exactly when (1 - t)^2 <= 0.01 (9 + (1 - t)^2)."""
    s = np.diag([3.0, 1.0])
    result = bounds.spectral_gap(s, np.zeros((2, 2)), 0.05, eps_strict=0.01)
    assert result["r"] == 2
    breaking = 1 - math.sqrt(0.09 / 0.99)
    assert result["residual_budget_exact"] < breaking < 1.15 * result["residual_budget_exact"]
    shrink = np.diag([0.0, 1.0])
    assert spectra.energy_rank(spectra.singular_values(s - result["residual_budget_exact"] * shrink, "svd"), 0.01) == 2
    assert spectra.energy_rank(spectra.singular_values(s - (breaking + 1e-6) * shrink, "svd"), 0.01) == 1


def test_tail_budget_stays_below_the_uniform_residual_sqrt_2eps():
    """beta < sqrt(eps) for eps' > 0 and gamma <= 2, so beta sqrt(gamma) < sqrt(2 eps): the route cannot close."""
    rng = np.random.default_rng(21)
    for trial in range(200):
        n, d = rng.integers(2, 12), rng.integers(2, 20)
        honest = rng.standard_normal((n, d))
        unsafe = -rng.uniform(0.5, 2.0) * honest if trial % 2 else rng.standard_normal((n, d))
        eps = float(rng.choice([0.01, 0.05, 0.1, 0.2]))
        result = bounds.spectral_gap(honest, unsafe, eps, eps_strict=float(rng.uniform(1e-6, 0.99)) * eps)
        assert result["uniform_residual_relative"] == pytest.approx(math.sqrt(2 * eps))
        assert result["residual_budget_relative"] < result["uniform_residual_relative"]
        assert not result["tail_closes_uniform"]
    # the bound is sharp: eps' = 0 and M_u = -M_h (gamma = 2) reach it exactly
    honest = rng.standard_normal((4, 6))
    edge = bounds.spectral_gap(honest, -honest, 0.05, eps_strict=0.0)
    assert edge["gamma"] == pytest.approx(2.0)
    assert edge["residual_budget_relative"] == pytest.approx(math.sqrt(0.1))
    assert bounds.tail_energy_budget_factor(0.05, 0.0) == pytest.approx(math.sqrt(0.05))

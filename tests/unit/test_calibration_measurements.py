"""Ablation algebra and rank measurements on planted matrices (numpy only)."""

import numpy as np
import pytest

from rankaudit.calibration.measurements import ablate, layer_ranks, random_basis, top_basis


def test_top_basis_is_orthonormal_and_leads_with_the_planted_directions():
    rng = np.random.default_rng(0)
    directions, _ = np.linalg.qr(rng.standard_normal((24, 2)))
    shift = rng.standard_normal((50, 2)) * [10.0, 3.0] @ directions.T
    basis = top_basis(shift)
    np.testing.assert_allclose(basis.T @ basis, np.eye(24), atol=1e-12)
    np.testing.assert_allclose(basis[:, :2] @ basis[:, :2].T, directions @ directions.T, atol=1e-10)


def test_top_basis_is_complete_when_there_are_fewer_inputs_than_dimensions():
    basis = top_basis(np.random.default_rng(1).standard_normal((5, 12)))
    np.testing.assert_allclose(basis.T @ basis, np.eye(12), atol=1e-12)


def test_full_ablation_removes_the_whole_shift_or_the_whole_activation():
    rng = np.random.default_rng(2)
    base, aligned = rng.standard_normal((30, 10)), rng.standard_normal((30, 10))
    full = random_basis(rng, 10, 10)
    np.testing.assert_allclose(ablate(aligned, base, full, "strong"), base, atol=1e-12)
    np.testing.assert_allclose(ablate(aligned, base, full, "weak"), 0.0, atol=1e-12)


def test_ablating_the_span_of_a_rank_one_shift_restores_the_base_exactly():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((40, 16))
    direction = random_basis(rng, 16, 1)
    aligned = base + rng.standard_normal((40, 1)) @ direction.T
    basis = top_basis(aligned - base)[:, :1]
    np.testing.assert_allclose(ablate(aligned, base, basis, "strong"), base, atol=1e-12)


def test_layer_ranks_of_a_rank_one_shift():
    shift = np.outer(np.ones(20), np.arange(1.0, 9.0))
    (row,) = layer_ranks([shift], eps=0.05)
    assert row["rank_eps"] == 1 and row["rho_eps"] == pytest.approx(1 / 8)
    assert row["mean_shift_norm"] == pytest.approx(np.linalg.norm(np.arange(1.0, 9.0)))

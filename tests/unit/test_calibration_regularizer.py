"""The rank-spreading regularizer against a literal numpy evaluation of the METHODS 6 formula."""

import numpy as np
import pytest
import torch

from rankaudit.calibration.regularizer import rank_spreading_penalty


def literal_penalty(m: np.ndarray, target: float) -> float:
    """R(M) exactly as written, on the d x n_s matrix M (n_s x n_s Gram, full SVD)."""
    n_s = m.shape[1]
    energy = np.sum(m**2)
    gram = m.T @ m
    orthogonality = np.sum((gram - energy / n_s * np.eye(n_s)) ** 2) / energy**2
    s1 = np.linalg.svd(m, compute_uv=False)[0]
    return float(orthogonality + max(0.0, target - energy / s1**2) ** 2 / target**2)


@pytest.mark.parametrize("d, n_s, target", [(16, 40, 8.0), (16, 7, 64.0), (32, 32, 4.0), (8, 100, 2.0)])
def test_matches_literal_formula_float64(d, n_s, target):
    rng = np.random.default_rng(d * 1000 + n_s)
    m = rng.standard_normal((d, n_s)) * rng.uniform(0.1, 3.0, size=(d, 1))
    value = rank_spreading_penalty(torch.from_numpy(m.T.copy()), target).item()
    assert value == pytest.approx(literal_penalty(m, target), rel=1e-9)


def test_matches_literal_formula_float32_on_a_low_rank_matrix():
    rng = np.random.default_rng(3)
    m = rng.standard_normal((64, 2)) @ rng.standard_normal((2, 120))
    value = rank_spreading_penalty(torch.from_numpy(m.T.astype(np.float32)), 64.0).item()
    assert value == pytest.approx(literal_penalty(m, 64.0), rel=1e-4)


def test_orthogonal_equal_columns_have_no_orthogonality_penalty():
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((20, 6)))
    shift = torch.from_numpy((2.5 * q).T.copy())
    # stable rank is exactly 6: only the shortfall (T - 6)^2 / T^2 remains
    assert rank_spreading_penalty(shift, 10.0).item() == pytest.approx((10.0 - 6.0) ** 2 / 100.0, abs=1e-12)
    assert rank_spreading_penalty(shift, 6.0).item() == pytest.approx(0.0, abs=1e-12)


def test_zero_shift_is_finite_with_finite_gradient():
    shift = torch.zeros(30, 8, dtype=torch.float32, requires_grad=True)
    value = rank_spreading_penalty(shift, 64.0)
    value.backward()
    assert value.item() == pytest.approx(1.0)
    assert torch.isfinite(shift.grad).all()

"""Zero matrices and rank <= 1 certificates: float64 round-off counts as zero, float32 differences do not."""

import numpy as np

from rankaudit import degeneracy, spectra


def _status(matrix: np.ndarray, scale: float) -> str:
    values = spectra.singular_values(matrix)
    return degeneracy.matrix_status(matrix, spectra.numerical_rank(values, matrix.shape), degeneracy.zero_tolerance(scale))


def test_identical_template_rows_give_rank_one_and_a_zero_centered_matrix():
    """Layer 0 with the chat format: every prompt reads the same template token, in both models."""
    rng = np.random.default_rng(0)
    n, d = 9, 16
    aligned = np.tile(rng.standard_normal(d).astype(np.float32) * 40, (n, 1)).astype(np.float64)
    base = np.tile(rng.standard_normal(d).astype(np.float32) * 40, (n, 1)).astype(np.float64)
    scale = degeneracy.activation_scale([aligned, base])
    template = aligned - base
    assert _status(template, scale) == degeneracy.RANK_AT_MOST_1
    assert _status(spectra.center_columns(template), scale) == degeneracy.ZERO
    assert _status(aligned - aligned, scale) == degeneracy.ZERO


def test_round_off_is_zero_but_a_float32_difference_is_not():
    rng = np.random.default_rng(1)
    cells = (100 * rng.standard_normal((12, 30))).astype(np.float32).astype(np.float64)
    scale = degeneracy.activation_scale([cells])
    tolerance = degeneracy.zero_tolerance(scale)
    assert tolerance == degeneracy.ZERO_RTOL * np.abs(cells).max()
    # one column mean summed in two orders: equal in exact arithmetic, a few ulps apart in float64
    round_off = np.tile(np.cumsum(cells[::-1] / 3, axis=0)[-1] - np.cumsum(cells / 3, axis=0)[-1], (12, 1))
    assert np.abs(round_off).max() > 0 and degeneracy.is_zero(round_off, tolerance)
    one_ulp = cells.copy()
    one_ulp[3, 5] = np.nextafter(np.float32(cells[3, 5]), np.float32(np.inf))  # the smallest float32 change
    difference = one_ulp - cells
    assert not degeneracy.is_zero(difference, tolerance)
    assert degeneracy.matrix_status(difference, 1, tolerance) == degeneracy.RANK_AT_MOST_1
    assert degeneracy.is_zero(np.zeros((0, 3)), tolerance)
    assert degeneracy.activation_scale([]) == 0.0


def test_generic_matrix_is_ok():
    matrix = np.random.default_rng(2).standard_normal((10, 20))
    assert _status(matrix, 3.0) == degeneracy.OK

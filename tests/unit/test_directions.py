"""Difference in means, top right singular directions, cosines and capture fractions."""

import numpy as np
import pytest

from rankaudit import directions


def test_difference_in_means():
    safety = np.array([[1.0, 2.0], [3.0, 4.0]])
    control = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 4.0]])
    np.testing.assert_array_equal(directions.difference_in_means(safety, control), [2.0, 1.0])
    assert directions.difference_in_means(safety.astype(np.float32), control).dtype == np.float64


@pytest.mark.parametrize("shape", [(30, 80), (80, 30), (12, 12)])
def test_top_directions_are_right_singular_vectors(shape):
    rng = np.random.default_rng(shape[0])
    matrix = rng.standard_normal(shape)
    basis = directions.top_directions(matrix, 5)
    assert basis.shape == (shape[1], 5)
    np.testing.assert_allclose(basis.T @ basis, np.eye(5), atol=1e-10)
    _, _, vt = np.linalg.svd(matrix)
    for column in range(5):
        assert abs(basis[:, column] @ vt[column]) == pytest.approx(1.0, abs=1e-9)
    assert np.all(basis[np.argmax(np.abs(basis), axis=0), np.arange(5)] > 0)


def test_top_directions_of_rank_deficient_matrix_fall_back_to_svd():
    rng = np.random.default_rng(4)
    matrix = rng.standard_normal((10, 2)) @ rng.standard_normal((2, 50))
    basis = directions.top_directions(matrix, 4)  # only 2 non-zero singular values
    np.testing.assert_allclose(basis.T @ basis, np.eye(4), atol=1e-10)
    with pytest.raises(ValueError, match="k=11"):
        directions.top_directions(matrix, 11)


def test_cosines_on_planted_structure():
    rng = np.random.default_rng(5)
    d = 40
    u1 = np.eye(d)[3]
    matrix = np.outer(rng.uniform(5, 6, size=25), u1) + 0.01 * rng.standard_normal((25, d))
    assert directions.cos_top_mean(matrix) == pytest.approx(1.0, abs=1e-4)
    assert directions.cos_top_with(matrix, -2 * u1) == pytest.approx(1.0, abs=1e-4)
    assert directions.cos_top_with(matrix, np.eye(d)[7]) < 1e-2
    assert directions.abs_cos([1.0, 0.0], [1.0, 1.0]) == pytest.approx(1 / np.sqrt(2))
    assert np.isnan(directions.abs_cos([0.0, 0.0], [1.0, 1.0]))


def test_capture_fraction_is_one_inside_the_span():
    rng = np.random.default_rng(6)
    matrix = rng.standard_normal((30, 60)) * np.linspace(5, 0.1, 60)
    basis = directions.top_directions(matrix, 4)
    inside = basis @ rng.standard_normal(4)
    assert directions.capture_fraction(basis, inside) == pytest.approx(1.0, abs=1e-12)
    got = directions.capture_fractions(matrix, inside, [1, 3, 4, 10, 100])
    assert got[4] == pytest.approx(1.0, abs=1e-10) and got[10] == pytest.approx(1.0, abs=1e-10)
    assert got[1] <= got[3] <= got[4] and got[1] < 1
    assert got[100] == pytest.approx(1.0, abs=1e-10)  # k above min(n, d) means the whole row space
    outside = np.linalg.svd(matrix)[2][-1]  # orthogonal to the row space (n < d)
    assert directions.capture_fractions(matrix, outside, [30])[30] == pytest.approx(0.0, abs=1e-8)
    # capture is ||U^T r|| / ||r||: hand check with a coordinate basis
    assert directions.capture_fraction(np.eye(3)[:, :2], np.array([3.0, 0.0, 4.0])) == pytest.approx(0.6)


def test_direction_summary_agrees_with_single_functions():
    rng = np.random.default_rng(7)
    matrix = rng.standard_normal((20, 35)) + rng.standard_normal(35)
    r = rng.standard_normal(35)
    summary = directions.direction_summary(matrix, r, [1, 5])
    assert summary["cos_top_direction"] == pytest.approx(directions.cos_top_with(matrix, r), abs=1e-12)
    assert summary["cos_top_mean"] == pytest.approx(directions.cos_top_mean(matrix), abs=1e-12)
    assert summary["capture"] == pytest.approx(directions.capture_fractions(matrix, r, [1, 5]), abs=1e-12)
    assert summary["capture"][1] == pytest.approx(summary["cos_top_direction"], abs=1e-12)
    assert summary["status"] == "ok" and summary["zero_vectors"] == []
    again = directions.direction_summary(matrix, r, [1, 5], basis=directions.top_directions(matrix, 5))
    assert again == summary


def test_direction_summary_reports_undefined_cosines_as_none():
    """A zero vector has no direction: the cosine is None (JSON null), never 0 or NaN; round-off counts as zero."""
    rng = np.random.default_rng(8)
    matrix = rng.standard_normal((12, 20))
    round_off_r = np.full(20, 1e-15)
    summary = directions.direction_summary(matrix, round_off_r, [1, 3], zero_tolerance=1e-12)
    assert summary["cos_top_direction"] is None and summary["capture"] == {1: None, 3: None}
    assert summary["cos_top_mean"] == pytest.approx(directions.cos_top_mean(matrix), abs=1e-12)
    assert summary["status"] == "undefined" and summary["zero_vectors"] == ["refusal_direction"]
    assert directions.direction_summary(matrix, round_off_r, [1])["status"] == "ok"  # exact test: 1e-15 is a direction

    centered = matrix - matrix.mean(axis=0)  # mean row zero up to round-off
    summary = directions.direction_summary(centered, rng.standard_normal(20), [1], zero_tolerance=1e-12)
    assert summary["cos_top_mean"] is None and summary["cos_top_direction"] is not None
    assert summary["zero_vectors"] == ["mean_row"]

    summary = directions.direction_summary(np.zeros((12, 20)), rng.standard_normal(20), [1, 3])
    assert summary == {"cos_top_direction": None, "cos_top_mean": None, "capture": {1: None, 3: None},
                       "zero_vectors": ["matrix", "mean_row"], "status": "undefined"}

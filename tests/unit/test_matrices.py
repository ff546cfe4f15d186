"""Exact identities of the factorial design on random cells."""

import numpy as np
import pytest

from rankaudit import directions, matrices


def _cells(rng, n, d):
    return {key: rng.standard_normal((n, d)) * rng.uniform(0.5, 5) + rng.standard_normal(d)
            for key in ("a_chat", "a_raw", "b_chat", "b_raw")}


def test_dataset_identities_hold_exactly():
    rng = np.random.default_rng(0)
    for n, d in [(7, 13), (40, 5), (1, 3)]:
        cells = _cells(rng, n, d)
        got = matrices.dataset_matrices(**cells)
        assert set(got) == {"naive", "template", "aligned", "base_format", "interaction"}
        assert all(m.dtype == np.float64 and m.shape == (n, d) for m in got.values())
        np.testing.assert_allclose(got["naive"], got["template"] + got["base_format"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(got["naive"], got["aligned"] + (cells["a_raw"] - cells["b_raw"]), rtol=0, atol=1e-12)
        np.testing.assert_allclose(got["interaction"], got["aligned"] - got["base_format"], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(got["template"], cells["a_chat"] - cells["b_chat"])
        np.testing.assert_array_equal(got["naive"], cells["a_chat"] - cells["b_raw"])


def test_did_mean_row_is_difference_of_arditi_directions():
    rng = np.random.default_rng(1)
    safety, control = _cells(rng, 11, 9), _cells(rng, 17, 9)  # different n per dataset is allowed
    got = matrices.all_matrices(safety, control)
    assert set(got) == {"naive", "template", "aligned", "did", "base_format", "interaction"}
    r_aligned = directions.difference_in_means(safety["a_chat"], control["a_chat"])
    r_base = directions.difference_in_means(safety["b_chat"], control["b_chat"])
    np.testing.assert_allclose(got["did"].mean(axis=0), r_aligned - r_base, rtol=0, atol=1e-12)
    control_template = control["a_chat"] - control["b_chat"]
    np.testing.assert_allclose(got["did"], got["template"] - control_template.mean(0), rtol=0, atol=1e-12)


def test_shift_and_concept_matrices():
    rng = np.random.default_rng(2)
    a, u, b = (rng.standard_normal((5, 4)) for _ in range(3))
    honest, unsafe = matrices.shift_matrix(a, b), matrices.shift_matrix(u, b)
    np.testing.assert_allclose(honest - unsafe, a - u, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(matrices.concept_pair_matrix(a, b), a - b)


def test_errors_name_the_cell():
    rng = np.random.default_rng(3)
    cells = _cells(rng, 4, 6)
    cells["b_raw"] = cells["b_raw"][:3]
    with pytest.raises(ValueError, match="b_raw"):
        matrices.dataset_matrices(**cells)
    with pytest.raises(KeyError, match="control_cells.*a_raw"):
        full = _cells(rng, 4, 6)
        matrices.all_matrices(full, {k: v for k, v in full.items() if k != "a_raw"})
    with pytest.raises(ValueError, match="d differs"):
        matrices.did_matrix(np.ones((3, 4)), np.ones((3, 5)))

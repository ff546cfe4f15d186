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


def _planted_variant():
    """d = 4 hidden units, 6 safety rows and 4 others, two hidden layers, readout logit = -h1 - h2 + h3 - 0.5.

    Base activations: (0, 0, 1, c) on safety rows (logit +0.5: not compliant), (0, 0, 0, c) elsewhere (logit -0.5),
    c an arbitrary e4 component the readout ignores. The variant adds a_i e1 + b_i e2 on the safety rows of the
    last layer, with a = (2, 2, 3, 3, 4, 4) and b = (0.5, -0.5, 0.6, -0.6, 0.7, -0.7): sum a b = 0, so e1 and e2
    are exactly its right singular vectors (s^2 = 58 and 2.2), and every shifted logit 0.5 - a - b is negative.
    The first layer's shift is a_i e1 alone (rank 1).
    """
    from rankaudit.calibration.data import CalibrationData
    from rankaudit.calibration.measurements import Readout

    rng = np.random.default_rng(0)
    safety = np.array([True] * 6 + [False] * 4)
    a, b = np.array([2.0, 2, 3, 3, 4, 4]), np.array([0.5, -0.5, 0.6, -0.6, 0.7, -0.7])
    base = np.zeros((10, 4))
    base[safety, 2] = 1.0
    base[:, 3] = rng.standard_normal(10)
    first, last = base.copy(), base.copy()
    first[safety, 0] += a
    last[safety, 0] += a
    last[safety, 1] += b
    probe = CalibrationData(x=np.zeros((10, 2), np.float32), y_task=np.array([False] * 8 + [True] * 2), y_safe=np.zeros(10, bool),
                            safety=safety)
    readout = Readout(weight=np.array([-1.0, -1.0, 1.0, 0.0]), bias=-0.5)
    return [first, last], [base, base.copy()], readout, probe, (last - base)[safety]


def test_measure_shift_on_a_planted_variant_gives_the_hand_computed_ranks_and_compliance():
    from rankaudit.calibration.config import MeasurementConfig
    from rankaudit.calibration.measurements import measure_shift

    hiddens, bases, readout, probe, fit_shift = _planted_variant()
    config = MeasurementConfig(eps=0.01, r_grid=(1, 2, 4), random_draws=3, control_seed=0, projector_fit="probe")
    measured = measure_shift(hiddens, bases, readout, probe, fit_shift, config, np.random.default_rng(0))
    first, last = measured["layers"]
    assert (first["rank_eps"], last["rank_eps"]) == (1, 2)  # at eps = 0.01; e2 holds 2.2 / 60.2 = 3.7% of the energy
    assert (first["rho_eps"], last["rho_eps"], measured["rho_eps_mean"]) == (0.25, 0.5, 0.375)
    assert (last["n"], last["d"], last["rho_min_dn"]) == (6, 4, 0.5)
    assert last["mean_shift_norm"] == pytest.approx(3.0) and last["frobenius"] == pytest.approx(np.sqrt(60.2))
    assert last["stable_rank"] == pytest.approx(60.2 / 58)
    # every safety row complies after the shift and none before; the four others are all classified 0 (logit
    # -0.5), right for the two with y_task = 0 and wrong for the two with y_task = 1
    assert (measured["compliance"], measured["compliance_on_base_activations"]) == (1.0, 0.0)
    assert measured["task_accuracy"] == 0.5
    curve = {(row["form"], row["basis"], row["r"]): row for row in measured["ablation"]}
    # top-1 removes e1: logit 0.5 - b_i, compliant where b_i >= 0.5 (3 of 6), in both forms (the base has no e1)
    assert curve[("weak", "top", 1)]["compliance"] == curve[("strong", "top", 1)]["compliance"] == 0.5
    # top-2 removes the whole shift: the base's compliance, 0
    assert curve[("weak", "top", 2)]["compliance"] == curve[("strong", "top", 2)]["compliance"] == 0.0
    # r = d: weak leaves h = 0 (logit -0.5, compliant), strong gives the base back; random 4-subspaces are the same
    for basis in ("top", "random"):
        assert curve[("weak", basis, 4)]["compliance"] == pytest.approx(1.0)
        assert curve[("strong", basis, 4)]["compliance"] == pytest.approx(0.0)
    assert curve[("weak", "random", 4)]["compliance_std"] == pytest.approx(0.0) and curve[("weak", "random", 1)]["draws"] == 3

"""Subsampling distributions, principal angles, gap flags and the n sweep on matrices with a known spectrum."""

import numpy as np
import pytest
from noise_reference import marchenko_pastur_rho

from rankaudit import resampling, spectra


def _planted(rng, n, d, values, noise):
    left, _ = np.linalg.qr(rng.standard_normal((n, len(values))))
    right, _ = np.linalg.qr(rng.standard_normal((d, len(values))))
    return (left * values) @ right.T + noise * rng.standard_normal((n, d)), right


def test_principal_angles_identical_and_orthogonal():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((20, 6)))
    np.testing.assert_allclose(resampling.principal_angles(basis[:, :3], basis[:, :3] @ _rotation(rng, 3)), 0, atol=1e-10)
    np.testing.assert_allclose(resampling.principal_angles(basis[:, :3], basis[:, 3:]), np.pi / 2, atol=1e-10)
    tiny = basis[:, :1] + 1e-9 * basis[:, 1:2]
    assert resampling.principal_angles(basis[:, :1], tiny)[0] == pytest.approx(1e-9, rel=1e-5)
    mixed = resampling.principal_angles(basis[:, :2], np.column_stack([basis[:, 0], basis[:, 0] + basis[:, 2]]))
    np.testing.assert_allclose(mixed, [0, np.pi / 2], atol=1e-10)
    with pytest.raises(ValueError, match="same d"):
        resampling.principal_angles(basis, basis[:10])


def _rotation(rng, k):
    q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    return q


def test_subsample_spectra_match_direct_svd():
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((30, 50))
    got = resampling.subsample_spectra(matrix, fraction=0.8, draws=3, seed=7, centered=True)
    chooser = np.random.default_rng(7)
    for values in got:
        rows = chooser.choice(30, 24, replace=False)
        sub = matrix[rows] - matrix[rows].mean(0)
        np.testing.assert_allclose(values**2, np.linalg.svd(sub, compute_uv=False) ** 2, atol=1e-10 * values[0] ** 2)


def test_subsampling_distribution_contains_true_rank():
    rng = np.random.default_rng(2)
    values = np.array([20.0, 14.0, 11.0, 8.0, 6.0])
    matrix, _ = _planted(rng, 120, 300, values, 0.02)
    true_rank = spectra.energy_rank(spectra.singular_values(matrix), 0.05)
    assert true_rank == 5
    ranks = resampling.subsample_ranks(matrix, [0.05, 0.2], fraction=0.8, draws=50, seed=0)
    assert ranks.shape == (50, 2) and ranks.dtype == np.int64
    assert true_rank in ranks[:, 0]
    summary = resampling.summarize_ranks(ranks, [0.05, 0.2], d=300)
    assert summary[0]["rank_min"] <= true_rank <= summary[0]["rank_max"]
    assert summary[0]["rho_mean"] == pytest.approx(ranks[:, 0].mean() / 300)
    # a noise-dominated matrix: the distribution still brackets the full-sample rank
    noisy = rng.standard_normal((80, 200)) * np.linspace(3, 0.2, 200)
    full = spectra.energy_rank(spectra.singular_values(noisy), 0.05)
    sub = resampling.subsample_ranks(noisy, [0.05], fraction=0.9, draws=60, seed=1)[:, 0]
    assert sub.min() <= full and full * 0.8 <= sub.max()


def test_split_half_angles_small_for_planted_subspace():
    rng = np.random.default_rng(3)
    matrix, _ = _planted(rng, 100, 80, np.array([50.0, 40.0, 30.0]), 0.01)
    angles = resampling.split_half_angles(matrix, 3, draws=4, seed=0)
    assert angles.shape == (4, 3) and np.all(angles < 1e-2)
    noise = rng.standard_normal((100, 80))
    assert resampling.split_half_angles(noise, 3, draws=2, seed=0).max() > 0.5


def test_gap_flags():
    rng = np.random.default_rng(4)
    # s_1 well separated; s_2 and s_3 nearly tied (their directions can swap), then noise
    matrix, _ = _planted(rng, 200, 60, np.array([80.0, 40.0, 39.9]), 1.0)
    records = resampling.singular_value_gaps(matrix, n_top=4, draws=50, seed=0)
    flags = {r["index"]: r["identifiable"] for r in records}
    assert flags[1] and not flags[2] and not flags[3]
    full = np.linalg.svd(matrix, compute_uv=False)
    assert records[0]["singular_value"] == pytest.approx(full[0]) and records[0]["gap_next"] == pytest.approx(full[0] - full[1])
    assert all(r["spread"] > 0 for r in records)


def test_n_sweep_caps_and_compares_with_noise():
    rng = np.random.default_rng(5)
    matrix, _ = _planted(rng, 120, 400, np.array([30.0, 20.0]), 0.01)
    records = resampling.n_sweep(matrix, [0.05], ns=(50, 100, 200, 300), draws=10, seed=0, noise_draws=1)
    assert [r["n"] for r in records] == [50, 100, 120]  # 200 and 300 both cap at 120, reported once
    assert records[-1]["capped"] and records[-1]["n_requested"] == 200 and records[-1]["draws"] == 1
    assert all(r["rank_min"] == r["rank_max"] == 2 for r in records)
    # pure noise of the subset's shape (50 x 400) against the Marchenko-Pastur prediction, within two ranks
    assert records[0]["noise_rho"] == pytest.approx(marchenko_pastur_rho(50, 400, 0.05), abs=2 / 400)
    assert records[-1]["noise_rho"] == pytest.approx(marchenko_pastur_rho(120, 400, 0.05), abs=2 / 400)
    assert records[0]["noise_rho"] > records[0]["rho_mean"] == 2 / 400


def test_subsample_fraction_checks():
    with pytest.raises(ValueError, match="fraction"):
        resampling.subsample_ranks(np.ones((10, 3)), [0.05], fraction=1.0)
    with pytest.raises(ValueError, match="rows"):
        resampling.subsample_ranks(np.ones((2, 3)), [0.05], fraction=0.5)

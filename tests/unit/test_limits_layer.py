"""Per-layer limits records on matrices with a known spectrum: LRH ratio, resampling, sweeps, kappa, gamma, bound."""

import math
import shutil

import numpy as np
import pandas as pd
import pytest
from noise_reference import marchenko_pastur_rho

from rankaudit import io
from rankaudit.limits import records as limit_records
from rankaudit.stages import limits


def _exact_rank(rng, n, d, values):
    """n x d matrix whose nonzero singular values are exactly `values` (random orthonormal factors)."""
    left, _ = np.linalg.qr(rng.standard_normal((n, len(values))))
    right, _ = np.linalg.qr(rng.standard_normal((d, len(values))))
    return (left * np.asarray(values, dtype=float)) @ right.T


def test_lrh_ratio_is_the_ratio_of_planted_ranks():
    rng = np.random.default_rng(0)
    d = 300
    concept = _exact_rank(rng, 80, d, np.ones(6))
    safety = _exact_rank(rng, 120, d, np.ones(3))
    (record,) = limit_records.lrh_records(concept, safety, [0.001], centered=False, draws=50, seed=0, noise_draws=1)
    assert (record["rank_concept"], record["rank_safety"]) == (6, 3)
    assert record["rho_concept"] == 6 / d and record["rho_safety"] == 3 / d
    assert record["ratio"] == 2.0
    # at matched n the larger (safety) set is subsampled to 80 rows; a generic subset keeps the planted rank
    assert record["n_matched"] == 80
    assert (record["rank_concept_matched"], record["rank_safety_matched"], record["ratio_matched"]) == (6.0, 3.0, 2.0)
    assert record["noise_rho_concept"] == pytest.approx(marchenko_pastur_rho(80, d, 0.001), abs=2 / d)
    assert record["noise_rho_safety"] == pytest.approx(marchenko_pastur_rho(120, d, 0.001), abs=2 / d)


def test_lrh_ratio_is_nan_when_safety_rank_is_zero():
    rng = np.random.default_rng(1)
    (record,) = limit_records.lrh_records(rng.standard_normal((10, 40)), np.zeros((12, 40)), [0.05], centered=False, draws=50,
                                   seed=0, noise_draws=1)
    assert record["rank_safety"] == 0 and math.isnan(record["ratio"]) and math.isnan(record["ratio_matched"])
    with pytest.raises(ValueError, match="d differs"):
        limit_records.lrh_records(np.ones((4, 5)), np.ones((4, 6)), [0.05], centered=False, draws=50, seed=0, noise_draws=1)


def test_subsampling_distribution_contains_the_planted_rank():
    rng = np.random.default_rng(2)
    matrix = _exact_rank(rng, 100, 400, [10, 9, 8, 7, 6]) + 1e-3 * rng.standard_normal((100, 400))
    records = limit_records.resampling_records(matrix, [0.05, 0.2], centered=False, fraction=0.8, draws=50, seed=0, noise_draws=1)
    at_005 = next(r for r in records if r["eps"] == 0.05)
    assert at_005["rank_full"] == 5
    assert at_005["sub_rank_min"] <= 5 <= at_005["sub_rank_max"] and at_005["contains_full"]
    assert at_005["sub_draws"] == 50 and at_005["n_subsample"] == 80
    # planted rho 5 / 400 against the Marchenko-Pastur ceiling of 100 x 400 noise (within two ranks of it)
    noise = marchenko_pastur_rho(100, 400, 0.05)
    assert at_005["noise_rho"] == pytest.approx(noise, abs=2 / 400)
    assert at_005["rho_over_noise"] == pytest.approx((5 / 400) / noise, rel=2 / (400 * noise))
    assert {r["eps"] for r in records} == {0.05, 0.2}
    # a planted rank is the same in every subset: the corrected interval is the rank itself
    assert (at_005["pred_low"], at_005["pred_high"], at_005["rank_se"]) == (5, 5, 0.0)
    assert (at_005["raw_low"], at_005["raw_high"], at_005["interval_level"]) == (5.0, 5.0, 0.9)


def test_corrected_interval_is_centred_on_the_full_rank_and_wider_than_the_raw_range():
    """Noise-like rows: the subsets sit at the rank of 0.8 n prompts, below the full rank; the interval does not."""
    rng = np.random.default_rng(12)
    matrix = rng.standard_normal((60, 200)) * np.arange(1, 201) ** -0.5
    (record,) = limit_records.resampling_records(matrix, [0.05], centered=False, fraction=0.8, draws=50, seed=0, noise_draws=1,
                                          level=0.9)
    assert record["raw_high"] < record["rank_full"]  # the raw range misses the full-sample rank altogether
    assert record["pred_low"] <= record["rank_full"] <= record["pred_high"]
    assert record["pred_high"] - record["rank_full"] == record["rank_full"] - record["pred_low"]
    assert record["pred_high"] - record["pred_low"] > record["raw_high"] - record["raw_low"]
    se = record["sub_rank_std"] * math.sqrt(48 / 12)
    assert record["rank_se"] == pytest.approx(se)
    assert record["pred_half_width"] == pytest.approx(1.6448536 * math.sqrt(2) * se, rel=1e-6)


def test_shift_status_layer_zero_zero_and_rank_one_shifts():
    rng = np.random.default_rng(13)
    shift = rng.standard_normal((20, 30))
    assert limit_records.shift_status(shift, 0) == "embedding output"
    assert limit_records.shift_status(shift, 4) == "ok"
    assert limit_records.shift_status(np.zeros((20, 30)), 4) == "zero"
    assert limit_records.shift_status(np.full((20, 30), 1e-12), 4, zero_tolerance=1e-10) == "zero"
    repeated = np.tile(rng.standard_normal(30), (20, 1))  # the same shift for every prompt
    assert limit_records.shift_status(repeated, 4) == "rank_at_most_1"
    scaled = np.outer(rng.standard_normal(20), rng.standard_normal(30))  # rank 1 uncentered and centered
    assert limit_records.shift_status(scaled, 4) == "rank_at_most_1"
    records = limit_records.layer_limit_records(repeated, {}, {}, limit_records.LimitsSettings.from_config({"eps": (0.05,), "split_half_k": (1,)}),
                                         where="t", layer=4)
    assert all(row["layer"] == 4 and row["layer_status"] == "rank_at_most_1" and not row["counted"]
               for rows in records.values() for row in rows)


def test_pure_noise_rho_lands_at_the_predicted_ceiling():
    """Gaussian n x d with d >> n: rank_eps ~ (1 - eps) n, i.e. rho ~ 0.9 n / d at eps = 0.05, ratio to noise ~ 1."""
    rng = np.random.default_rng(3)
    n, d = 100, 2000
    (record,) = limit_records.resampling_records(rng.standard_normal((n, d)), [0.05], centered=False, fraction=0.8, draws=50,
                                          seed=0, noise_draws=2)
    assert 0.85 * n / d <= record["rho_full"] <= 0.95 * n / d
    assert 0.95 <= record["rho_over_noise"] <= 1.05


def test_split_half_angles_zero_for_an_exact_subspace_and_large_for_noise():
    rng = np.random.default_rng(4)
    exact = _exact_rank(rng, 60, 200, [5, 4, 3])
    records = limit_records.split_half_records(exact, [1, 3, 31], centered=False, draws=5, seed=0)
    assert [r["k"] for r in records] == [1, 3]  # k = 31 > n // 2 is skipped
    three = next(r for r in records if r["k"] == 3)
    assert three["largest_angle_max_deg"] < 1e-5
    (noise,) = limit_records.split_half_records(rng.standard_normal((60, 200)), [1], centered=False, draws=5, seed=0)
    assert noise["largest_angle_mean_deg"] > 45


def test_gap_records_flag_equal_singular_values():
    rng = np.random.default_rng(5)
    separated = _exact_rank(rng, 120, 300, [40, 20, 10]) + 0.01 * rng.standard_normal((120, 300))
    flags = {r["index"]: r["identifiable"] for r in limit_records.gap_records(separated, centered=False, n_top=3, fraction=0.8,
                                                                         draws=50, seed=0)}
    assert flags[1] and flags[2]
    tied = _exact_rank(rng, 120, 300, [10, 10, 10]) + 0.01 * rng.standard_normal((120, 300))
    records = limit_records.gap_records(tied, centered=True, n_top=3, fraction=0.8, draws=50, seed=0)
    assert not next(r for r in records if r["index"] == 1)["identifiable"]
    assert all(r["centered"] for r in records)


def test_n_sweep_records_cap_at_the_available_prompts():
    rng = np.random.default_rng(6)
    records = limit_records.n_sweep_records(rng.standard_normal((80, 500)), [0.05], [50, 100, 200], centered=False, draws=50,
                                     seed=0, noise_draws=1)
    assert [(r["n"], r["capped"]) for r in records] == [(50, False), (80, True)]
    # the matrix is itself Gaussian noise: its rank and the noise ceiling both sit at the Marchenko-Pastur value
    for record in records:
        noise = marchenko_pastur_rho(record["n"], 500, 0.05)
        assert record["noise_rho"] == pytest.approx(noise, abs=2 / 500)
        assert record["rho_mean"] == pytest.approx(noise, abs=2 / 500)
        assert record["rho_over_noise"] == pytest.approx(1.0, abs=4 / (500 * noise))


def test_spectral_gap_records_match_hand_computation():
    honest = np.zeros((4, 6))
    honest[0, 0], honest[1, 1] = 3.0, 1.0
    unsafe = np.zeros((4, 6))
    unsafe[0, 0] = 1.0
    # S = diag(2, 1): energies 4 and 1; D = ||M_h||^2 + ||M_u||^2 = 10 + 1 = 11
    at_005, at_02 = limit_records.spectral_gap_records(honest, unsafe, [0.05, 0.2], tail_eps_fraction=0.25, where="test")
    assert at_005["r"] == 2 and at_005["s_r"] == pytest.approx(1.0)
    assert at_005["kappa"] == pytest.approx(1.0 / (0.05 * 11))
    assert at_005["gamma"] == pytest.approx(5 / 11)
    assert at_005["kappa_bound"] == pytest.approx(2 / (0.05 * 2)) and at_005["eps_r"] == pytest.approx(0.1)
    assert (at_005["rank_honest"], at_005["rank_unsafe"]) == (2, 1)
    assert at_005["eps_strict"] == pytest.approx(0.0125)
    # at eps = 0.2 the tail after one mode (1 of 5) sits exactly on the threshold, so r = 1 and s_r = 2
    assert at_02["r"] == 1 and at_02["kappa"] == pytest.approx(4.0 / (0.2 * 11))
    assert not at_005["kappa_gt_8"]


def test_spectral_gap_records_large_gap_clears_eight():
    honest = np.zeros((3, 5))
    honest[0, 0] = 10.0
    unsafe = np.zeros((3, 5))
    unsafe[1, 1] = 0.1
    (record,) = limit_records.spectral_gap_records(honest, unsafe, [0.05], tail_eps_fraction=0.25, where="test")
    pair_energy = 100.0 + 0.01
    assert record["r"] == 1 and record["gamma"] == pytest.approx(1.0)
    assert record["kappa"] == pytest.approx(100.0 / (0.05 * pair_energy)) and record["kappa_gt_8"]
    assert record["kappa"] <= record["kappa_bound_gamma"] <= record["kappa_bound"]


def test_structural_bound_never_violated_on_random_pairs():
    rng = np.random.default_rng(7)
    eps_list = [0.01, 0.05, 0.1, 0.2]
    for trial in range(120):
        n, d = rng.integers(3, 20), rng.integers(3, 40)
        honest = rng.standard_normal((n, d)) * rng.exponential(1.0, d)
        kind = trial % 4
        if kind == 0:
            unsafe = rng.standard_normal((n, d))
        elif kind == 1:
            unsafe = -rng.uniform(0.1, 3) * honest
        elif kind == 2:
            unsafe = honest + 1e-6 * rng.standard_normal((n, d))
        else:
            unsafe = np.outer(rng.standard_normal(n), rng.standard_normal(d))
        for record in limit_records.spectral_gap_records(honest, unsafe, eps_list, tail_eps_fraction=0.25, where=f"trial {trial}"):
            assert record["bound_holds"]
            assert record["kappa"] <= 2.0 / record["eps_r"] * (1 + 1e-9)
            assert 0.0 <= record["gamma"] <= 2.0 + 1e-12


def test_a_violated_bound_fails_loudly(monkeypatch):
    def broken(honest, unsafe, eps, eps_strict=None):
        return {"r": 3, "kappa": 99.0, "kappa_bound_gamma": 1.0, "kappa_bound": 2.0, "bound_holds": False}

    monkeypatch.setattr(limit_records, "spectral_gap", broken)
    with pytest.raises(limit_records.StructuralBoundError, match="family f, layer 2, reference u, eps=0.05: kappa=99.0"):
        limit_records.spectral_gap_records(np.ones((2, 2)), np.zeros((2, 2)), [0.05], tail_eps_fraction=0.25,
                                    where="family f, layer 2, reference u")


def test_settings_take_the_section_over_the_schema_defaults_and_ignore_what_a_layer_job_does_not_read():
    settings = limit_records.LimitsSettings.from_config({"eps": [0.05, 0.1], "headline_eps": 0.1, "claims": {}})
    assert settings.eps == (0.05, 0.1) and settings.draws == 50 and settings.split_half_k == (1, 3, 5, 10)
    assert not hasattr(settings, "headline_eps")


def test_check_pair_order(tmp_path):
    good = tmp_path / "good.parquet"
    pd.DataFrame({"pair": [0, 0, 1, 1], "side": ["a", "b", "a", "b"]}).to_parquet(good)
    limits.check_pair_order(str(good), 4)
    with pytest.raises(ValueError, match="good.parquet: 4 prompts but the activations have 6 rows"):
        limits.check_pair_order(str(good), 6)
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"pair": [0, 1, 0, 1], "side": ["a", "a", "b", "b"]}).to_parquet(bad)
    with pytest.raises(ValueError, match="bad.parquet: concept rows are not ordered"):
        limits.check_pair_order(str(bad), 4)


def _write_cell(path, rows, sha):
    io.write_tensors(path, {"last": rows.astype(np.float32)}, {"dataset_sha256": sha, "n_prompts": rows.shape[0]})


def _layer_files(tmp_path, rng, *, reference_sha="s"):
    d = 48
    base = rng.standard_normal((60, d))
    cells = {"safety": {}, "references": {}, "concepts": {"pairs": {}}}
    cells["safety"]["base"] = str(tmp_path / "b.safetensors")
    _write_cell(cells["safety"]["base"], base, "s")
    cells["safety"]["aligned"] = str(tmp_path / "a.safetensors")
    _write_cell(cells["safety"]["aligned"], base + _exact_rank(rng, 60, d, [5, 4, 3]), "s")
    cells["references"]["u"] = str(tmp_path / "u.safetensors")
    _write_cell(cells["references"]["u"], base + rng.standard_normal((60, d)), reference_sha)
    for role in ("base", "aligned"):
        cells["concepts"]["pairs"][role] = {}
        for fmt in ("raw", "chat"):
            path = str(tmp_path / f"c_{role}_{fmt}.safetensors")
            _write_cell(path, rng.standard_normal((40, d)), "c")
            cells["concepts"]["pairs"][role][fmt] = path
    prompts = tmp_path / "pairs.parquet"
    pd.DataFrame({"pair": np.repeat(np.arange(20), 2), "side": ["a", "b"] * 20}).to_parquet(prompts)
    return cells, {"pairs": str(prompts)}


def test_analyse_limits_layer_writes_every_record_kind(tmp_path):
    rng = np.random.default_rng(8)
    cells, prompts = _layer_files(tmp_path, rng)
    output = tmp_path / "out" / "layer_3.json"
    limits.analyse_limits_layer(family="fam", layer=3, cells=cells, models={"base": "B", "aligned": "A"},
                                concept_prompts=prompts, output=str(output), read_position="last",
                                settings={"eps": [0.05, 0.2], "headline_eps": 0.05}, version=1)
    frames = limits.load_records([str(output)])
    assert set(frames) == set(limit_records.RECORD_KINDS) and all(not frame.empty for frame in frames.values())
    assert set(frames["lrh"]["model"]) == {"A", "B"} and set(frames["lrh"]["n_concept"]) == {20}
    assert (frames["resampling"]["family"] == "fam").all() and (frames["resampling"]["layer"] == 3).all()
    planted = frames["resampling"][(~frames["resampling"]["centered"]) & (frames["resampling"]["eps"] == 0.05)]
    assert planted["rank_full"].item() == 3
    assert set(frames["resampling"]["layer_status"]) == {"ok"} and frames["resampling"]["counted"].all()
    assert frames["spectral_gap"]["bound_holds"].all() and set(frames["spectral_gap"]["reference"]) == {"u"}


def test_analyse_limits_layer_refuses_cells_from_different_prompts(tmp_path):
    rng = np.random.default_rng(9)
    cells, prompts = _layer_files(tmp_path, rng, reference_sha="other")
    with pytest.raises(ValueError, match="different prompt lists"):
        limits.analyse_limits_layer(family="fam", layer=0, cells=cells, models={"base": "B", "aligned": "A"},
                                    concept_prompts=prompts, output=str(tmp_path / "x.json"), read_position="last",
                                    settings={}, version=1)


def test_analyse_limits_layer_marks_a_layer_where_aligned_equals_base_as_zero(tmp_path):
    rng = np.random.default_rng(10)
    cells, prompts = _layer_files(tmp_path, rng)
    shutil.copyfile(cells["safety"]["base"], cells["safety"]["aligned"])
    output = tmp_path / "layer_5.json"
    limits.analyse_limits_layer(family="fam", layer=5, cells=cells, models={"base": "B", "aligned": "A"},
                                concept_prompts=prompts, output=str(output), read_position="last",
                                settings={"eps": [0.05], "headline_eps": 0.05, "split_half_k": [1]}, version=1)
    frames = limits.load_records([str(output)])
    assert all(set(frame["layer_status"]) == {"zero"} and not frame["counted"].any() for frame in frames.values())

"""The whole calibration grid on a tiny config, run twice: construction identities, the kappa bound, and
bit-identical tables for the same seed."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from rankaudit.calibration import grid
from rankaudit.calibration.tables import TABLE_NAMES, build_tables
from rankaudit.stages import calibration as jobs
from rankaudit.stages.calibration_report import write_tables

HIDDEN = 16
CALIBRATION = {
    "seeds": [0],
    "lambdas": [0, 5],
    "unsafe_lambdas": [0, 5],
    "data": {"n_features": 20, "n_train": 300, "n_probe": 150, "probe_seed_offset": 7777, "safety_fraction": 0.3,
             "safety_coords": 3, "safety_threshold": 1.0, "safety_shift": 1.1, "task_coords": [4, 5, 6, 7]},
    "network": {"hidden": HIDDEN, "n_hidden_layers": 3},
    "training": {"lr": 0.003, "epochs_base": 40, "epochs_finetune": 30, "epochs_distributed": 30,
                 "stable_rank_target": 8, "unsafe_init": "base"},
    "measurement": {"eps": 0.05, "r_grid": [1, 3, HIDDEN], "random_draws": 3, "control_seed": 0, "projector_fit": "train"},
    "kappa": {"honest": ["fullft", "dist5"], "unsafe": ["unsafe_ft", "unsafe_dist5"], "threshold": 8},
    "tables": {"report_r": [3, HIDDEN], "form": "weak"},
}


def run_grid(root: Path, calibration: dict) -> dict[str, Path]:
    """Every job of the grid for seed 0, in dependency order, as the Snakemake rules would run them."""
    cell = grid.cell_slice(calibration)
    seed = 0
    cell_dir = root / "seed0"
    model = {name: cell_dir / name / "model.safetensors" for name in ["base", *grid.all_settings(calibration)]}
    jobs.run_base_job(cell, seed, model["base"], cell_dir / "base" / "measurements.json")
    for name in grid.honest_settings(calibration) + grid.unsafe_settings(calibration):
        aligned = model["fullft"] if calibration["training"]["unsafe_init"] == "aligned" else None
        jobs.run_finetune_job(cell, seed, name, model["base"], model[name], cell_dir / name / "measurements.json",
                              aligned_path=aligned)
    jobs.run_steering_job(cell, seed, model["base"], model["fullft"], cell_dir / "steering" / "vectors.safetensors",
                          cell_dir / "steering" / "measurements.json")
    jobs.run_kappa_job(cell, seed, model["base"], model, grid.kappa_pairs(calibration), cell_dir / "kappa.json")
    tables = root / "tables"
    write_tables([cell_dir / name / "measurements.json" for name in grid.all_settings(calibration)],
                 [cell_dir / "base" / "measurements.json"], [cell_dir / "kappa.json"], calibration["tables"],
                 calibration["kappa"]["threshold"], tables)
    return {"cells": cell_dir, "tables": tables}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    threads = torch.get_num_threads()
    try:
        return [run_grid(tmp_path_factory.mktemp(f"run{index}"), CALIBRATION) for index in range(2)]
    finally:
        torch.set_num_threads(threads)


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_steering_is_rank_one_by_construction(two_runs):
    steering = load(two_runs[0]["cells"] / "steering" / "measurements.json")
    assert [layer["rank_eps"] for layer in steering["layers"]] == [1, 1, 1]
    assert steering["rho_eps_mean"] == 1 / HIDDEN


def test_ablating_every_direction_removes_the_whole_modification(two_runs):
    cells = two_runs[0]["cells"]
    base = load(cells / "base" / "measurements.json")
    steering = load(cells / "steering" / "measurements.json")
    strong_top = {row["r"]: row["compliance"] for row in steering["ablation"] if row["form"] == "strong" and row["basis"] == "top"}
    # steering keeps the base readout: removing its one direction (or all d) gives the base model back exactly
    assert strong_top[1] == strong_top[HIDDEN] == base["compliance"]
    for name in ("fullft", "dist5"):
        measured = load(cells / name / "measurements.json")
        full = {row["basis"]: row["compliance"] for row in measured["ablation"] if row["r"] == HIDDEN and row["form"] == "strong"}
        assert full["top"] == measured["compliance_on_base_activations"]
        assert full["random"] == pytest.approx(measured["compliance_on_base_activations"], abs=1e-12)


def test_kappa_structural_bound_holds_on_every_pair(two_runs):
    rows = load(two_runs[0]["cells"] / "kappa.json")["pairs"]
    assert len(rows) == 4 * 3
    assert {(row["honest"], row["unsafe"]) for row in rows} == set(grid.kappa_pairs(CALIBRATION))
    for row in rows:
        assert row["bound_holds"]
        assert row["kappa"] <= 2 / (CALIBRATION["measurement"]["eps"] * row["r"]) * (1 + 1e-9)


def test_same_seed_reproduces_identical_tables(two_runs):
    first, second = (run["tables"] for run in two_runs)
    for name in TABLE_NAMES:
        pd.testing.assert_frame_equal(pd.read_parquet(first / f"calibration_{name}.parquet"),
                                      pd.read_parquet(second / f"calibration_{name}.parquet"), check_exact=True)
        assert (first / f"calibration_{name}.csv").read_bytes() == (second / f"calibration_{name}.csv").read_bytes()


def test_tables_have_one_row_per_cell_and_the_sweep_per_lambda(two_runs):
    cells = two_runs[0]["cells"]
    frames = build_tables([cells / name / "measurements.json" for name in grid.all_settings(CALIBRATION)],
                          [cells / "base" / "measurements.json"], [cells / "kappa.json"], CALIBRATION["tables"], 8)
    assert list(frames["lambda_sweep"]["setting"]) == ["fullft", "dist5"]
    assert {"compliance_r3_mean", f"compliance_r{HIDDEN}_std"} <= set(frames["lambda_sweep"].columns)
    assert len(frames["cells"]) == 1 + len(grid.all_settings(CALIBRATION))
    assert frames["kappa"]["n_combinations"].tolist() == [3, 3, 3, 3]
    assert frames["kappa"]["bound_holds_all"].all()

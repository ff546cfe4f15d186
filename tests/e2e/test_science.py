"""End-to-end numbers of the finished demo that follow from how the organisms are built, with stated tolerances.

Each check reads the run's own files and recomputes what it asserts from the per-layer records (not from the table
under test), so a table builder that averages the wrong rows, drops a filter or mislabels a value fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

ALIGNED_FAMILIES = ("llama", "gemma2", "qwen2")
EMBEDDING_LAYER = 0
# DiD removes the template and base-model effects, leaving the refusal shift: on the organisms (refusal trained
# into the last blocks) its top direction lies within ~30 degrees of the selected canonical direction at every
# layer; the run gives 0.82-0.85, and 0.6 leaves room for any seed
MIN_DID_COS_SELECTED = 0.6
# MLP calibration (METHODS §6): lambda = 0 fine-tunes without the distillation term (rho ~ 0.18 in the paper and
# here), lambda >= 5 saturates near 0.40; these bands hold over seeds (the paper's std over 3 seeds is < 0.01)
RHO_BANDS = {0.0: (0.12, 0.25), 5.0: (0.35, 0.45), 15.0: (0.35, 0.45), 50.0: (0.35, 0.45)}


def table(workdir: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(workdir / "results/tables" / f"{name}.parquet")


def layer_records(workdir: Path, family: str, variant: str = "template", dataset: str = "safety") -> list[dict]:
    folder = workdir / f"results/{family}/spectra/{variant}/{dataset}"
    return sorted((json.loads(path.read_text()) for path in folder.glob("layer_*.json")), key=lambda r: r["layer"])


def headline_eps(config_path: Path) -> float:
    return float(yaml.safe_load(config_path.read_text())["audit"]["eps"][0])


def test_rho_per_family_is_the_mean_over_counted_layers_only(demo_run: tuple[Path, Path]) -> None:
    workdir, config_path = demo_run
    eps = headline_eps(config_path)
    rho = table(workdir, "rho_per_family")
    for family in (*ALIGNED_FAMILIES, "llama_planted"):
        records = layer_records(workdir, family)
        index = records[0]["uncentered"]["eps"].index(eps)
        counted = [r for r in records if r["layer"] != EMBEDDING_LAYER and r["uncentered"]["status"] == "ok"]
        expected = np.mean([r["uncentered"]["rank_eps"][index] for r in counted])
        row = rho[(rho["family"] == family) & (rho["eps"] == eps)].iloc[0]
        assert row["layers_averaged"] == len(counted) < len(records), family
        assert "0 (embedding)" in row["excluded_layers"], family
        assert row["mean_rank"] == pytest.approx(expected, abs=1e-12), family
    # the planted pair is bit-identical to its base before the edited block: a zero matrix, never a rank
    planted = rho[(rho["family"] == "llama_planted") & (rho["eps"] == eps)].iloc[0]
    assert "1 (zero)" in planted["excluded_layers"]


def test_limits_count_no_embedding_layer_and_kappa_obeys_the_lemma(demo_run: tuple[Path, Path]) -> None:
    workdir, config_path = demo_run
    eps = headline_eps(config_path)
    pairs = table(workdir, "limits_kappa_pairs")
    assert not pairs[pairs["layer"] == EMBEDDING_LAYER]["counted"].any()
    # the Lemma: kappa_lb <= 2 / (eps r) on every layer x reference x eps, counted or not
    assert (pairs["kappa"] <= 2.0 / (pairs["eps"] * pairs["r"]) * (1 + 1e-9)).all()
    per_reference = table(workdir, "limits_kappa_per_reference")
    for (family, reference), rows in pairs[pairs["eps"] == eps].groupby(["family", "reference"]):
        expected = int(((rows["kappa"] > 8) & rows["counted"]).sum())
        row = per_reference[(per_reference["family"] == family) & (per_reference["reference"] == reference)].iloc[0]
        assert row["count_kappa_gt_8"] == expected, (family, reference)
    section = (workdir / "results/tables/limits_section.md").read_text()
    assert "only at layer(s) 0" not in section
    for family in ALIGNED_FAMILIES:
        block = section.split(f"### {family}\n", 1)[1].split("### ", 1)[0]
        assert "left out of every mean" in block and "0 (embedding output)" in block, family


def test_corrected_rank_interval_is_centred_on_the_full_rank_and_wider_than_the_raw_range(demo_run: tuple[Path, Path]) -> None:
    workdir, _ = demo_run
    rows = table(workdir, "limits_rank_resampling")
    assert ((rows["pred_low"] <= rows["rank_full"]) & (rows["rank_full"] <= rows["pred_high"])).all()
    assert ((rows["sub_rank_min"] <= rows["raw_low"]) & (rows["raw_high"] <= rows["sub_rank_max"])).all()
    factor = np.sqrt(rows["n_subsample"] / (rows["n"] - rows["n_subsample"]))
    assert np.allclose(rows["rank_se"], factor * rows["sub_rank_std"], rtol=1e-9, atol=1e-12)
    spread = rows[rows["sub_rank_std"] > 0]
    assert ((spread["pred_high"] - spread["pred_low"]) >= (spread["raw_high"] - spread["raw_low"])).all()


def test_selection_records_arditis_prompt_filter(demo_run: tuple[Path, Path]) -> None:
    workdir, _ = demo_run
    for family in ALIGNED_FAMILIES:
        record = json.loads((workdir / f"results/{family}/causal/selection.json").read_text())
        prompt_filter = record["prompt_filter"]
        assert prompt_filter["enabled"]
        for split, by_role in prompt_filter["counts"].items():
            for role, counts in by_role.items():
                # the aligned organisms refuse (nearly) every harmful prompt and no harmless one
                assert 0.9 * counts["before"] <= counts["after"] <= counts["before"], (family, split, role)
        scores = prompt_filter["scores"][record["validation"]["split"]]
        assert scores["harmful"]["mean"] > 0 > scores["harmless"]["mean"], family


def test_did_top_direction_points_along_the_selected_refusal_direction(demo_run: tuple[Path, Path]) -> None:
    workdir, _ = demo_run
    means = table(workdir, "causal_canonical_cosines_mean")
    per_layer = table(workdir, "causal_canonical_cosines")
    for family in ALIGNED_FAMILIES:
        did = means[(means["family"] == family) & (means["variant"] == "did") & ~means["centered"]].iloc[0]
        assert did["cos_selected_mean"] >= MIN_DID_COS_SELECTED, family
        rows = per_layer[(per_layer["family"] == family) & (per_layer["variant"] == "did") & ~per_layer["centered"]]
        kept = rows[rows["in_mean"]]
        assert EMBEDDING_LAYER not in set(kept["layer"]), family
        assert did["cos_selected_mean"] == pytest.approx(kept["cos_selected"].mean(), abs=1e-12), family


def test_headline_values_are_those_of_the_source_tables(demo_run: tuple[Path, Path]) -> None:
    workdir, config_path = demo_run
    eps = headline_eps(config_path)
    headline = table(workdir, "headline").set_index(["scope", "quantity"])["measured_value"]
    rho = table(workdir, "rho_per_family")
    cosines = table(workdir, "arditi_cosines")
    for family in ALIGNED_FAMILIES:
        expected_rho = rho[(rho["family"] == family) & (rho["eps"] == eps)]["rho_d"].iloc[0]
        assert headline[(family, "rho_template")] == pytest.approx(expected_rho, rel=1e-12)
        expected_cos = cosines[(cosines["family"] == family) & (cosines["variant"] == "did")]["cos_top_arditi"].iloc[0]
        assert headline[(family, "did_cos_arditi")] == pytest.approx(expected_cos, rel=1e-12)


def test_calibration_rho_by_lambda_stays_in_its_bands(demo_run: tuple[Path, Path]) -> None:
    workdir, _ = demo_run
    sweep = table(workdir, "calibration_lambda_sweep").set_index("lambda")["rho_eps_mean_mean"]
    for lam, (low, high) in RHO_BANDS.items():
        assert low <= sweep[lam] <= high, f"lambda {lam}: rho {sweep[lam]:.3f} outside [{low}, {high}]"
    assert sweep[0.0] < sweep[0.5] < sweep[5.0]

"""Diagnosis tables on planted layer JSONs: layer 0 and trivial matrices stay out of every mean and every count."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from rankaudit import spectra
from rankaudit.stages import tables as audit_tables

N, D = 10, 50
SCALARS = {key: 1.0 for key in audit_tables.SUMMARY_SCALARS}


def _summary(status: str, rank: int, flip: float | None, energy: float = 0.5) -> dict:
    return {
        "n": N, "d": D, "eps": [0.05], "rank_eps": [rank], "rho_d": [rank / D], "rho_min": [rank / min(N, D)],
        "status": status, "sign_flip_rank_eps": [flip], "sign_flip_rho_d": [None if flip is None else flip / D],
        **SCALARS, "mean_energy_fraction": energy, "stable_rank": float(rank),
    }


def _record(variant: str, layer: int, uncentered: dict, centered: dict, cos: float | None, cos_mean: float | None) -> dict:
    defined = cos is not None and cos_mean is not None
    return {
        "family": "fam", "variant": variant, "dataset": "safety", "layer": layer,
        "settings": {"eps": [0.05]}, "uncentered": uncentered, "centered": centered,
        "arditi": {"cos_top_direction": cos, "cos_top_mean": cos_mean, "capture": {"1": cos},
                   "status": "ok" if defined else "undefined", "zero_vectors": [] if defined else ["refusal_direction"]},
    }


# (layer, uncentered (status, rank, sign-flip rank, mean-energy fraction), centered (status, rank), |cos| with r)
TEMPLATE = [
    (0, ("rank_at_most_1", 1, 9.0, 1.0), ("zero", 0), None),  # the embedding layer: one template token
    (1, ("zero", 0, None, 0.0), ("zero", 0), None),            # before the first edited block
    (2, ("ok", 4, 9.0, 0.5), ("ok", 8), 0.3),
    (3, ("ok", 6, 8.0, 0.9), ("rank_at_most_1", 1), None),     # cosine undefined here as well
    (4, ("ok", 8, 7.0, 0.7), ("ok", 16), 0.5),
]
NAIVE_RANKS = {0: 9, 1: 2, 2: 2, 3: 2, 4: 2}  # layer 0 is ok here, and still excluded
NAIVE_COS = {0: 0.9, 1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}


@pytest.fixture()
def paths(tmp_path: Path) -> list[str]:
    records = []
    for layer, (status, rank, flip, energy), (c_status, c_rank), cos in TEMPLATE:
        records.append(_record("template", layer, _summary(status, rank, flip, energy), _summary(c_status, c_rank, 5.0),
                               cos, None if cos is None else cos + 0.5))
    for layer, rank in NAIVE_RANKS.items():
        records.append(_record("naive", layer, _summary("ok", rank, 10.0), _summary("ok", rank + 1, 10.0),
                               NAIVE_COS[layer], 0.8))
    files = []
    for index, record in enumerate(records):
        path = tmp_path / f"record_{index}.json"
        path.write_text(json.dumps(record))
        files.append(str(path))
    return files


def test_rho_per_family_leaves_out_layer_0_and_trivial_layers(paths):
    tables = audit_tables.diagnosis_tables(audit_tables.spectra_rows(paths), noise_draws=1, seed=0)
    row = tables["rho_per_family"].iloc[0]
    assert (row["layers_averaged"], row["layers_excluded"]) == (3, 2)
    assert row["excluded_layers"] == "0 (embedding); 1 (zero)"
    assert row["mean_rank"] == 6.0 and row["rho_d"] == pytest.approx(6.0 / D, abs=1e-15)
    assert row["rho_min"] == pytest.approx(6.0 / N, abs=1e-15)
    assert row["sign_flip_mean_rank"] == 8.0 and row["sign_flip_rho_d"] == pytest.approx(8.0 / D, abs=1e-15)
    assert row["noise_rho_d"] == spectra.noise_rho(N, D, 0.05, draws=1, seed=0)
    columns = list(tables["rho_per_family"].columns)
    assert columns.index("noise_rho_d") + 1 == columns.index("sign_flip_mean_rank")


def test_per_layer_table_keeps_layer_0_with_its_status_and_missing_numbers(paths):
    per_layer = audit_tables.diagnosis_tables(audit_tables.spectra_rows(paths), noise_draws=1, seed=0)["rho_per_layer"]
    template = per_layer[(per_layer["variant"] == "template") & ~per_layer["centered"]].set_index("layer")
    assert list(template.index) == [0, 1, 2, 3, 4]
    assert list(template["status"]) == ["rank_at_most_1", "zero", "ok", "ok", "ok"]
    assert list(template["in_means"]) == [False, False, True, True, True]
    for layer in (0, 1):
        for column in ("rank_eps", "rho_d", "sign_flip_rank_eps", "sign_flip_rho_d", "cos_top_arditi"):
            assert math.isnan(template.loc[layer, column]), (layer, column)
    assert template.loc[3, "cos_status"] == "undefined" and math.isnan(template.loc[3, "cos_top_arditi"])
    assert template.loc[2, "rank_eps"] == 4 and template.loc[2, "sign_flip_rho_d"] == pytest.approx(9.0 / D)
    naive = per_layer[(per_layer["variant"] == "naive") & ~per_layer["centered"]].set_index("layer")
    assert naive.loc[0, "rank_eps"] == 9 and not naive.loc[0, "in_means"]
    centered = per_layer[(per_layer["variant"] == "template") & per_layer["centered"]].set_index("layer")
    assert centered.loc[3, "status"] == "rank_at_most_1" and math.isnan(centered.loc[3, "rank_eps"])
    assert set(centered["cos_status"]) == {"n/a"} and centered["cos_top_arditi"].isna().all()
    assert (per_layer["noise_rho_d"] == spectra.noise_rho(N, D, 0.05, draws=1, seed=0)).all()


def test_centered_vs_uncentered_uses_layers_where_both_are_ok(paths):
    table = audit_tables.diagnosis_tables(audit_tables.spectra_rows(paths), noise_draws=1, seed=0)["centered_vs_uncentered"]
    row = table[table["variant"] == "template"].iloc[0]
    assert (row["layers_averaged"], row["layers_excluded"]) == (2, 3)
    assert row["excluded_layers"] == "0 (embedding); 1 (uncentered zero); 3 (centered rank_at_most_1)"
    assert (row["mean_rank_uncentered"], row["mean_rank_centered"], row["centered_over_uncentered"]) == (6.0, 12.0, 2.0)
    assert row["mean_energy_fraction"] == pytest.approx(0.6, abs=1e-15)
    naive = table[table["variant"] == "naive"].iloc[0]
    assert (naive["layers_averaged"], naive["mean_rank_uncentered"], naive["mean_rank_centered"]) == (4, 2.0, 3.0)


def test_variants_and_cosines_leave_out_layer_0_and_undefined_cosines(paths):
    tables = audit_tables.diagnosis_tables(audit_tables.spectra_rows(paths), noise_draws=1, seed=0)
    variants = tables["variants"].set_index("variant")
    assert variants.loc["naive", "mean_rank"] == 2.0 and variants.loc["naive", "layers_averaged"] == 4
    assert variants.loc["template", "mean_rank"] == 6.0 and variants.loc["template", "stable_rank"] == 6.0
    assert variants.loc["template", "sign_flip_rho_d"] == pytest.approx(8.0 / D, abs=1e-15)
    cosines = tables["arditi_cosines"].set_index("variant")
    assert cosines.loc["naive", "cos_top_arditi"] == pytest.approx(0.25, abs=1e-15)  # not 0.38 with layer 0
    assert cosines.loc["naive", "layers_averaged"] == 4
    assert cosines.loc["template", "cos_top_arditi"] == pytest.approx(0.4, abs=1e-15)
    assert cosines.loc["template", "cos_top_mean"] == pytest.approx(0.9, abs=1e-15)
    assert cosines.loc["template", "capture_k1"] == pytest.approx(0.4, abs=1e-15)
    assert (cosines.loc["template", "layers_averaged"], cosines.loc["template", "layers_excluded"]) == (2, 3)
    assert cosines.loc["template", "excluded_layers"] == "0 (embedding); 1 (zero); 3 (cosine undefined)"


def test_written_tables_say_what_the_means_leave_out(paths, tmp_path):
    audit_tables.write_audit_tables(paths, str(tmp_path), noise_draws=1, seed=0)
    for name in ("rho_per_family", "centered_vs_uncentered", "variants", "arditi_cosines"):
        markdown = (tmp_path / f"{name}.md").read_text()
        assert "layer 0 (embedding output)" in markdown.splitlines()[0], name
        assert "layers_averaged" in markdown and "layers_excluded" in markdown
    per_layer = pd.read_parquet(tmp_path / "rho_per_layer.parquet")
    assert {"status", "in_means", "sign_flip_rank_eps", "sign_flip_rho_d", "noise_rho_d"} <= set(per_layer.columns)


def test_ranks_within_the_precision_floor_are_flagged_per_layer_and_counted_per_mean(paths):
    keys = {"family": "fam", "variant": "template", "dataset": "safety", "centered": False, "eps": 0.05}
    floor = pd.DataFrame([
        {**keys, "layer": 2, "floor_fraction": 0.2, "within_precision_floor": True},
        {**keys, "layer": 3, "floor_fraction": 0.001, "within_precision_floor": False},
        {**keys, "layer": 0, "floor_fraction": 0.9, "within_precision_floor": True},  # excluded layer: not counted
    ])
    tables = audit_tables.diagnosis_tables(audit_tables.spectra_rows(paths), noise_draws=1, seed=0, floor=floor)
    assert tables["rho_per_family"].iloc[0]["layers_within_floor"] == 1
    per_layer = tables["rho_per_layer"]
    template = per_layer[(per_layer["variant"] == "template") & ~per_layer["centered"]].set_index("layer")
    assert template["within_precision_floor"].to_dict() == {0: True, 1: False, 2: True, 3: False, 4: False}
    assert template.loc[2, "floor_fraction"] == 0.2 and math.isnan(template.loc[4, "floor_fraction"])
    unflagged = audit_tables.diagnosis_tables(audit_tables.spectra_rows(paths), noise_draws=1, seed=0)
    assert unflagged["rho_per_family"].iloc[0]["layers_within_floor"] == 0
    assert not unflagged["rho_per_layer"]["within_precision_floor"].any()

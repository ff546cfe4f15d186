"""The headline table: the paper's figures file, and the run's figures recovered from planted finished tables."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from rankaudit.paper_figures import compare_family, load_paper_figures
from rankaudit.plan import ConfigError
from rankaudit.stages.headline import HeadlineInputError, sweet_spot, write_headline

REPO = Path(__file__).resolve().parents[2]
FIGURES = REPO / "reference" / "paper_figures.yaml"
ANCHORS = Path(os.environ.get("RANKAUDIT_PAPER_SCRIPTS", REPO.parent / "shared/anchors/effective-rank-audit/experiments")).parent

FAMILIES = {
    "llama": {"base": "meta-llama/Llama-3.1-8B", "aligned": "meta-llama/Llama-3.1-8B-Instruct"},
    "qwen2": {"base": "organism:qwen2/base", "aligned": "organism:qwen2/aligned"},
    "odd": {"base": "/models/odd_base", "aligned": "/models/odd_aligned"},
}
NAN = math.nan


def planted_tables() -> dict[str, pd.DataFrame]:
    """Finished tables with known values, plus rows the headline must not pick (other eps, variant, centering)."""
    return {
        "rho_per_family": pd.DataFrame({
            "family": ["llama", "llama", "qwen2", "odd"], "eps": [0.05, 0.1, 0.05, 0.05],
            "layers_averaged": [31, 31, 4, 4], "mean_rank": [12.3, 4.1, 2.0, 3.0], "d": [4096, 4096, 64, 64],
            "rho_d": [0.003, 0.001, 0.03125, 0.046875]}),
        "centered_vs_uncentered": pd.DataFrame({
            "family": ["llama", "llama", "llama", "qwen2", "odd"], "variant": ["template", "naive", "template", "template", "template"],
            "dataset": ["safety", "safety", "control", "safety", "safety"], "eps": [0.05] * 5,
            "mean_rank_uncentered": [12.0, 1.0, 1.0, 2.0, 0.0], "mean_rank_centered": [72.0, 99.0, 50.0, 9.0, 4.0],
            "centered_over_uncentered": [6.0, 99.0, 50.0, 4.5, NAN]}),
        "arditi_cosines": pd.DataFrame({
            "family": ["llama", "llama", "qwen2", "odd"], "variant": ["did", "template", "did", "did"],
            "cos_top_arditi": [0.8, 0.3, NAN, 0.5]}),
        "limits_lrh_baseline": pd.DataFrame({
            "family": ["llama", "llama", "llama"], "centered": [False, False, True],
            "rho_concept": [0.009, 0.006, 0.3], "rho_safety": [0.003, 0.003, 0.003], "ratio": [3.0, 2.0, 100.0]}),
        "limits_kappa_per_reference": pd.DataFrame({
            "family": ["llama", "llama"], "reference": ["ref_a", "ref_b"], "layers": [32, 32],
            "count_kappa_gt_8": [1, 0], "count_kappa_gt_8_trivial": [1, 0], "layers_kappa_gt_8": ["1", "none"]}),
        "causal_k3_narrow": pd.DataFrame({
            "family": ["llama", "llama", "qwen2"], "basis": ["template", "naive", "template"], "band": ["narrow"] * 3,
            "k": [3, 3, 3], "baseline_rate": [0.97, 0.97, 1.0], "principal_rate": [0.8, 0.1, 0.5],
            "principal_low": [0.71, 0.05, 0.3], "principal_high": [0.87, 0.2, 0.7], "random_rate_mean": [0.94, 0.9, NAN],
            "baseline_score": [3.0, 3.0, 2.5], "principal_score": [1.0, -1.0, 0.4], "random_score_mean": [2.9, 2.9, 2.4]}),
        "calibration_lambda_sweep": pd.DataFrame({
            # lambda 50 has the highest rho but is brittle; 5 is the highest-rho lambda that ablation does not hurt
            "lambda": [0.0, 0.5, 5.0, 50.0], "rho_eps_mean_mean": [0.17, 0.33, 0.40, 0.41],
            "compliance_mean": [0.95, 0.94, 0.86, 0.70], "compliance_r40_mean": [0.5, 1.0, 0.99, 0.1],
            "compliance_r80_mean": [0.4, 1.0, 0.97, 0.2]}),
        "calibration_kappa": pd.DataFrame({
            "n_combinations": [9, 9], "n_kappa_above_8": [0, 1], "kappa_max": [2.5, 9.1]}),
    }


def write_tables(tables: dict[str, pd.DataFrame], directory: Path, csv: tuple[str, ...] = ()) -> dict[str, str]:
    paths = {}
    for name, frame in tables.items():
        path = directory / f"{name}.{'csv' if name in csv else 'parquet'}"
        frame.to_csv(path, index=False) if name in csv else frame.to_parquet(path, index=False)
        paths[name] = str(path)
    return paths


def run_headline(tmp_path: Path, tables: dict[str, pd.DataFrame], **kwargs) -> pd.DataFrame:
    inputs = write_tables(tables, tmp_path, csv=("limits_lrh_baseline", "causal_k3_narrow"))
    settings = {"families": FAMILIES, "audit_eps": 0.05, "causal_families": ["llama", "qwen2"], "report_r": [40, 80],
                "kappa_threshold": 8.0, **kwargs}
    return write_headline(inputs, str(FIGURES), str(tmp_path / "headline"), **settings)


def cell(frame: pd.DataFrame, scope: str, quantity: str) -> pd.Series:
    rows = frame[(frame["scope"] == scope) & (frame["quantity"] == quantity)]
    assert len(rows) == 1, (scope, quantity)
    return rows.iloc[0]


# --- the paper's figures file ---------------------------------------------------------------------------------------


def test_every_paper_figure_loads_with_a_text_and_a_source():
    figures = load_paper_figures(FIGURES)
    assert set(figures.families) == {"llama", "gemma2", "qwen2"}
    every = [*(f for family in figures.families.values() for f in family.figures.values()), *figures.calibration.values()]
    assert len(every) == 18 and all(figure.text.strip() and figure.source.strip() for figure in every)
    for quantity in ("rho_template", "centered_over_uncentered", "did_cos_arditi", "k3_narrow"):
        assert all(isinstance(family.figures[quantity].value, float) for family in figures.families.values()), quantity
    assert (figures.families["llama"].figures["kappa_gt_8"].of, figures.calibration["kappa_gt_8"].of) == (90, 36)


def test_the_paper_families_are_the_models_config_paper_yaml_loads():
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    figures = load_paper_figures(FIGURES)
    for key, family in figures.families.items():
        models = {role: config["models"][config["families"][key][role]]["source"] for role in ("base", "aligned")}
        assert models == {"base": family.base, "aligned": family.aligned}
        assert compare_family(key, models, figures).kind == "paper model"
    # matched by the ids, whatever the run calls the family
    assert compare_family("my_llama", FAMILIES["llama"], figures).paper.key == "llama"


def test_demo_families_are_organism_stand_ins_and_the_planted_pair_has_no_counterpart():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    figures = load_paper_figures(FIGURES)
    kinds = {family: compare_family(family, {role: config["models"][entry[role]]["source"] for role in ("base", "aligned")},
                                    figures).kind for family, entry in config["families"].items()}
    assert kinds == {"llama": "organism stand-in", "gemma2": "organism stand-in", "qwen2": "organism stand-in",
                     "llama_planted": "none"}


def test_the_sweet_spot_rule_picks_the_papers_sweet_spot_from_the_papers_own_sweep():
    calibration = load_paper_figures(FIGURES).calibration
    assert sweet_spot(calibration["lambda_sweep"].rows)["lambda"] == calibration["sweet_spot"].value


def test_a_figure_without_a_source_is_refused_naming_its_key(tmp_path):
    data = yaml.safe_load(FIGURES.read_text())
    del data["families"]["gemma2"]["figures"]["did_cos_arditi"]["source"]
    broken = tmp_path / "figures.yaml"
    broken.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"figures.yaml: invalid config key 'families\.gemma2\.figures\.did_cos_arditi\.source': is missing"):
        load_paper_figures(broken)


@pytest.mark.skipif(not (ANCHORS / "experiments/results").is_dir(), reason="the paper's result JSONs are not beside the repository")
def test_the_figures_agree_with_the_papers_result_files():
    results = ANCHORS / "experiments/results"
    figures = load_paper_figures(FIGURES)
    files = {"llama": "v4_llama.json", "gemma2": "v4_gemma.json", "qwen2": "revision6_qwen.json"}
    for key, name in files.items():
        record = json.loads((results / name).read_text())
        template = record["M_template_safety"].values()
        stated = figures.families[key].figures
        assert np.mean([layer["ratio_d"] for layer in template]) == pytest.approx(stated["rho_template"].value, abs=5e-5)
        ratio = np.mean([layer["eff_rank_centered"] for layer in template]) / np.mean([layer["eff_rank"] for layer in template])
        assert ratio == pytest.approx(stated["centered_over_uncentered"].value, abs=0.05)
        cosines = [abs(layer["cos_with_DiD_top1"]) for layer in record["Arditi"].values()]
        assert np.mean(cosines) == pytest.approx(stated["did_cos_arditi"].value, abs=5e-4)
    kappas = [layer["kappa_proxy"] for reference in json.loads((results / "kappa_multi_llama.json").read_text()).values()
              for layer in reference["per_layer"].values()]
    assert (sum(k > 8 for k in kappas), len(kappas)) == (1, 90)
    pairings = json.loads((results / "calibration_kappa.json").read_text())["aggregate"].values()
    assert (sum(p["n_above_8"] for p in pairings), sum(p["n_total"] for p in pairings)) == (0, 36)
    seeds = json.loads((results / "calibration_v2_revision3.json").read_text())["per_seed"]
    names = {0: "FullFT", 0.5: "Dist_reg0.5", 5: "Dist_reg5.0", 15: "Dist_reg15.0", 50: "Dist_reg50.0"}
    for row in figures.calibration["lambda_sweep"].rows:
        variants = [seed["variants"][names[row["lambda"]]] for seed in seeds]
        assert np.mean([v["rho_eps_aggregate"] for v in variants]) == pytest.approx(row["rho"], abs=0.005)
        after = {r: np.mean([a["safety_compliance"] for v in variants for a in v["test2_ablation"] if a["k"] == r]) for r in (0, 40, 80)}
        assert after[0] == pytest.approx(row["compliance"], abs=0.005)
        assert [after[r] for r in (40, 80)] == pytest.approx([row["after"][r] for r in (40, 80)], abs=0.005)


# --- the run's figures from planted tables ---------------------------------------------------------------------------


def test_planted_tables_give_their_figures_beside_the_papers(tmp_path):
    frame = run_headline(tmp_path, planted_tables())
    figures = load_paper_figures(FIGURES)
    expected = {
        ("llama", "rho_template"): 0.003, ("llama", "centered_over_uncentered"): 6.0, ("llama", "did_cos_arditi"): 0.8,
        ("llama", "k3_narrow"): 0.8, ("llama", "kappa_gt_8"): 1.0, ("llama", "lrh_ratio"): 2.5,
        ("qwen2", "rho_template"): 0.03125, ("qwen2", "centered_over_uncentered"): 4.5, ("qwen2", "k3_narrow"): 0.5,
        ("odd", "did_cos_arditi"): 0.5,
        ("calibration", "sweet_spot"): 5.0, ("calibration", "kappa_gt_8"): 1.0,
    }
    for (scope, quantity), value in expected.items():
        assert cell(frame, scope, quantity)["measured_value"] == pytest.approx(value), (scope, quantity)
    for quantity, figure in figures.families["llama"].figures.items():
        row = cell(frame, "llama", quantity)
        assert (row["comparison"], row["paper"], row["paper_value"], row["paper_source"]) == (
            "paper model", figure.text, figure.value, figure.source)
    assert "1 of 64 layer-reference pairs (ref_a 1/32 at layer(s) 1; ref_b 0/32)" in cell(frame, "llama", "kappa_gt_8")["measured"]
    assert "random rank-3 0.94" in cell(frame, "llama", "k3_narrow")["measured"]
    assert "random rank-3 not judged" in cell(frame, "qwen2", "k3_narrow")["measured"]
    assert cell(frame, "calibration", "lambda_sweep")["measured"].startswith("0: rho 0.17, 0.95 -> r40 0.50, r80 0.40; 0.5:")
    assert cell(frame, "calibration", "kappa_gt_8")["measured"].startswith("1 of 18 combinations above 8")


def test_undefined_figures_and_missing_counterparts_are_said_so(tmp_path):
    frame = run_headline(tmp_path, planted_tables())
    assert cell(frame, "qwen2", "did_cos_arditi")["status"] == "undefined"
    assert cell(frame, "odd", "centered_over_uncentered")["status"] == "undefined"
    assert cell(frame, "qwen2", "lrh_ratio")["measured"] == "no concept sets"
    assert cell(frame, "qwen2", "lrh_ratio")["paper"] == "not reported"  # the paper ran no LRH baseline on Qwen
    assert cell(frame, "odd", "rho_template")["paper"] == "-" and cell(frame, "odd", "k3_narrow")["status"] == "not run"
    markdown = (tmp_path / "headline.md").read_text()
    assert "#### llama: the paper's models (meta-llama/Llama-3.1-8B -> meta-llama/Llama-3.1-8B-Instruct)" in markdown
    assert "#### qwen2: model organisms (organism:qwen2/base -> organism:qwen2/aligned), not the paper's models" in markdown
    assert "#### odd: /models/odd_base -> /models/odd_aligned; no paper counterpart" in markdown
    written = pd.read_parquet(tmp_path / "headline.parquet")
    assert written.equals(frame) and pd.read_csv(tmp_path / "headline.csv")["measured"].tolist() == frame["measured"].tolist()


def test_stages_that_did_not_run_show_not_run(tmp_path):
    audit_only = {name: table for name, table in planted_tables().items()
                  if name in ("rho_per_family", "centered_vs_uncentered", "arditi_cosines")}
    frame = run_headline(tmp_path, audit_only, causal_families=[], report_r=[], kappa_threshold=None)
    not_run = frame[frame["status"] == "not run"]
    assert set(zip(not_run["scope"], not_run["quantity"])) == {
        *((family, quantity) for family in FAMILIES for quantity in ("k3_narrow", "kappa_gt_8", "lrh_ratio")),
        ("calibration", "sweet_spot"), ("calibration", "lambda_sweep"), ("calibration", "kappa_gt_8")}
    assert (not_run["measured"] == "not run").all()
    assert cell(frame, "llama", "rho_template")["measured_value"] == pytest.approx(0.003)
    assert "| not run |" in (tmp_path / "headline.md").read_text()


def test_a_missing_column_names_the_table_and_the_column(tmp_path):
    tables = planted_tables()
    tables["limits_kappa_per_reference"] = tables["limits_kappa_per_reference"].drop(columns="count_kappa_gt_8")
    with pytest.raises(HeadlineInputError, match=r"table limits_kappa_per_reference .* lacks column\(s\) \['count_kappa_gt_8'\]"):
        run_headline(tmp_path, tables)


def test_a_family_without_a_row_at_the_audit_eps_is_an_error(tmp_path):
    with pytest.raises(HeadlineInputError, match="rho_per_family: expected one row for family llama at eps 0.2"):
        run_headline(tmp_path, planted_tables(), audit_eps=0.2)

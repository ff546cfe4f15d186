"""Limits tables and the generated limits section: every statement follows from the numbers and the thresholds."""

import numpy as np
import pandas as pd
import pytest

from rankaudit import io
from rankaudit.stages import limits

THRESHOLDS = limits.ClaimThresholds()


def _family_frames(family, safety, concepts, references, settings):
    records = limits.layer_limit_records(safety, concepts, references, settings, where=family)
    for rows in records.values():
        for row in rows:
            row.update(family=family, layer=0)
            row.setdefault("model", row.get("model_role"))
    return records


def _frames(*families):
    merged = {kind: [] for kind in limits.RECORD_KINDS}
    for records in families:
        for kind, rows in records.items():
            merged[kind] += rows
    return {kind: pd.DataFrame(rows) for kind, rows in merged.items()}


@pytest.fixture(scope="module")
def two_families():
    """'noise': a pure Gaussian shift (at the noise ceiling); 'lowrank': a planted rank-3 shift (far below it)."""
    rng = np.random.default_rng(0)
    settings = limits.LimitsSettings(eps=(0.05, 0.2), headline_eps=0.05, split_half_k=(1, 3), n_sweep=(20, 40, 60))
    n, d = 60, 400
    noise = rng.standard_normal((n, d))
    left, _ = np.linalg.qr(rng.standard_normal((n, 3)))
    right, _ = np.linalg.qr(rng.standard_normal((d, 3)))
    lowrank = (left * [30.0, 20.0, 10.0]) @ right.T + 0.01 * rng.standard_normal((n, d))
    concepts = {("pairs", "base", "chat"): rng.standard_normal((30, d))}
    frames = _frames(
        _family_frames("noise", noise, concepts, {"u": rng.standard_normal((n, d))}, settings),
        _family_frames("lowrank", lowrank, concepts, {}, settings),
    )
    return limits.limits_tables(frames, 0.05)


def _section_lines(text, family):
    block = text.split(f"### {family}\n", 1)[1].split("\n### ", 1)[0]
    return [line for line in block.splitlines() if line.startswith("- ")]


@pytest.mark.parametrize("ratio", [0.2, 0.79, 0.8, 0.95, 1.3])
def test_noise_ceiling_claim_exactly_when_the_ratio_reaches_the_threshold(ratio):
    row = {"centered": False, "rho": 0.01 * ratio, "rank_mean": 5.0, "n": 50, "d": 100, "noise_rho": 0.01,
           "rho_over_noise": ratio}
    text = limits.noise_ceiling_claim(row, THRESHOLDS)
    assert ("within the noise ceiling" in text) == (ratio >= 0.8)
    assert ("below the noise ceiling" in text) == (ratio < 0.8)


def test_section_says_within_the_noise_ceiling_exactly_when_the_table_does(two_families):
    text = limits.limits_section(two_families, 0.05, THRESHOLDS)
    eps_table = two_families["limits_eps_sensitivity"]
    for family in ("noise", "lowrank"):
        lines = [line for line in _section_lines(text, family) if line.startswith("- Noise ceiling")]
        for centered in (False, True):
            row = eps_table[(eps_table["family"] == family) & (eps_table["centered"] == centered) & (eps_table["eps"] == 0.05)]
            label = "centered" if centered else "uncentered"
            (line,) = [line for line in lines if line.startswith(f"- Noise ceiling: {label} ")]
            assert ("within the noise ceiling" in line) == bool(row["rho_over_noise"].item() >= 0.8)
    uncentered = eps_table[(~eps_table["centered"]) & (eps_table["eps"] == 0.05)].set_index("family")["rho_over_noise"]
    assert uncentered["noise"] >= 0.95 and uncentered["lowrank"] < 0.1
    assert text.count("within the noise ceiling") == int((eps_table[eps_table["eps"] == 0.05]["rho_over_noise"] >= 0.8).sum())


def test_section_reports_missing_references_and_the_kappa_verdict(two_families):
    text = limits.limits_section(two_families, 0.05, THRESHOLDS)
    assert any("no unsafe reference is configured" in line for line in _section_lines(text, "lowrank"))
    (kappa_line,) = [line for line in _section_lines(text, "noise") if line.startswith("- Spectral gap")]
    row = two_families["limits_kappa_per_reference"].iloc[0]
    assert row["count_kappa_gt_8"] == 0 and "certifies nothing here" in kappa_line
    assert f"0 of {int(row['layers'])} layers" in kappa_line


def test_kappa_per_reference_counts_and_medians():
    pairs = pd.DataFrame({
        "family": ["f"] * 5, "reference": ["u", "u", "u", "v", "v"], "layer": [0, 1, 2, 0, 1], "eps": [0.05] * 5,
        "n": [10] * 5, "d": [20] * 5, "r": [1, 6, 2, 1, 1], "kappa": [12.0, 0.5, 3.0, 9.0, 1.0],
        "kappa_gt_8": [True, False, False, True, False], "kappa_bound": [40.0, 20 / 3, 20.0, 40.0, 40.0],
        "bound_holds": [True] * 5, "gamma": [1.0, 0.5, 0.2, 1.0, 1.0], "residual_budget_relative": [0.1] * 5,
        "per_mode_budget_ratio": [0.3, 0.2, 0.1, 0.5, 0.4], "eps_r": [0.05, 0.3, 0.1, 0.05, 0.05],
        "certified_max_rank": [1, 0, 1, 1, 0],
    })
    table = limits.kappa_per_reference_table(pd.concat([pairs, pairs.assign(eps=0.2, kappa_gt_8=False)]), 0.05).set_index("reference")
    assert table.loc["u", "layers"] == 3 and table.loc["u", "count_kappa_gt_8"] == 1 and table.loc["u", "count_kappa_gt_2"] == 2
    assert table.loc["u", "kappa_median"] == 3.0 and table.loc["u", "kappa_max"] == 12.0
    assert table.loc["u", "layers_kappa_gt_8"] == "0" and table.loc["u", "layers_eps_r_ge_quarter"] == 1
    assert table.loc["v", "count_kappa_gt_8"] == 1 and table.loc["v", "gamma_median"] == 1.0
    assert table["bound_holds_all"].all()
    text = limits.kappa_claim(table.reset_index().set_index("reference").loc["u"].to_dict() | {"reference": "u"})
    assert "only at layer(s) 0" in text and "at most rank 1, which is trivial" in text


def test_tables_refuse_a_violated_bound():
    frames = {kind: pd.DataFrame() for kind in limits.RECORD_KINDS}
    frames["spectral_gap"] = pd.DataFrame({"family": ["f"], "reference": ["u"], "layer": [4], "eps": [0.05], "bound_holds": [False]})
    with pytest.raises(limits.StructuralBoundError, match="'layer': 4"):
        limits.limits_tables(frames, 0.05)


def _lrh_rows(concept_rank, safety_rank):
    return pd.DataFrame({
        "concept": ["c"], "rho_concept": [concept_rank / 100], "rho_safety": [safety_rank / 100],
        "ratio": [concept_rank / safety_rank], "rank_concept_matched": [concept_rank], "rank_safety_matched": [safety_rank],
        "n_matched": [50],
    })


@pytest.mark.parametrize(("concept_rank", "safety_rank", "specific"), [(20, 10, False), (5, 10, False), (100, 10, False), (110, 10, True)])
def test_lrh_claim_uses_the_documented_ratio_threshold(concept_rank, safety_rank, specific):
    text = limits.lrh_claim(_lrh_rows(concept_rank, safety_rank), "c", THRESHOLDS)
    assert f"{concept_rank / safety_rank:.3g} times the safety rho" in text
    assert ("not safety-specific" in text) == (not specific)
    assert ("distinctly lower-rank" in text) == specific


def test_n_sweep_claim_compares_growth_with_noise():
    rows = pd.DataFrame({"n": [50, 100], "rank_mean": [10.0, 19.0], "noise_rho": [0.045, 0.09], "d": [1000, 1000]})
    assert "n-limited" in limits.n_sweep_claim(rows, THRESHOLDS)
    flat = rows.assign(rank_mean=[10.0, 11.0])
    assert "levelled off" in limits.n_sweep_claim(flat, THRESHOLDS)
    assert "cannot be measured" in limits.n_sweep_claim(rows.iloc[:1], THRESHOLDS)


def test_resampling_claim_names_unstable_layers():
    rows = pd.DataFrame({"layer": [1, 2], "n": [100, 100], "n_subsample": [80, 80], "sub_draws": [50, 50],
                         "rank_full": [20, 20], "sub_rank_mean": [19.0, 15.0], "sub_rank_q05": [18.0, 10.0],
                         "sub_rank_q95": [21.0, 20.0]})
    text = limits.resampling_claim(rows, THRESHOLDS)
    assert "at 1 of 2 layers" in text and "not stable under resampling at layers 2" in text
    assert "the rank is stable" in limits.resampling_claim(rows.iloc[:1], THRESHOLDS)


def test_write_limits_tables_writes_every_table_and_the_section(tmp_path):
    paths = []
    rng = np.random.default_rng(1)
    settings = limits.LimitsSettings(eps=(0.05,), headline_eps=0.05, split_half_k=(1,))
    for layer in (0, 1):
        records = limits.layer_limit_records(rng.standard_normal((40, 100)), {}, {"u": rng.standard_normal((40, 100))},
                                             settings, where="f")
        for rows in records.values():
            for row in rows:
                row.update(family="f", layer=layer)
        path = tmp_path / f"layer_{layer}.json"
        io.write_json(path, {"records": records})
        paths.append(str(path))
    tables = limits.write_limits_tables(paths, str(tmp_path / "tables"), str(tmp_path / "tables" / "limits_section.md"), 0.05, {})
    for name in tables:
        for suffix in ("parquet", "csv", "md"):
            assert (tmp_path / "tables" / f"{name}.{suffix}").exists()
    section = (tmp_path / "tables" / "limits_section.md").read_text()
    assert "### f" in section and "no concept sets are configured" in section
    assert tables["limits_kappa_per_reference"]["layers"].item() == 2

"""Limits tables and the generated limits section: every statement follows from the numbers and the thresholds, and
layer 0 (the embedding output) and zero or rank <= 1 layers stay in per-layer tables but out of every aggregate."""

import numpy as np
import pandas as pd
import pytest

from rankaudit import io
from rankaudit.limits import claims as limit_claims
from rankaudit.limits import records as limit_records
from rankaudit.limits import tables as limit_tables
from rankaudit.stages import limits

THRESHOLDS = limit_claims.ClaimThresholds.from_config({})


def _family_frames(family, safety, concepts, references, settings, layer=1):
    records = limit_records.layer_limit_records(safety, concepts, references, settings, where=family, layer=layer)
    for rows in records.values():
        for row in rows:
            row["family"] = family
            row.setdefault("model", row.get("model_role"))
    return records


def _frames(*families):
    merged = {kind: [] for kind in limit_records.RECORD_KINDS}
    for records in families:
        for kind, rows in records.items():
            merged[kind] += rows
    return {kind: pd.DataFrame(rows) for kind, rows in merged.items()}


@pytest.fixture(scope="module")
def two_families():
    """'noise': a pure Gaussian shift (at the noise ceiling); 'lowrank': a planted rank-3 shift (far below it)."""
    rng = np.random.default_rng(0)
    settings = limit_records.LimitsSettings.from_config({"eps": (0.05, 0.2), "headline_eps": 0.05, "split_half_k": (1, 3), "n_sweep": (20, 40, 60)})
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
    return limit_tables.limits_tables(frames, 0.05)


def _section_lines(text, family):
    block = text.split(f"### {family}\n", 1)[1].split("\n### ", 1)[0]
    return [line for line in block.splitlines() if line.startswith("- ")]


def test_section_says_within_the_noise_ceiling_exactly_when_the_table_does(two_families):
    text = limit_claims.limits_section(two_families, 0.05, THRESHOLDS)
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
    text = limit_claims.limits_section(two_families, 0.05, THRESHOLDS)
    assert any("no unsafe reference is configured" in line for line in _section_lines(text, "lowrank"))
    (kappa_line,) = [line for line in _section_lines(text, "noise") if line.startswith("- Spectral gap")]
    row = two_families["limits_kappa_per_reference"].iloc[0]
    assert row["count_kappa_gt_8"] == 0 and "kappa > 8) holds at no counted layer, so it certifies nothing here" in kappa_line
    assert f"over {int(row['layers'])} counted layers" in kappa_line and "cannot close the uniform lower bound" in kappa_line


def test_tables_refuse_a_violated_bound():
    frames = {kind: pd.DataFrame() for kind in limit_records.RECORD_KINDS}
    frames["spectral_gap"] = pd.DataFrame({"family": ["f"], "reference": ["u"], "layer": [4], "eps": [0.05], "bound_holds": [False]})
    with pytest.raises(limit_records.StructuralBoundError, match="'layer': 4"):
        limit_tables.limits_tables(frames, 0.05)


def _layer_file(tmp_path, layer, safety, references, settings):
    records = limit_records.layer_limit_records(safety, {}, references, settings, where="f", layer=layer)
    for rows in records.values():
        for row in rows:
            row["family"] = "f"
    path = tmp_path / f"layer_{layer}.json"
    io.write_json(path, {"records": records})
    return str(path)


def test_layer_zero_and_zero_layers_stay_per_layer_but_leave_every_aggregate(tmp_path):
    """Layer 0 (identical rows, as at the embedding output) and a zero layer are listed, never averaged or counted."""
    rng = np.random.default_rng(1)
    settings = limit_records.LimitsSettings.from_config({"eps": (0.05,), "headline_eps": 0.05, "split_half_k": (1,), "n_sweep": (20, 40)})
    n, d = 40, 100
    repeated = np.tile(rng.standard_normal(d), (n, 1))  # one template token's shift for every prompt: rank 1
    unsafe = rng.standard_normal((n, d))
    # at layer 0 kappa > 8 (S = repeated row - noise is dominated by one mode); it must not be counted
    paths = [
        _layer_file(tmp_path, 0, 30.0 * repeated, {"u": unsafe}, settings),
        _layer_file(tmp_path, 1, np.zeros((n, d)), {"u": unsafe}, settings),
        _layer_file(tmp_path, 2, rng.standard_normal((n, d)), {"u": rng.standard_normal((n, d))}, settings),
        _layer_file(tmp_path, 3, rng.standard_normal((n, d)), {"u": rng.standard_normal((n, d))}, settings),
    ]
    tables = limits.write_limits_tables(paths, str(tmp_path / "tables"), str(tmp_path / "tables" / "limits_section.md"), 0.05, {})
    for name in tables:
        for suffix in ("parquet", "csv", "md"):
            assert (tmp_path / "tables" / f"{name}.{suffix}").exists()
    per_layer = tables["limits_rank_resampling"]
    assert sorted(per_layer["layer"].unique()) == [0, 1, 2, 3]
    status = per_layer.drop_duplicates("layer").set_index("layer")["layer_status"]
    assert status[0] == "embedding output" and status[1] == "zero" and status[2] == status[3] == "ok"
    pairs = tables["limits_kappa_pairs"]
    assert pairs.loc[pairs["layer"] == 0, "kappa_gt_8"].item()  # present per layer ...
    kappa = tables["limits_kappa_per_reference"].iloc[0]
    assert kappa["layers"] == 2 and kappa["count_kappa_gt_8"] == 0  # ... but not counted
    assert kappa["layers_left_out"] == "0 (embedding output); 1 (zero)"
    eps_table = tables["limits_eps_sensitivity"]
    uncentered = eps_table[~eps_table["centered"]].iloc[0]
    counted = per_layer[(~per_layer["centered"]) & per_layer["layer"].isin([2, 3])]
    assert uncentered["layers"] == 2 and uncentered["rank_mean"] == counted["rank_full"].mean()
    assert set(tables["limits_n_sweep"]["layers"]) == {2}
    section = (tmp_path / "tables" / "limits_section.md").read_text()
    assert "### f" in section and "no concept sets are configured" in section
    assert "Layers: 2 of 4 counted; left out of every mean, median and count below" in section
    assert "0 (embedding output); 1 (zero)" in section
    assert "only at layer(s) 0" not in section and "(0)" not in section and "at 2 of 2 layers" in section


def test_a_family_with_no_counted_layer_makes_no_claim(tmp_path):
    settings = limit_records.LimitsSettings.from_config({"eps": (0.05,), "headline_eps": 0.05, "split_half_k": (1,)})
    paths = [_layer_file(tmp_path, layer, np.zeros((30, 50)), {}, settings) for layer in (0, 1)]
    tables = limits.write_limits_tables(paths, str(tmp_path / "t"), str(tmp_path / "t" / "section.md"), 0.05, {})
    assert tables["limits_eps_sensitivity"].empty and len(tables["limits_rank_resampling"]) == 4
    section = (tmp_path / "t" / "section.md").read_text()
    assert "Layers: 0 of 2 counted" in section and "no claim is made for this family" in section
    assert "Noise ceiling" not in section


def test_kappa_per_reference_counts_only_counted_layers_and_flags_trivial_certificates():
    pairs = pd.DataFrame({
        "family": ["f"] * 6, "reference": ["u", "u", "u", "u", "v", "v"], "layer": [0, 1, 2, 3, 1, 2], "eps": [0.05] * 6,
        "n": [10] * 6, "d": [20] * 6, "r": [1, 6, 2, 0, 4, 1], "kappa": [40.0, 0.5, 9.0, np.nan, 9.5, 1.0],
        "kappa_gt_8": [True, False, True, False, True, False], "kappa_bound": [40.0, 20 / 3, 20.0, np.inf, 10.0, 40.0],
        "bound_holds": [True] * 6, "gamma": [1.0, 0.5, 0.2, 0.0, 1.0, 1.0], "residual_budget_relative": [0.1, 0.05, 0.04, 0.0, 0.1, 0.1],
        "uniform_residual_relative": [0.05 ** 0.5 * 2 ** 0.5] * 6,
        "per_mode_budget_ratio": [0.3, 0.2, 0.1, np.nan, 0.5, 0.4], "eps_r": [0.05, 0.3, 0.1, 0.0, 0.2, 0.05],
        "certified_max_rank": [1, 0, 1, 0, 2, 0],
        "layer_status": ["embedding output", "ok", "ok", "ok", "ok", "ok"], "counted": [False, True, True, True, True, True],
    })
    table = limit_tables.kappa_per_reference_table(pd.concat([pairs, pairs.assign(eps=0.2, kappa_gt_8=False)]), 0.05).set_index("reference")
    u, v = table.loc["u"], table.loc["v"]
    assert u["layers"] == 3 and u["layers_left_out"] == "0 (embedding output)" and v["layers_left_out"] == "0 (embedding output)"
    assert u["count_kappa_gt_8"] == 1 and u["count_kappa_gt_8_trivial"] == 1 and u["layers_kappa_gt_8"] == "2"
    assert u["layers_s_zero"] == 1 and u["kappa_median"] == pytest.approx(4.75) and u["kappa_max"] == 9.0
    assert u["residual_budget_relative_max"] == 0.05 and u["layers_eps_r_ge_quarter"] == 1
    assert v["count_kappa_gt_8"] == 1 and v["count_kappa_gt_8_trivial"] == 0 and v["certified_rank_max"] == 2
    assert sorted(table.reset_index().columns) == sorted(limit_tables.KAPPA_REFERENCE_COLUMNS)
    u_text = limit_claims.kappa_claim(u.to_dict() | {"reference": "u"})
    assert "a certificate of rank <= 1, not evidence" in u_text and "S = 0 (kappa undefined) at 1 layer(s)" in u_text
    v_text = limit_claims.kappa_claim(v.to_dict() | {"reference": "v"})
    assert "at 1 of them r >= 3" in v_text and "at most rank 2" in v_text

"""The causal stage's tables from planted job outputs whose every number is known by construction.

Each builder of `rankaudit.causal.tables` gets a hand-made sweep / Arditi / selection frame and the test
checks the values a reader sees: which rows the baseline and the random band are taken from, the sign of every
drop, the random band's mean / sd / min / max over draws, the Spearman of a planted causal order (worked by hand),
the non-monotone and inert flags, and the note rows of a family with no refusal to ablate.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from rankaudit.causal import tables
from rankaudit.causal.no_refusal import NO_REFUSAL
from rankaudit.stages import causal_report

SETTINGS = {"headline_band": "narrow", "headline_k": 3, "effect_metric": "score", "bootstrap": 200, "seed": 0,
            "monotone_tolerance": 0.1, "inert_tolerance": 0.1}
BASELINE_RATE, BASELINE_SCORE = 0.9, 4.0
# cumulative narrow curve: falls to k = 3, then rises by 0.15 (> monotone_tolerance 0.1) at k = 5
CUMULATIVE = {("narrow", 1): (0.6, 1.0), ("narrow", 3): (0.2, -2.0), ("narrow", 5): (0.35, -1.0), ("wide", 3): (0.5, 0.5)}
# random draws per (band, k): refusal rates and scores
RANDOM = {("narrow", 1): ([0.9, 0.8, 0.85], [3.9, 3.7, 3.8]), ("narrow", 3): ([0.7, 0.9, 0.8], [3.0, 3.6, 3.3]),
          ("narrow", 5): ([0.6, 0.6, 0.9], [2.0, 2.0, 2.9]), ("wide", 3): ([0.4, 0.5, 0.6], [1.0, 2.0, 3.0])}
# per-direction ablation of u1..u3 (narrow band): u3 changes nothing
SINGLE = {1: (0.6, 1.0), 2: (0.85, 3.5), 3: (0.9, 4.0)}


def _row(kind, band="none", k=0, direction=-1, draw=-1, rate=math.nan, score=math.nan, judged=True, **extra):
    return {"family": "f", "basis": "did", "band": band, "kind": kind, "k": k, "direction": direction, "draw": draw,
            "judged": judged, "refusal_rate": rate, "refusal_low": rate - 0.05, "refusal_high": rate + 0.05,
            "score_mean": score, "control_kl_mean": 0.01 * k, "degenerate_harmful_rate": 0.0, **extra}


def planted_sweep(random_judged=True) -> pd.DataFrame:
    rows = [_row("baseline", rate=BASELINE_RATE, score=BASELINE_SCORE)]
    rows += [_row("cumulative", band, k, rate=rate, score=score) for (band, k), (rate, score) in CUMULATIVE.items()]
    rows += [_row("single", "narrow", 1, direction=j, rate=rate, score=score) for j, (rate, score) in SINGLE.items()]
    for (band, k), (rates, scores) in RANDOM.items():
        rows += [_row("random", band, k, draw=i, rate=rate if random_judged else math.nan, score=score, judged=random_judged)
                 for i, (rate, score) in enumerate(zip(rates, scores))]
    return pd.DataFrame(rows)


def test_k_sweep_puts_the_baseline_and_the_random_band_of_the_same_band_and_k_beside_each_principal_row():
    table = tables.k_sweep_table(planted_sweep()).set_index(["band", "k"])
    assert sorted(table.index) == sorted(CUMULATIVE)  # one row per cumulative point, none for random or single
    for (band, k), (rate, score) in CUMULATIVE.items():
        row = table.loc[(band, k)]
        rates, scores = RANDOM[(band, k)]
        assert (row["refusal_rate"], row["score_mean"]) == (rate, score)
        assert (row["baseline_rate"], row["baseline_score"]) == (BASELINE_RATE, BASELINE_SCORE)
        assert row["random_draws"] == 3
        assert row["random_rate_mean"] == pytest.approx(sum(rates) / 3)
        assert row["random_rate_sd"] == pytest.approx(math.sqrt(sum((r - sum(rates) / 3) ** 2 for r in rates) / 2))
        assert (row["random_rate_min"], row["random_rate_max"]) == (min(rates), max(rates))
        assert row["random_score_mean"] == pytest.approx(sum(scores) / 3)
        assert (row["random_score_min"], row["random_score_max"]) == (min(scores), max(scores))
    # hand values at the headline point: rates 0.7, 0.9, 0.8 -> mean 0.8, sd 0.1; scores 3.0, 3.6, 3.3 -> sd 0.3
    assert table.loc[("narrow", 3), "random_rate_sd"] == pytest.approx(0.1)
    assert table.loc[("narrow", 3), "random_score_sd"] == pytest.approx(0.3)


def test_random_draws_without_generations_give_a_score_band_and_no_rate_band():
    table = tables.k_sweep_table(planted_sweep(random_judged=False))
    assert not any(column.startswith("random_rate") for column in table)
    narrow3 = table[(table["band"] == "narrow") & (table["k"] == 3)].iloc[0]
    assert narrow3["random_score_mean"] == pytest.approx(3.3) and narrow3["random_draws"] == 3
    # one unjudged draw among judged ones is enough to withhold the rate band (a rate of some draws is no band)
    mixed = planted_sweep()
    mixed.loc[mixed.index[-1], ["judged", "refusal_rate"]] = [False, math.nan]
    assert not any(column.startswith("random_rate") for column in tables.k_sweep_table(mixed))


def test_k3_table_is_the_headline_band_and_k_only_with_principal_and_random_side_by_side():
    k3 = tables.k3_table(planted_sweep(), "narrow", 3)
    assert len(k3) == 1
    row = k3.iloc[0]
    assert (row["baseline_rate"], row["principal_rate"], row["principal_low"], row["principal_high"]) == pytest.approx(
        (0.9, 0.2, 0.15, 0.25))
    assert (row["baseline_score"], row["principal_score"]) == (4.0, -2.0)
    assert (row["random_rate_mean"], row["random_rate_sd"], row["random_score_mean"]) == pytest.approx((0.8, 0.1, 3.3))
    assert row["random_draws"] == 3 and row["control_kl_mean"] == pytest.approx(0.03)
    wide = tables.k3_table(planted_sweep(), "wide", 3).iloc[0]
    assert (wide["principal_rate"], wide["random_rate_mean"], wide["random_score_sd"]) == pytest.approx((0.5, 0.5, 1.0))
    assert tables.k3_table(planted_sweep(), "narrow", 7).empty


def test_per_direction_drops_are_baseline_minus_ablated():
    table = tables.per_direction_table(planted_sweep()).set_index("direction")
    assert list(table.index) == [1, 2, 3]
    np.testing.assert_allclose(table["rate_drop"], [0.3, 0.05, 0.0], atol=1e-12)  # 0.9 - (0.6, 0.85, 0.9)
    np.testing.assert_allclose(table["score_drop"], [3.0, 0.5, 0.0], atol=1e-12)  # 4.0 - (1.0, 3.5, 4.0)
    assert (table["refusal_rate"].to_list(), table["score_mean"].to_list()) == ([0.6, 0.85, 0.9], [1.0, 3.5, 4.0])


def planted_prompts(mean_effects, *, n_prompts=4, band="narrow") -> pd.DataFrame:
    """Per-prompt scores: a different baseline per prompt, u_j lowering every prompt by exactly mean_effects[j].

    Rows are shuffled, and control prompts with wild scores are mixed in: the table must align prompts by id and
    read harmful prompts only.
    """
    base = [5.0, 3.0, 4.5, 2.0][:n_prompts]
    rows = [{"family": "f", "basis": "did", "band": "none", "kind": "baseline", "direction": -1, "dataset": dataset,
             "prompt": p, "score": value if dataset == "harmful" else -100.0, "refused": True}
            for p, value in enumerate(base) for dataset in ("harmful", "control")]
    rows += [{"family": "f", "basis": "did", "band": band, "kind": "single", "direction": j + 1, "dataset": dataset,
              "prompt": p, "score": value - effect if dataset == "harmful" else 100.0, "refused": effect < 1.0}
             for j, effect in enumerate(mean_effects) for p, value in enumerate(base) for dataset in ("harmful", "control")]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=3).reset_index(drop=True)


def test_ordering_spearman_of_a_planted_order_matches_the_hand_value_with_a_degenerate_bootstrap():
    # mean effects (u1, u2, u3) = (2, 3, 1): causal ranks 2, 1, 3 against SVD ranks 1, 2, 3, so
    # d = (1, -1, 0) and rho = 1 - 6 * 2 / (3 * (9 - 1)) = 0.5. Every prompt has the same effects, so every
    # bootstrap resample has the same rho: the interval is the point (a misaligned prompt join would widen it).
    table = tables.ordering_table(planted_sweep(), planted_prompts([2.0, 3.0, 1.0]), SETTINGS)
    (row,) = table.to_dict("records")
    assert (row["family"], row["basis"], row["band"], row["effect_metric"]) == ("f", "did", "narrow", "score")
    assert row["spearman"] == pytest.approx(0.5)
    assert row["ci_low"] == pytest.approx(0.5) and row["ci_high"] == pytest.approx(0.5) and row["boot_finite"] == 200
    assert row["causal_order"] == "u2 u1 u3" and row["effects"] == "2 3 1"
    assert row["inert"] == ""
    # the narrow cumulative curve: 0.6 -> 0.2 -> 0.35, a rise of 0.15 above the 0.1 tolerance between k3 and k5
    assert row["non_monotone"] and row["max_rise"] == pytest.approx(0.15) and row["rises"] == "k3->k5: +0.150"


def test_ordering_flags_inert_directions_and_a_reversed_order():
    table = tables.ordering_table(planted_sweep(), planted_prompts([0.0, 1.0, 6.0]), SETTINGS)
    (row,) = table.to_dict("records")
    assert row["spearman"] == pytest.approx(-1.0) and row["causal_order"] == "u3 u2 u1"
    # inert: |effect| <= 0.1 * max |effect| = 0.6, so u1 (0) only; u2 (1.0) is not
    assert row["inert"] == "u1"
    monotone = planted_sweep()
    monotone.loc[(monotone["kind"] == "cumulative") & (monotone["k"] == 5), "refusal_rate"] = 0.25  # rise 0.05 <= 0.1
    (row,) = tables.ordering_table(monotone, planted_prompts([0.0, 1.0, 6.0]), SETTINGS).to_dict("records")
    assert not row["non_monotone"] and row["max_rise"] == pytest.approx(0.05) and row["rises"] == ""


def test_ordering_with_no_effect_at_all_is_nan_and_every_direction_inert_without_dividing_by_zero():
    (row,) = tables.ordering_table(planted_sweep(), planted_prompts([0.0, 0.0, 0.0]), SETTINGS).to_dict("records")
    assert math.isnan(row["spearman"]) and row["boot_finite"] == 0 and math.isnan(row["ci_low"])
    assert row["inert"] == "u1 u2 u3" and row["effects"] == "0 0 0"


def test_ordering_on_judged_refusals_uses_the_refused_column():
    # refused: baseline True everywhere; single u_j refused when its effect < 1 -> u1 (effect 2) and u3 (effect 1.5)
    # stop refusing on every prompt, u2 (effect 0.5) does not: effects (1, 0, 1) -> u2 inert, causal order u1 u3 u2
    settings = {**SETTINGS, "effect_metric": "refused"}
    (row,) = tables.ordering_table(planted_sweep(), planted_prompts([2.0, 0.5, 1.5]), settings).to_dict("records")
    assert row["effect_metric"] == "refused" and row["effects"] == "1 0 1" and row["inert"] == "u2"
    assert row["causal_order"] == "u1 u3 u2"
    # SVD ranks (3, 2, 1) for (u1, u2, u3), effect ranks with ties averaged (2.5, 1, 2.5): centred (1, 0, -1) and
    # (0.5, -1, 0.5) are orthogonal, so rho = 0
    assert row["spearman"] == pytest.approx(0.0, abs=1e-12)


def planted_arditi(with_control_refusal=True) -> pd.DataFrame:
    def row(condition, rate, draw=-1, **extra):
        return {"family": "f", "condition": condition, "draw": draw, "layer": 2, "position": -1, "refusal_rate": rate,
                "refusal_low": rate - 0.1, "refusal_high": rate + 0.05, "control_kl_mean": 0.0,
                "degenerate_harmful_rate": 0.0, "control_score_mean": -5.0, **extra}
    rows = [row("baseline", 0.95, control_score_mean=-6.0),
            row("selected_ablation", 0.1, control_kl_mean=0.3, degenerate_harmful_rate=0.05),
            *(row("random_ablation", rate, draw=i) for i, rate in enumerate([0.9, 0.95, 1.0])),
            row("selected_addition", math.nan, control_score_mean=2.5)]
    frame = pd.DataFrame(rows)
    if with_control_refusal:
        frame["control_refusal_rate"] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.6]
    return frame


def test_arditi_table_reads_each_condition_and_the_random_directions_band():
    (row,) = tables.arditi_table(planted_arditi()).to_dict("records")
    assert (row["family"], row["layer"], row["position"]) == ("f", 2, -1)
    assert (row["baseline_rate"], row["ablated_rate"], row["ablated_low"], row["ablated_high"]) == pytest.approx(
        (0.95, 0.1, 0.0, 0.15))
    assert (row["random_mean"], row["random_sd"], row["random_min"], row["random_draws"]) == pytest.approx((0.95, 0.05, 0.9, 3))
    assert (row["ablated_control_kl"], row["ablated_degenerate_harmful"]) == pytest.approx((0.3, 0.05))
    assert (row["induced_control_refusal"], row["induced_control_score"], row["baseline_control_score"]) == (0.6, 2.5, -6.0)
    (unjudged,) = tables.arditi_table(planted_arditi(with_control_refusal=False)).to_dict("records")
    assert math.isnan(unjudged["induced_control_refusal"]) and unjudged["induced_control_score"] == 2.5


def _selection_record(family="f"):
    return {"family": family, "status": "selected", "validation": {"split": "val", "n_harmful": 20},
            "baseline_refusal": {"refusal_rate": 0.85, "refusal_low": 0.64, "refusal_high": 0.95},
            "refusal_check": {"refusal_tokens": {"pieces": {"40": "I", "790": "Sorry"}}, "coverage_of_refusals": 0.9},
            "prompt_filter": {"enabled": True, "counts": {"train": {"harmful": {"before": 30, "after": 25},
                                                                    "harmless": {"before": 30, "after": 29}},
                                                          "val": {"harmful": {"before": 20, "after": 17},
                                                                  "harmless": {"before": 20, "after": 20}}}},
            "selected": {"layer": 2, "position": -1, "bypass": -3.5, "induce": 1.25, "kl": 0.04},
            "baseline": {"harmful_score": 3.0, "harmless_score": -7.0}, "n_candidates": 12, "n_surviving": 4,
            "layer_limit": 3}


def _no_refusal_record(family="g"):
    return {"family": family, "status": NO_REFUSAL, "note": "no refusal to ablate: 0 of 20 refused",
            "validation": {"split": "val", "n_harmful": 20},
            "baseline_refusal": {"refusal_rate": 0.0, "refusal_low": 0.0, "refusal_high": 0.16},
            "refusal_check": {"refusal_tokens": {"pieces": {"40": "I"}}}, "selected": None}


def test_selection_table_reports_the_choice_the_filter_counts_and_a_no_refusal_family():
    table = tables.selection_table([_selection_record(), _no_refusal_record()]).set_index("family")
    chosen = table.loc["f"]
    assert chosen["status"] == "selected" and chosen["refusal_tokens"] == "I Sorry" and chosen["note"] == ""
    assert (chosen["layer"], chosen["position"], chosen["bypass"], chosen["induce"], chosen["kl"]) == (2, -1, -3.5, 1.25, 0.04)
    assert (chosen["n_candidates"], chosen["n_surviving"], chosen["layer_limit"], chosen["token_coverage"]) == (12, 4, 3, 0.9)
    assert (chosen["baseline_harmful_score"], chosen["baseline_harmless_score"]) == (3.0, -7.0)
    assert (chosen["train_harmful_before"], chosen["train_harmful_after"], chosen["train_harmless_after"]) == (30, 25, 29)
    assert (chosen["scored_harmful_before"], chosen["scored_harmful_after"], chosen["scored_harmless_after"]) == (20, 17, 20)
    assert chosen["harmful_refusal_rate"] == 0.85 and chosen["prompt_filter"]
    none = table.loc["g"]
    assert none["status"] == "no refusal to ablate" and none["note"].startswith("no refusal to ablate")
    assert (none["harmful_refusal_rate"], none["harmful_refusal_high"], none["n_harmful"]) == (0.0, 0.16, 20)
    assert math.isnan(none["layer"]) and math.isnan(none["bypass"])


def test_written_tables_keep_the_planted_numbers_and_one_note_row_for_a_family_with_no_refusal(tmp_path):
    sweep = planted_sweep()
    note = "no refusal to ablate: 0 of 20 refused"
    sweep_notes = pd.DataFrame([{"family": "g", "basis": "did", "band": "none", "kind": NO_REFUSAL, "k": 0, "direction": -1,
                                 "draw": -1, "note": note}])
    paths = {"sweep_f": tmp_path / "sweep_f.parquet", "sweep_g": tmp_path / "sweep_g.parquet",
             "prompts": tmp_path / "prompts.parquet", "arditi_f": tmp_path / "arditi_f.parquet",
             "arditi_g": tmp_path / "arditi_g.parquet"}
    sweep.to_parquet(paths["sweep_f"])
    sweep_notes.to_parquet(paths["sweep_g"])
    planted_prompts([2.0, 3.0, 1.0]).to_parquet(paths["prompts"])
    planted_arditi().to_parquet(paths["arditi_f"])
    pd.DataFrame([{"family": "g", "condition": NO_REFUSAL, "draw": -1, "note": note}]).to_parquet(paths["arditi_g"])
    selections = []
    for record in (_selection_record(), _no_refusal_record()):
        path = tmp_path / f"selection_{record['family']}.json"
        path.write_text(json.dumps(record))
        selections.append(str(path))
    (tmp_path / "tables").mkdir()
    names = ["causal_selection", "causal_arditi", "causal_k3_narrow", "causal_per_direction", "causal_k_sweep", "causal_ordering"]
    causal_report.write_causal_tables(
        sweeps=[str(paths["sweep_f"]), str(paths["sweep_g"])], prompt_files=[str(paths["prompts"])],
        arditi=[str(paths["arditi_f"]), str(paths["arditi_g"])], selections=selections,
        outputs={name: str(tmp_path / "tables" / name) for name in names}, settings=SETTINGS)
    read = {name: pd.read_parquet(tmp_path / "tables" / f"{name}.parquet") for name in names}
    for name in names[1:]:
        notes = read[name][read[name]["family"] == "g"]
        assert list(notes["note"]) == [note], name
    k3 = read["causal_k3_narrow"].set_index("family")
    assert (k3.loc["f", "principal_rate"], k3.loc["f", "random_rate_mean"], k3.loc["f", "note"]) == pytest.approx((0.2, 0.8, ""))
    assert math.isnan(k3.loc["g", "principal_rate"])
    arditi = read["causal_arditi"].set_index("family")
    assert (arditi.loc["f", "ablated_rate"], arditi.loc["f", "random_mean"]) == pytest.approx((0.1, 0.95))
    ordering = read["causal_ordering"].set_index("family")
    assert ordering.loc["f", "spearman"] == pytest.approx(0.5) and bool(ordering.loc["f", "non_monotone"])
    per_direction = read["causal_per_direction"]
    assert per_direction.loc[per_direction["family"] == "f", "rate_drop"].round(12).to_list() == [0.3, 0.05, 0.0]
    assert len(read["causal_k_sweep"]) == len(CUMULATIVE) + 1
    assert list(read["causal_selection"]["status"]) == ["selected", "no refusal to ablate"]

"""Each sentence of the generated limits section, fed numbers on both sides of its threshold."""

import math

import pandas as pd
import pytest

from rankaudit.limits import claims as limit_claims

THRESHOLDS = limit_claims.ClaimThresholds.from_config({})


@pytest.mark.parametrize("ratio", [0.2, 0.79, 0.8, 0.95, 1.3])
def test_noise_ceiling_claim_exactly_when_the_ratio_reaches_the_threshold(ratio):
    row = {"centered": False, "rho": 0.01 * ratio, "rank_mean": 5.0, "n": 50, "d": 100, "noise_rho": 0.01,
           "rho_over_noise": ratio, "layers": 3}
    text = limit_claims.noise_ceiling_claim(row, THRESHOLDS)
    assert ("within the noise ceiling" in text) == (ratio >= 0.8)
    assert ("below the noise ceiling" in text) == (ratio < 0.8)


def test_noise_ceiling_claim_calls_a_zero_matrix_no_evidence():
    row = {"centered": False, "rho": 0.0, "rank_mean": 0.0, "n": 50, "d": 100, "noise_rho": 0.01, "rho_over_noise": 0.0,
           "layers": 1}
    text = limit_claims.noise_ceiling_claim(row, THRESHOLDS)
    assert "the matrix is zero, so rho is not evidence" in text and "below the noise ceiling" not in text


def _sweep(ranks, ns=(50, 100, 200), d=4096):
    return pd.DataFrame({"n": list(ns), "rank_mean": ranks, "noise_rho": [0.9 * n / d for n in ns], "d": [d] * len(ns)})


@pytest.mark.parametrize(("last", "growing"), [(10.0, False), (10.9, False), (11.0, True), (11.5, True), (20.0, True)])
def test_n_sweep_says_still_growing_exactly_when_the_last_doubling_adds_the_material_fraction(last, growing):
    text = limit_claims.n_sweep_claim(_sweep([8.0, 10.0, last]), THRESHOLDS)
    assert ("still growing" in text) == growing
    assert ("levelled off" in text) == (not growing)


def test_n_sweep_growth_slower_than_noise_is_still_growing_and_fast_growth_is_n_limited():
    slow = limit_claims.n_sweep_claim(_sweep([10.0, 12.0, 14.4]), THRESHOLDS)  # +20% per doubling, noise +100%
    assert "still growing, 20% per doubling" in slow and "n-limited from 0.5" in slow and "so it is n-limited" not in slow
    fast = limit_claims.n_sweep_claim(_sweep([10.0, 19.0, 37.0]), THRESHOLDS)
    assert "still growing" in fast and "so it is n-limited" in fast
    custom = limit_claims.n_sweep_claim(_sweep([10.0, 12.0, 14.4]), limit_claims.ClaimThresholds.from_config({"n_growth_material": 0.25}))
    assert "levelled off" in custom


def test_n_sweep_growth_is_per_doubling_of_n():
    assert limit_claims.growth_per_doubling(10.0, 12.1, 100, 400) == pytest.approx(0.1)
    assert limit_claims.growth_per_doubling(0.0, 3.0, 50, 100) == math.inf
    assert math.isnan(limit_claims.growth_per_doubling(0.0, 0.0, 50, 100))
    capped = limit_claims.n_sweep_claim(_sweep([10.0, 10.0], ns=(50, 60)), THRESHOLDS)
    assert "levelled off" in capped
    flat_noise = limit_claims.n_sweep_claim(_sweep([10.0, 10.0], ns=(50, 100), d=40).assign(noise_rho=0.9), THRESHOLDS)
    assert "noise itself does not grow" in flat_noise
    assert "cannot be measured" in limit_claims.n_sweep_claim(_sweep([10.0], ns=(50,)), THRESHOLDS)
    assert "not evidence" in limit_claims.n_sweep_claim(_sweep([0.0, 0.0], ns=(50, 100)), THRESHOLDS)


def _lrh_rows(concept_rank, safety_rank):
    return pd.DataFrame({
        "concept": ["c"], "rho_concept": [concept_rank / 100], "rho_safety": [safety_rank / 100],
        "ratio": [concept_rank / safety_rank if safety_rank else math.nan], "rank_concept_matched": [concept_rank],
        "rank_safety_matched": [safety_rank], "n_matched": [50],
    })


@pytest.mark.parametrize(("concept_rank", "safety_rank", "verdict"), [
    (110, 10, "much larger"), (100, 10, "comparable"), (25, 10, "comparable"), (5, 10, "comparable"),
    (1, 10, "comparable"), (9, 100, "much smaller"),
])
def test_lrh_claim_is_two_sided_and_quotes_the_papers_reading(concept_rank, safety_rank, verdict):
    text = limit_claims.lrh_claim(_lrh_rows(concept_rank, safety_rank), "c", THRESHOLDS)
    assert f"{concept_rank / safety_rank:.3g} times the safety rho" in text
    assert f"concept rho is {verdict}" in text
    verdict_sentence, reading = text.split(" Threshold: ")
    assert ("not safety-specific" in verdict_sentence) == (verdict == "comparable")
    assert reading == ("much larger or much smaller beyond a factor 10 either way at matched n; the paper reads concept "
                       "rho 2-3x the safety rho as not safety-specific.")


def test_lrh_claim_with_zero_safety_rank_is_undefined():
    text = limit_claims.lrh_claim(_lrh_rows(20, 0), "c", THRESHOLDS)
    assert "ratio is undefined and not evidence" in text and "comparable" not in text


def _resampling_rows(pred, raw=((18.0, 19.0), (18.0, 19.0))):
    return pd.DataFrame({
        "layer": [1, 2], "n": [100, 100], "n_subsample": [80, 80], "sub_draws": [50, 50], "rank_full": [20, 20],
        "sub_rank_mean": [18.5, 18.5], "interval_level": [0.9, 0.9], "raw_low": [r[0] for r in raw],
        "raw_high": [r[1] for r in raw], "pred_low": [p[0] for p in pred], "pred_high": [p[1] for p in pred],
    })


def test_resampling_stability_is_judged_on_the_corrected_interval_not_the_raw_range():
    # width 5 = 0.25 x 20 is stable, width 6 is not; the raw range (width 1) would call both stable
    text = limit_claims.resampling_claim(_resampling_rows([(18, 23), (17, 23)]), THRESHOLDS)
    assert "at 1 of 2 layers" in text and "not stable under resampling at layers 2" in text
    assert "widest at layer 2: rank 20, raw [18, 19], corrected [17, 23]" in text
    stable = limit_claims.resampling_claim(_resampling_rows([(18, 23), (19, 21)]), THRESHOLDS)
    assert "at 2 of 2 layers" in stable and "the rank is stable under resampling" in stable


def _kappa_row(**overrides):
    row = {"reference": "u", "layers": 10, "kappa_median": 0.5, "kappa_max": 1.0, "layers_eps_r_ge_quarter": 6,
           "layers_s_zero": 0, "count_kappa_gt_8": 0, "count_kappa_gt_8_trivial": 0, "layers_kappa_gt_8": "none",
           "count_kappa_gt_2": 0, "count_kappa_gt_2_trivial": 0, "layers_kappa_gt_2": "none", "certified_rank_max": 0,
           "bound_holds_all": True, "gamma_median": 1.0, "residual_budget_relative_median": 0.1,
           "residual_budget_relative_max": 0.14, "uniform_residual_relative": math.sqrt(0.1)}
    return row | overrides


def test_kappa_claim_certificates_none_trivial_and_real():
    none = limit_claims.kappa_claim(_kappa_row())
    assert "the Mirsky route (kappa > 8) holds at no counted layer, so it certifies nothing here" in none
    trivial = limit_claims.kappa_claim(_kappa_row(count_kappa_gt_8=1, count_kappa_gt_8_trivial=1, layers_kappa_gt_8="7",
                                                   count_kappa_gt_2=1, count_kappa_gt_2_trivial=1, layers_kappa_gt_2="7",
                                                   certified_rank_max=1))
    assert "holds at 1 counted layer(s) (7), but only where r <= 2" in trivial
    assert trivial.count("a certificate of rank <= 1, not evidence") == 2 and "only there the Mirsky route applies" not in trivial
    real = limit_claims.kappa_claim(_kappa_row(count_kappa_gt_8=2, count_kappa_gt_8_trivial=1, layers_kappa_gt_8="3, 7",
                                                certified_rank_max=3))
    assert "at 1 of them r >= 3 and it certifies" in real and "at most rank 3" in real


@pytest.mark.parametrize(("budget", "closes"), [(0.14, False), (0.3162, False), (math.sqrt(0.1), True)])
def test_kappa_claim_tail_route_cannot_close_the_uniform_bound_below_sqrt_2eps(budget, closes):
    text = limit_claims.kappa_claim(_kappa_row(residual_budget_relative_max=budget))
    assert ("always below sqrt(2 eps) = 0.316" in text) == (not closes)
    assert ("like the Mirsky route, it cannot close the uniform lower bound" in text) == (not closes)
    assert ("reaches sqrt(2 eps)" in text) == closes


def test_excluded_layers_claim_names_each_left_out_layer_once():
    statuses = pd.DataFrame({"layer": [0, 1, 2, 3, 4], "layer_status": ["embedding output", "zero", "zero", "ok", "ok"],
                             "counted": [False, False, False, True, True]})
    text = limit_claims.excluded_layers_claim(statuses)
    assert text.startswith("Layers: 2 of 5 counted") and "0 (embedding output); 1, 2 (zero)" in text
    assert limit_claims.excluded_layers_claim(statuses.iloc[3:]) == "Layers: 2 of 2 counted; none left out."


def test_thresholds_from_config():
    custom = limit_claims.ClaimThresholds.from_config({"paper_lrh_ratio": [1.9, 2.7], "n_growth_material": 0.2})
    assert custom.paper_lrh_ratio == (1.9, 2.7) and custom.n_growth_material == 0.2
    with pytest.raises(ValueError, match="limits.claims: unknown keys"):
        limit_claims.ClaimThresholds.from_config({"typo": 1})


def _floor_rows(flags: dict[int, bool], fractions: dict[int, float]) -> pd.DataFrame:
    return pd.DataFrame([
        {"family": "fam", "variant": "template", "dataset": "safety", "centered": False, "layer": layer, "eps": eps,
         "prompts": 16, "run_dtype": "bfloat16", "floor_fraction": fractions[layer],
         "within_precision_floor": flags[layer] and eps == 0.05}
        for layer in flags for eps in (0.05, 0.2)
    ])


def test_precision_claim_names_the_layers_whose_rank_is_within_the_floor():
    floor = _floor_rows({0: True, 1: False, 2: True, 3: False}, {0: 0.9, 1: 0.001, 2: 0.08, 3: 0.002})
    text = limit_claims.precision_claim(floor, counted_layers=[1, 2, 3], headline_eps=0.05)
    assert "bfloat16 run; the first 16 prompts" in text
    assert "0.1%-8% of its shift energy over 3 counted layers" in text
    assert "within the floor at 1 of 3 counted layer(s) (2)" in text and "not evidence" in text
    calm = limit_claims.precision_claim(floor, counted_layers=[1, 3], headline_eps=0.05)
    assert calm.endswith("no counted layer's rank is within it.")
    coarse = floor.assign(within_precision_floor=floor["layer"].eq(3) & floor["eps"].eq(0.2))
    assert limit_claims.precision_claim(coarse, counted_layers=[1, 3], headline_eps=0.05).endswith(
        "no counted layer's rank is within it (within the floor at other eps: eps = 0.2: 1 layer(s)).")
    assert limit_claims.precision_claim(floor, counted_layers=[7], headline_eps=0.05) is None


def test_a_shrinking_rank_is_not_said_to_grow():
    text = limit_claims.n_sweep_claim(_sweep([10.0, 10.0, 9.0]), THRESHOLDS)
    assert "does not grow (it changes by -10% per doubling" in text and "levelled off" in text
    assert "grows only" not in text

"""The generated limits section: each statement compares a limits-table value with a documented threshold.

Thresholds come from config `limits.claims` (`ClaimThresholds`; defaults and meanings in
config/schema/limits.schema.yaml). Every claim function takes the aggregated rows of one family and returns one
sentence that states the numbers, the threshold and the verdict; tests feed each one numbers on both sides of its
threshold. Layers that `rankaudit.limits.records.shift_status` marks as not counted (layer 0, the embedding output,
and layers where M_template, uncentered or centered, is zero or of rank <= 1) are already out of the aggregated tables; the section
names them once per family. A zero matrix, a certificate of rank <= 1 or an undefined ratio is said to be one,
never reported as a number that supports a claim.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from rankaudit.config_schema import with_defaults

KAPPA_THRESHOLD = 8.0
CENTERINGS = (False, True)


@dataclass(frozen=True)
class ClaimThresholds:
    """When a statement of the limits section is made (config `limits.claims`; defaults and meanings in the schema)."""

    noise_ceiling_fraction: float
    lrh_specific_ratio: float
    paper_lrh_ratio: tuple[float, float]
    rank_spread_fraction: float
    split_half_angle_deg: float
    n_limited_fraction: float
    n_growth_material: float

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> ClaimThresholds:
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(section) - names)
        if unknown:
            raise ValueError(f"limits.claims: unknown keys {unknown}; known: {sorted(names)}")
        return cls(**with_defaults(section, "limits", "claims"))


def _number(value: float) -> str:
    """Three significant digits, or "n/a" for a missing or undefined value."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def _layers(values: Sequence[Any]) -> str:
    return ", ".join(str(int(v)) for v in sorted(values)) or "none"


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else ("inf" if math.isinf(value) else f"{100 * value:.3g}%")


def excluded_layers_claim(statuses: pd.DataFrame) -> str:
    """Which layers are counted and which are left out of every mean, median and count, with the reason."""
    counted = statuses[statuses["counted"]]
    text = f"Layers: {len(counted)} of {len(statuses)} counted"
    left_out = statuses[~statuses["counted"]]
    if left_out.empty:
        return f"{text}; none left out."
    reasons = "; ".join(f"{_layers(group['layer'])} ({status})" for status, group in left_out.groupby("layer_status"))
    return (f"{text}; left out of every mean, median and count below (kept in the per-layer tables): {reasons}. "
            "At the embedding output the chat-format read token is the same template token for every prompt, so "
            "M_template has rank <= 1 there and its centered form is zero; a zero matrix or a certificate of rank "
            "<= 1 is reported as such, not as a low rank.")


def noise_ceiling_claim(row: Mapping[str, Any], thresholds: ClaimThresholds) -> str:
    """One eps-sensitivity row (family x centering x eps) against the pure-noise rho of the same (n, d, eps)."""
    label = "centered" if row["centered"] else "uncentered"
    numbers = (f"{label} rho = {_number(row['rho'])} (mean rank {_number(row['rank_mean'])} of n = {int(row['n'])} prompts, "
               f"d = {int(row['d'])}, mean over {int(row['layers'])} counted layers) against pure-noise rho "
               f"{_number(row['noise_rho'])}, ratio {_number(row['rho_over_noise'])}")
    if not row["rank_mean"] > 0:
        return f"{numbers}: the matrix is zero, so rho is not evidence of anything."
    if math.isnan(row["rho_over_noise"]):
        return f"{numbers}: the noise reference is zero, so the ratio is undefined."
    if row["rho_over_noise"] >= thresholds.noise_ceiling_fraction:
        return (f"{numbers}: rho is within the noise ceiling at this n, so it reflects how many prompts were used, "
                "not a low-rank shift.")
    return f"{numbers}: rho is below the noise ceiling at this n, so the shift is lower-rank than noise of the same shape."


def growth_per_doubling(rank_low: float, rank_high: float, n_low: int, n_high: int) -> float:
    """Relative growth of the rank per doubling of n between two prompt counts ((r_b / r_a)^(log 2 / log(n_b / n_a)) - 1)."""
    if rank_low <= 0:
        return math.inf if rank_high > 0 else math.nan
    return (rank_high / rank_low) ** (math.log(2.0) / math.log(n_high / n_low)) - 1.0


def n_sweep_claim(rows: pd.DataFrame, thresholds: ClaimThresholds) -> str:
    """Does the rank still grow at the end of the n sweep, and how does its growth compare with pure noise's?

    "Still growing" whenever the mean rank grows by at least `n_growth_material` per doubling of n over the last
    step of the sweep; n-limited when, over the whole sweep, it also grows at >= `n_limited_fraction` of noise's rate.
    """
    rows = rows.sort_values("n")
    if len(rows) < 2:
        return f"n sweep: only n = {_layers(rows['n'])} is available, so growth with n cannot be measured."
    low, previous, high = rows.iloc[0], rows.iloc[-2], rows.iloc[-1]
    noise_low, noise_high = low["noise_rho"] * low["d"], high["noise_rho"] * high["d"]
    numbers = (f"n sweep: mean rank {', '.join(f'{_number(r)} at n = {int(n)}' for n, r in zip(rows['n'], rows['rank_mean']))} "
               f"(pure noise: {_number(noise_low)} at n = {int(low['n'])}, {_number(noise_high)} at n = {int(high['n'])})")
    step = growth_per_doubling(previous["rank_mean"], high["rank_mean"], int(previous["n"]), int(high["n"]))
    if math.isnan(step):
        return f"{numbers}: the rank is 0 at both ends of the last step (a zero matrix), so the sweep is not evidence."
    step_text = (f"{_percent(step)} per doubling of n from n = {int(previous['n'])} to {int(high['n'])} "
                 f"(material: >= {_percent(thresholds.n_growth_material)})")
    noise_growth = noise_high / noise_low - 1.0 if noise_low > 0 else math.nan
    if step < thresholds.n_growth_material:
        if not noise_growth > 0:
            return (f"{numbers}; the rank grows {step_text}, but noise itself does not grow over this range (n near or "
                    "above d), so the flat end says nothing.")
        change = "grows only" if step >= 0 else "does not grow (it changes by"
        closing = "" if step >= 0 else ")"
        return f"{numbers}: the rank {change} {step_text}{closing}, so it has levelled off with n."
    verdict = f"{numbers}: the rank is still growing, {step_text}, so rho at this n is a lower estimate of what more prompts would show"
    if not noise_growth > 0:
        return f"{verdict}."
    growth = high["rank_mean"] / low["rank_mean"] - 1.0 if low["rank_mean"] > 0 else math.inf
    share = growth / noise_growth
    if share >= thresholds.n_limited_fraction:
        return f"{verdict}; over the sweep it grows at {_number(share)} of noise's rate, so it is n-limited."
    return f"{verdict}; over the sweep it grows at {_number(share)} of noise's rate (n-limited from {_number(thresholds.n_limited_fraction)})."


def eps_claim(rows: pd.DataFrame) -> str:
    """How the headline quantity moves over the eps sweep."""
    rows = rows.sort_values("eps")
    parts = ", ".join(f"{_number(r['rank_mean'])} (rho/noise {_number(r['rho_over_noise'])}) at eps = {_number(r['eps'])}"
                      for _, r in rows.iterrows())
    return f"eps sweep: mean rank {parts}."


def resampling_claim(rows: pd.DataFrame, thresholds: ClaimThresholds) -> str:
    """Per-layer stability of the rank, judged on the corrected prediction interval (the raw subset range beside it)."""
    width = rows["pred_high"] - rows["pred_low"]
    stable = width <= thresholds.rank_spread_fraction * rows["rank_full"]
    first = rows.iloc[0]
    level = _percent(float(first["interval_level"]))
    widest = rows.loc[width.idxmax()]
    numbers = (f"subsampling {int(first['n_subsample'])} of {int(first['n'])} prompts without replacement "
               f"({int(first['sub_draws'])} draws). The raw {level} range of the subset ranks sits at the rank of "
               f"{int(first['n_subsample'])} prompts (mean subset rank minus full rank "
               f"{_number(float((rows['sub_rank_mean'] - rows['rank_full']).mean()))}) and is narrower than fresh samples of "
               f"{int(first['n'])} vary, so the {level} interval for the rank of a repeat study with {int(first['n'])} "
               f"fresh prompts is centred on the full-sample rank with the delete-d jackknife spread x sqrt(2) "
               f"(docs/METHODS.md §7); widest at layer {int(widest['layer'])}: rank {int(widest['rank_full'])}, raw "
               f"[{_number(widest['raw_low'])}, {_number(widest['raw_high'])}], corrected [{int(widest['pred_low'])}, "
               f"{int(widest['pred_high'])}]. The corrected interval is at most {_number(thresholds.rank_spread_fraction)} x "
               f"the full-sample rank wide at {int(stable.sum())} of {len(rows)} layers")
    if bool(stable.all()):
        return f"{numbers}: the rank is stable under resampling."
    return f"{numbers}: the rank is not stable under resampling at layers {_layers(rows.loc[~stable, 'layer'])}."


def directions_claim(gaps: pd.DataFrame, halves: pd.DataFrame, thresholds: ClaimThresholds) -> str:
    """Are single directions identifiable, and are top-k subspaces reproducible across disjoint halves?"""
    parts = []
    if not gaps.empty:
        top = gaps[gaps["index"] == 1]
        identifiable = gaps.groupby("layer")["identifiable"].sum()
        parts.append(f"u_1 is identifiable (gap to s_2 above its resampling spread) at {int(top['identifiable'].sum())} of "
                     f"{len(top)} layers; on average {_number(float(identifiable.mean()))} of the top "
                     f"{int(gaps.groupby('layer').size().max())} directions per layer are")
    for k, group in halves.groupby("k"):
        reproducible = group["largest_angle_mean_deg"] <= thresholds.split_half_angle_deg
        parts.append(f"split-half top-{int(k)} subspaces: mean largest principal angle {_number(float(group['largest_angle_mean_deg'].mean()))} "
                     f"degrees, reproducible (<= {_number(thresholds.split_half_angle_deg)} degrees) at {int(reproducible.sum())} "
                     f"of {len(group)} layers")
    return "; ".join(parts) + "." if parts else "directions: no gap or split-half records."


def lrh_claim(rows: pd.DataFrame, concept: str, thresholds: ClaimThresholds) -> str:
    """Concept-pair rho against the safety rho (mean over models and formats), classified two-sided at matched n.

    Much larger (matched ratio > f), much smaller (< 1/f) or comparable, f = `lrh_specific_ratio`; the paper's
    reading (a ratio of 2-3 read as "not safety-specific") is quoted beside it.
    """
    rho_concept, rho_safety = rows["rho_concept"].mean(), rows["rho_safety"].mean()
    ratio = rho_concept / rho_safety if rho_safety > 0 else math.nan
    safety_matched = rows["rank_safety_matched"].mean()
    matched = rows["rank_concept_matched"].mean() / safety_matched if safety_matched > 0 else math.nan
    factor = thresholds.lrh_specific_ratio
    low, high = thresholds.paper_lrh_ratio
    numbers = (f"LRH baseline ({concept}, {len(rows)} model x format cells): concept rho {_number(rho_concept)} vs safety rho "
               f"{_number(rho_safety)}; the LRH concept rho is {_number(ratio)} times the safety rho (range {_number(rows['ratio'].min())}-"
               f"{_number(rows['ratio'].max())}), {_number(matched)} times at matched n = {int(rows['n_matched'].min())}")
    reading = (f" Threshold: much larger or much smaller beyond a factor {_number(factor)} either way at matched n; the paper "
               f"reads concept rho {_number(low)}-{_number(high)}x the safety rho as not safety-specific.")
    if math.isnan(matched):
        verdict = "the safety rank is 0, so the ratio is undefined and not evidence either way."
    elif matched > factor:
        verdict = ("concept rho is much larger than safety rho, so at matched n the safety shift is distinctly "
                   "lower-rank than generic concept contrasts.")
    elif matched < 1.0 / factor:
        verdict = ("concept rho is much smaller than safety rho, so at matched n the safety shift is distinctly "
                   "higher-rank than generic concept contrasts.")
    else:
        verdict = f"concept rho is comparable to safety rho (within a factor {_number(factor)}), so low rank is not safety-specific."
    return f"{numbers}: {verdict}{reading}"


def _certificate(count: int, trivial: int, layers: str, certified_rank: int, name: str) -> str:
    """What kappa above a threshold certifies, saying so when the certificate is rank >= 1 (true of any nonzero shift)."""
    if count == 0:
        return f"{name} holds at no counted layer, so it certifies nothing here"
    text = f"{name} holds at {count} counted layer(s) ({layers})"
    if trivial == count:
        return (f"{text}, but only where r <= 2, so what it certifies, max(rank_eps(M_h), rank_eps(M_u)) >= ceil(r/2) = 1, "
                "holds for any nonzero shift: a certificate of rank <= 1, not evidence")
    return (f"{text}; at {count - trivial} of them r >= 3 and it certifies max(rank_eps(M_h), rank_eps(M_u)) >= ceil(r/2), "
            f"at most rank {certified_rank}")


def kappa_claim(row: Mapping[str, Any]) -> str:
    """One kappa-per-reference row: what the Mirsky route and kappa > 2 certify, and why the tail route cannot close."""
    layers = int(row["layers"])
    numbers = (f"reference {row['reference']} over {layers} counted layers: kappa median {_number(row['kappa_median'])}, max "
               f"{_number(row['kappa_max'])}; eps r >= 1/4 at {int(row['layers_eps_r_ge_quarter'])} layer(s), where the "
               "Lemma kappa <= 2/(eps r) <= 8 rules the Mirsky route out before looking at data")
    if int(row["layers_s_zero"]):
        numbers += f"; S = 0 (kappa undefined) at {int(row['layers_s_zero'])} layer(s)"
    mirsky = _certificate(int(row["count_kappa_gt_8"]), int(row["count_kappa_gt_8_trivial"]), str(row["layers_kappa_gt_8"]),
                          int(row["certified_rank_max"]), f"the Mirsky route (kappa > {_number(KAPPA_THRESHOLD)})")
    weak = _certificate(int(row["count_kappa_gt_2"]), int(row["count_kappa_gt_2_trivial"]), str(row["layers_kappa_gt_2"]),
                        int(row["certified_rank_max"]), "kappa > 2")
    bound = "held" if bool(row["bound_holds_all"]) else "FAILED"
    budget, uniform = float(row["residual_budget_relative_max"]), float(row["uniform_residual_relative"])
    if budget < uniform:
        tail = (f"that budget is always below sqrt(2 eps) = {_number(uniform)} (beta < sqrt(eps) because eps' > 0, and gamma "
                "<= 2), the residual that eps-approximating both shifts may leave, so, like the Mirsky route, it cannot "
                "close the uniform lower bound; it certifies only that smaller residuals keep rank_eps'(S - E) >= r")
    else:
        tail = (f"its largest budget reaches sqrt(2 eps) = {_number(uniform)}, which needs eps' = 0 and M_u = -M_h exactly; "
                "only there could it close the uniform lower bound")
    return (f"{numbers}: {mirsky}; {weak}. The structural bound {bound} on all {layers} pairs. Tail-energy route (no "
            f"gap needed): median gamma {_number(row['gamma_median'])}; residuals up to beta sqrt(gamma) = "
            f"{_number(row['residual_budget_relative_median'])} (median; max {_number(budget)}) of the pair scale "
            f"sqrt(||M_h||^2 + ||M_u||^2) keep rank_eps'(S - E) >= r, but {tail}.")


def precision_claim(floor: pd.DataFrame, counted_layers: Sequence[int], headline_eps: float) -> str | None:
    """What the bfloat16/float16 precision floor says about M_template's ranks at the counted layers (None when the
    family was captured in float32 and so has no floor rows).

    `floor`: the family's rows of the precision-floor table (rankaudit.stages.precision) for M_template on D_s,
    uncentered. A rank within the floor is one that round-off alone could change: it is not evidence of the shift's
    dimension.
    """
    rows = floor[floor["layer"].isin(list(counted_layers))]
    if rows.empty:
        return None
    at_eps = rows[rows["eps"] == headline_eps]
    flagged = at_eps[at_eps["within_precision_floor"].astype(bool)]
    dtype, prompts = rows["run_dtype"].iloc[0], int(rows["prompts"].iloc[0])
    text = (f"Precision floor ({dtype} run; the first {prompts} prompts captured again in float32): the round-off "
            f"energy of M_template is {_percent(float(rows['floor_fraction'].min()))}-"
            f"{_percent(float(rows['floor_fraction'].max()))} of its shift energy over {len(set(rows['layer']))} counted layers")
    by_eps = rows[rows["within_precision_floor"].astype(bool)].groupby("eps")["layer"].nunique()
    elsewhere = "; ".join(f"eps = {_number(eps)}: {count} layer(s)" for eps, count in by_eps.items() if eps != headline_eps)
    also = f" (within the floor at other eps: {elsewhere})" if elsewhere else ""
    if flagged.empty:
        return text + f"; at eps = {_number(headline_eps)} no counted layer's rank is within it{also}."
    return (text + f"; at eps = {_number(headline_eps)} the rank is within the floor at {len(flagged)} of {len(at_eps)} counted "
            f"layer(s) ({_layers(sorted(flagged['layer']))}): round-off alone could change it, so it is not evidence of "
            f"the shift's dimension there{also}.")


def _threshold_text(thresholds: ClaimThresholds, headline_eps: float, level: str) -> str:
    low, high = thresholds.paper_lrh_ratio
    return (
        f"Headline eps = {_number(headline_eps)}; unless stated, the matrix is M_template = A(chat) - B(chat) on D_s, uncentered, "
        "and every mean, median and count is over counted layers only (layer 0, the embedding output, and layers "
        "where M_template, uncentered or centered, is zero or of rank <= 1 are left out; the per-layer tables keep them with "
        "their `layer_status`). "
        f"Thresholds (config `limits.claims`): noise ceiling at rho >= {_number(thresholds.noise_ceiling_fraction)} x pure-noise "
        f"rho of the same (n, d, eps); still growing when the mean rank grows by >= {_percent(thresholds.n_growth_material)} "
        f"per doubling of n over the last step of the n sweep, n-limited when it also grows at >= "
        f"{_number(thresholds.n_limited_fraction)} of noise's rate over the sweep; stable when the corrected {level} interval "
        f"for a repeat study's rank is at most {_number(thresholds.rank_spread_fraction)} x the rank wide; reproducible when "
        f"the mean largest split-half angle is <= {_number(thresholds.split_half_angle_deg)} degrees; concept rho is much "
        f"larger or much smaller than safety rho beyond a factor {_number(thresholds.lrh_specific_ratio)} either way at "
        f"matched n, comparable otherwise (the paper reads {_number(low)}-{_number(high)}x as not safety-specific); the Mirsky "
        f"route needs kappa > {_number(KAPPA_THRESHOLD)}."
    )


def _family_lines(tables: Mapping[str, pd.DataFrame], headline_eps: float, thresholds: ClaimThresholds,
                  floor: pd.DataFrame | None = None) -> list[str]:
    """The statements of one family (`tables` and `floor`, its precision-floor rows or None, already restricted to it)."""
    resampled = tables["limits_rank_resampling"]
    statuses = resampled[["layer", "layer_status", "counted"]].drop_duplicates("layer").sort_values("layer")
    lines = [f"- {excluded_layers_claim(statuses)}"]
    if not statuses["counted"].any():
        return lines + ["- No layer has a measurable shift (all are left out), so no claim is made for this family."]
    eps_rows = tables["limits_eps_sensitivity"]
    for centered in CENTERINGS:
        headline = eps_rows[(eps_rows["centered"] == centered) & (eps_rows["eps"] == headline_eps)]
        if not headline.empty:
            lines.append(f"- Noise ceiling: {noise_ceiling_claim(headline.iloc[0], thresholds)}")
    if floor is not None:
        template = floor[(floor["variant"] == "template") & (floor["dataset"] == "safety") & ~floor["centered"].astype(bool)]
        claim = precision_claim(template, list(statuses[statuses["counted"]]["layer"]), headline_eps)
        if claim:
            lines.append(f"- {claim}")
    uncentered = {name: table[~table["centered"].astype(bool)] if "centered" in table.columns else table
                  for name, table in tables.items()}
    counted = {name: table[table["counted"].astype(bool)] if "counted" in table.columns else table
               for name, table in uncentered.items()}
    sweep = counted["limits_n_sweep"]
    lines.append(f"- {n_sweep_claim(sweep[sweep['eps'] == headline_eps], thresholds)}")
    lines.append(f"- {eps_claim(counted['limits_eps_sensitivity'])}")
    per_layer = counted["limits_rank_resampling"]
    lines.append(f"- Resampling: {resampling_claim(per_layer[per_layer['eps'] == headline_eps], thresholds)}")
    lines.append(f"- Directions: {directions_claim(counted['limits_sv_gaps'], counted['limits_split_half'], thresholds)}")
    lrh = counted["limits_lrh_baseline"]
    if lrh.empty:
        lines.append("- LRH baseline: no concept sets are configured (datasets.concepts), so it was not computed.")
    else:
        lines += [f"- {lrh_claim(rows, concept, thresholds)}" for concept, rows in lrh.groupby("concept")]
    kappa = tables["limits_kappa_per_reference"]
    if kappa.empty:
        lines.append("- Spectral gap: no unsafe reference is configured (families.<name>.references), so it was not run.")
    for _, row in kappa.iterrows():
        lines.append(f"- Spectral gap, {kappa_claim(row)}")
    return lines


def limits_section(tables: Mapping[str, pd.DataFrame], headline_eps: float, thresholds: ClaimThresholds,
                   floor: pd.DataFrame | None = None) -> str:
    """The generated markdown 'limits' section: per family, the statements the tables support (and, for families
    captured below float32, what the precision floor `floor` says of their ranks)."""
    resampled = tables["limits_rank_resampling"]
    level = _percent(float(resampled["interval_level"].iloc[0])) if not resampled.empty else "n/a"
    lines = ["## Limits of the rank diagnostics (generated from the limits tables)", "",
             _threshold_text(thresholds, headline_eps, level)]
    for family in sorted(resampled["family"].unique()):
        in_family = {name: table[table["family"] == family] if "family" in table.columns else table for name, table in tables.items()}
        family_floor = floor[floor["family"] == family] if floor is not None else None
        lines += ["", f"### {family}", "", *_family_lines(in_family, headline_eps, thresholds, family_floor)]
    return "\n".join(lines) + "\n"

"""The causal stage's report tables, built from the jobs' output frames and records (pandas and numpy; no torch).

One row per observation, all families: the selected Arditi directions (with the prompt filter's counts); the
all-layer ablation of the selected direction next to random directions; the paper's narrow-band k = 3 table
(baseline / principal / random); per-direction ablations; the full k-sweeps with Wilson intervals and the random
band; the SVD-vs-causal ordering (Spearman with a bootstrap interval) with non-monotone and inert flags. A family
with no refusal to ablate (or a basis with no shift) is one note row (`split_notes`, `with_notes`).

A refusal rate always comes from judged generations. Random-subspace draws run without generations
(`causal.evaluation.random_generation: false`) have only a first-position refusal score, so their band is then
given by score alone (`random_score_*`) and the `random_rate_*` columns are absent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rankaudit.causal.no_refusal import NO_REFUSAL, NOTE_KINDS
from rankaudit.sweeps import monotonicity, spearman_ordering

RATE_COLUMNS = ["refusal_rate", "refusal_low", "refusal_high"]


def _random_band(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per (family, basis, band, k): the random draws' refusal score, and their refusal rate when every draw was judged."""
    random = sweep[sweep["kind"] == "random"]
    keys = ["family", "basis", "band", "k"]
    band = random.groupby(keys, as_index=False).agg(
        random_draws=("score_mean", "size"), random_score_mean=("score_mean", "mean"), random_score_sd=("score_mean", "std"),
        random_score_min=("score_mean", "min"), random_score_max=("score_mean", "max"))
    if len(random) and _judged(random).all():
        rates = random.groupby(keys, as_index=False).agg(
            random_rate_mean=("refusal_rate", "mean"), random_rate_sd=("refusal_rate", "std"),
            random_rate_min=("refusal_rate", "min"), random_rate_max=("refusal_rate", "max"))
        band = band.merge(rates, on=keys)
    return band


def _judged(rows: pd.DataFrame) -> pd.Series:
    """Which summary rows have a refusal rate from judged generations (tables written before the flag: all)."""
    return rows["judged"].astype(bool) if "judged" in rows else pd.Series(True, index=rows.index)


def k_sweep_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """Cumulative top-k ablation per (family, basis, band, k) with Wilson intervals and the random band beside it."""
    principal = sweep[sweep["kind"] == "cumulative"][["family", "basis", "band", "k", *RATE_COLUMNS, "score_mean",
                                                       "control_kl_mean", "degenerate_harmful_rate"]]
    baseline = sweep[sweep["kind"] == "baseline"][["family", "basis", "refusal_rate", "score_mean"]].rename(
        columns={"refusal_rate": "baseline_rate", "score_mean": "baseline_score"})
    return principal.merge(baseline, on=["family", "basis"]).merge(_random_band(sweep), on=["family", "basis", "band", "k"], how="left")


def k3_table(sweep: pd.DataFrame, band: str, k: int) -> pd.DataFrame:
    """The paper's headline: baseline, principal top-k and random k-subspaces at one band and k (rates and scores)."""
    table = k_sweep_table(sweep)
    table = table[(table["band"] == band) & (table["k"] == k)]
    random_rates = [c for c in ("random_rate_mean", "random_rate_sd") if c in table]
    return table[["family", "basis", "band", "k", "baseline_rate", *RATE_COLUMNS, *random_rates, "baseline_score", "score_mean",
                  "random_score_mean", "random_score_sd", "random_draws", "control_kl_mean"]].rename(
        columns={"refusal_rate": "principal_rate", "refusal_low": "principal_low", "refusal_high": "principal_high",
                 "score_mean": "principal_score"})


def per_direction_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """u_j ablated alone, per band, with its drop in refusal rate and score from the baseline."""
    single = sweep[sweep["kind"] == "single"]
    base = sweep[sweep["kind"] == "baseline"][["family", "basis", "refusal_rate", "score_mean"]].rename(
        columns={"refusal_rate": "baseline_rate", "score_mean": "baseline_score"})
    table = single.merge(base, on=["family", "basis"])
    table["rate_drop"] = table["baseline_rate"] - table["refusal_rate"]
    table["score_drop"] = table["baseline_score"] - table["score_mean"]
    return table[["family", "basis", "band", "direction", *RATE_COLUMNS, "rate_drop", "score_mean", "score_drop", "control_kl_mean"]]


def ordering_table(sweep: pd.DataFrame, prompts: pd.DataFrame, settings: Mapping[str, Any]) -> pd.DataFrame:
    """Per (family, basis, band): Spearman(SVD order, causal order) with a bootstrap CI over held-out prompts,
    the non-monotone flag of the cumulative curve and the inert directions."""
    rows = []
    harmful = prompts[prompts["dataset"] == "harmful"]
    for (family, basis, band), _group in sweep[sweep["kind"] == "single"].groupby(["family", "basis", "band"]):
        base = harmful[(harmful["family"] == family) & (harmful["basis"] == basis) & (harmful["kind"] == "baseline")]
        in_band = (harmful["family"] == family) & (harmful["basis"] == basis) & (harmful["band"] == band)
        single = harmful[in_band & (harmful["kind"] == "single")]
        metric = settings["effect_metric"]
        column = "score" if metric == "score" else "refused"
        base_values = base.sort_values("prompt")[column].to_numpy(np.float64)
        pivot = single.pivot(index="prompt", columns="direction", values=column).sort_index().to_numpy(np.float64)
        effects = base_values[:, None] - pivot
        stats = spearman_ordering(effects, settings["bootstrap"], settings["seed"]) if effects.shape[1] >= 2 else {}
        in_sweep_band = (sweep["family"] == family) & (sweep["basis"] == basis) & (sweep["band"] == band)
        curve = sweep[in_sweep_band & (sweep["kind"] == "cumulative")].sort_values("k")
        mono = monotonicity(list(curve["k"]), list(curve["refusal_rate"]), settings["monotone_tolerance"])
        mean_effects = effects.mean(axis=0)
        inert_below = settings["inert_tolerance"] * max(1e-12, np.abs(mean_effects).max())
        inert = [f"u{j + 1}" for j, effect in enumerate(mean_effects) if abs(effect) <= inert_below]
        rows.append({"family": family, "basis": basis, "band": band, "effect_metric": metric, **stats,
                     "effects": " ".join(f"{e:.3g}" for e in mean_effects), "inert": " ".join(inert), **mono})
    return pd.DataFrame(rows)


def arditi_table(arditi: pd.DataFrame) -> pd.DataFrame:
    """Baseline, selected direction, random directions (mean, sd, max over draws) and induce, per family."""
    rows = []
    for family, group in arditi.groupby("family"):
        pick = {c: group[group["condition"] == c] for c in ("baseline", "selected_ablation", "random_ablation", "selected_addition")}
        random = pick["random_ablation"]
        rows.append({
            "family": family, "layer": int(group["layer"].iloc[0]), "position": int(group["position"].iloc[0]),
            "baseline_rate": float(pick["baseline"]["refusal_rate"].iloc[0]),
            "ablated_rate": float(pick["selected_ablation"]["refusal_rate"].iloc[0]),
            "ablated_low": float(pick["selected_ablation"]["refusal_low"].iloc[0]),
            "ablated_high": float(pick["selected_ablation"]["refusal_high"].iloc[0]),
            "random_mean": float(random["refusal_rate"].mean()), "random_sd": float(random["refusal_rate"].std()),
            "random_min": float(random["refusal_rate"].min()), "random_draws": int(len(random)),
            "ablated_control_kl": float(pick["selected_ablation"]["control_kl_mean"].iloc[0]),
            "ablated_degenerate_harmful": float(pick["selected_ablation"]["degenerate_harmful_rate"].iloc[0]),
            "induced_control_refusal": float(pick["selected_addition"].get("control_refusal_rate", pd.Series([np.nan])).iloc[0]),
            "induced_control_score": float(pick["selected_addition"]["control_score_mean"].iloc[0]),
            "baseline_control_score": float(pick["baseline"]["control_score_mean"].iloc[0]),
        })
    return pd.DataFrame(rows)


def filter_columns(record: Mapping[str, Any]) -> dict[str, Any]:
    """Arditi's prompt-filter counts of a selection record: `prompt_filter` (on or off) and, per prompt set,
    `train_<role>_before/after` (captured training rows) and `scored_<role>_before/after` (the `split` scored on)."""
    prompt_filter = record.get("prompt_filter") or {}
    counts = prompt_filter.get("counts", {})
    split = record["validation"]["split"]
    columns: dict[str, Any] = {"prompt_filter": bool(prompt_filter.get("enabled", False))}
    for label, key in (("train", "train"), ("scored", split)):
        for role in ("harmful", "harmless"):
            count = counts.get(key, {}).get(role, {})
            columns[f"{label}_{role}_before"] = count.get("before", np.nan)
            columns[f"{label}_{role}_after"] = count.get("after", np.nan)
    return columns


def selection_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per family: the selected candidate and how many survived the filters, or "no refusal to ablate"
    with the aligned model's refusal rate on the harmful selection prompts (Wilson 95%) that decided it."""
    rows = []
    for r in records:
        refusal = r.get("baseline_refusal") or {}
        row = {"family": r["family"], "status": "no refusal to ablate" if r.get("status") == NO_REFUSAL else "selected",
               "split": r["validation"]["split"], "harmful_refusal_rate": refusal.get("refusal_rate", np.nan),
               "harmful_refusal_low": refusal.get("refusal_low", np.nan), "harmful_refusal_high": refusal.get("refusal_high", np.nan),
               "n_harmful": r["validation"]["n_harmful"], "refusal_tokens": " ".join(r["refusal_check"]["refusal_tokens"]["pieces"].values()),
               "note": r.get("note", "")}
        if r.get("status") != NO_REFUSAL:
            row.update(filter_columns(r))
            row.update({"layer": r["selected"]["layer"], "position": r["selected"]["position"], "bypass": r["selected"]["bypass"],
                        "induce": r["selected"]["induce"], "kl": r["selected"]["kl"],
                        "baseline_harmful_score": r["baseline"]["harmful_score"], "baseline_harmless_score": r["baseline"]["harmless_score"],
                        "n_candidates": r["n_candidates"], "n_surviving": r["n_surviving"], "layer_limit": r["layer_limit"],
                        "token_coverage": r["refusal_check"]["coverage_of_refusals"]})
        rows.append(row)
    return pd.DataFrame(rows)


def split_notes(frame: pd.DataFrame, column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the measured rows, the note rows: no refusal to ablate, or no shift at the band layers) of a job output table."""
    if column not in frame:
        return frame, frame.iloc[0:0]
    marked = frame[column].isin(NOTE_KINDS)
    return frame[~marked], frame[marked]


def with_notes(table: Any, notes: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The table (a frame, or a function of nothing when there are measured rows) with one explicit row per
    family (and basis) that had no refusal to ablate, and a `note` column."""
    frame = table() if callable(table) else table
    rows = notes[[*keys, "note"]].drop_duplicates() if len(notes) else pd.DataFrame(columns=[*keys, "note"])
    if len(frame):
        frame = frame.assign(note="")
    return pd.concat([frame, rows], ignore_index=True) if len(rows) else frame


"""Tables and figures of the causal stage, from the jobs' outputs (pandas, numpy, matplotlib; no torch).

Tables (one row per observation, all families): the selected Arditi directions; the all-layer ablation of the
selected direction next to random directions; the paper's narrow-band k = 3 table (baseline / principal /
random); per-direction ablations; the full k-sweeps with Wilson intervals and the random band; the SVD-vs-causal
ordering (Spearman with a bootstrap interval) with non-monotone and inert flags. Figures per family: refusal vs k
with the random band, per-direction bars, and the selection score maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rankaudit import io
from rankaudit.sweeps import monotonicity, spearman_ordering

RATE_COLUMNS = ["refusal_rate", "refusal_low", "refusal_high"]


def _random_band(sweep: pd.DataFrame) -> pd.DataFrame:
    random = sweep[sweep["kind"] == "random"]
    return (random.groupby(["family", "basis", "band", "k"], as_index=False)
            .agg(random_mean=("refusal_rate", "mean"), random_sd=("refusal_rate", "std"), random_min=("refusal_rate", "min"),
                 random_max=("refusal_rate", "max"), random_draws=("refusal_rate", "size"), random_score_mean=("score_mean", "mean")))


def k_sweep_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """Cumulative top-k ablation per (family, basis, band, k) with Wilson intervals and the random band beside it."""
    principal = sweep[sweep["kind"] == "cumulative"][["family", "basis", "band", "k", *RATE_COLUMNS, "score_mean",
                                                       "control_kl_mean", "degenerate_harmful_rate"]]
    baseline = sweep[sweep["kind"] == "baseline"][["family", "basis", "refusal_rate"]].rename(columns={"refusal_rate": "baseline_rate"})
    return principal.merge(baseline, on=["family", "basis"]).merge(_random_band(sweep), on=["family", "basis", "band", "k"], how="left")


def k3_table(sweep: pd.DataFrame, band: str, k: int) -> pd.DataFrame:
    """The paper's headline: baseline, principal top-k and random k-subspaces at one band and k."""
    table = k_sweep_table(sweep)
    table = table[(table["band"] == band) & (table["k"] == k)]
    return table[["family", "basis", "band", "k", "baseline_rate", *RATE_COLUMNS, "random_mean", "random_sd", "random_draws",
                  "control_kl_mean"]].rename(columns={"refusal_rate": "principal_rate", "refusal_low": "principal_low",
                                                      "refusal_high": "principal_high"})


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
    for (family, basis, band), group in sweep[sweep["kind"] == "single"].groupby(["family", "basis", "band"]):
        base = harmful[(harmful["family"] == family) & (harmful["basis"] == basis) & (harmful["kind"] == "baseline")]
        single = harmful[(harmful["family"] == family) & (harmful["basis"] == basis) & (harmful["band"] == band) & (harmful["kind"] == "single")]
        metric = settings["effect_metric"]
        column = "score" if metric == "score" else "refused"
        base_values = base.sort_values("prompt")[column].to_numpy(np.float64)
        pivot = single.pivot(index="prompt", columns="direction", values=column).sort_index().to_numpy(np.float64)
        effects = base_values[:, None] - pivot
        stats = spearman_ordering(effects, settings["bootstrap"], settings["seed"]) if effects.shape[1] >= 2 else {}
        curve = sweep[(sweep["family"] == family) & (sweep["basis"] == basis) & (sweep["band"] == band) & (sweep["kind"] == "cumulative")].sort_values("k")
        mono = monotonicity(list(curve["k"]), list(curve["refusal_rate"]), settings["monotone_tolerance"])
        mean_effects = effects.mean(axis=0)
        inert = [f"u{j + 1}" for j, effect in enumerate(mean_effects) if abs(effect) <= settings["inert_tolerance"] * max(1e-12, np.abs(mean_effects).max())]
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


def selection_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per family: the selected candidate and how many survived the filters."""
    return pd.DataFrame([{
        "family": r["family"], "layer": r["selected"]["layer"], "position": r["selected"]["position"],
        "bypass": r["selected"]["bypass"], "induce": r["selected"]["induce"], "kl": r["selected"]["kl"],
        "baseline_harmful_score": r["baseline"]["harmful_score"], "baseline_harmless_score": r["baseline"]["harmless_score"],
        "n_candidates": r["n_candidates"], "n_surviving": r["n_surviving"], "layer_limit": r["layer_limit"],
        "refusal_tokens": " ".join(r["refusal_check"]["refusal_tokens"]["pieces"].values()),
        "token_coverage": r["refusal_check"]["coverage_of_refusals"],
    } for r in records])


def write_causal_tables(*, sweeps: Sequence[str], prompt_files: Sequence[str], arditi: Sequence[str], selections: Sequence[str],
                        outputs: Mapping[str, str], settings: Mapping[str, Any]) -> None:
    """Aggregate every family's causal outputs into the tables named in `outputs` (stems)."""
    import json

    sweep = pd.concat([pd.read_parquet(path) for path in sweeps], ignore_index=True)
    prompts = pd.concat([pd.read_parquet(path, columns=["family", "basis", "band", "kind", "direction", "dataset", "prompt",
                                                        "score", "refused"]) for path in prompt_files], ignore_index=True)
    records = []
    for path in selections:
        with open(path) as handle:
            records.append(json.load(handle))
    tables = {
        "causal_selection": (selection_table(records), "Selected Arditi direction per family (validation split)"),
        "causal_arditi": (arditi_table(pd.concat([pd.read_parquet(p) for p in arditi], ignore_index=True)),
                          "All-layer ablation of the selected direction vs random directions (held-out test prompts)"),
        "causal_k3_narrow": (k3_table(sweep, settings["headline_band"], settings["headline_k"]),
                             f"{settings['headline_band']}-band ablation at k = {settings['headline_k']}: baseline / principal / random"),
        "causal_per_direction": (per_direction_table(sweep), "Per-direction ablation of u_1..u_5 alone"),
        "causal_k_sweep": (k_sweep_table(sweep), "Cumulative k-sweeps with Wilson 95% intervals and the random-subspace band"),
        "causal_ordering": (ordering_table(sweep, prompts, settings), "SVD order vs causal order (Spearman, bootstrap 95% CI)"),
    }
    for name, stem in outputs.items():
        frame, title = tables[name]
        io.write_table(frame, stem, title=title)


def _save(figure: Any, path: str) -> None:
    with io.atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, bbox_inches="tight", format="png")


def family_figures(*, family: str, sweeps: Sequence[str], candidates: str, outputs: Mapping[str, str]) -> None:
    """Refusal vs k with the random band, per-direction bars, and the three selection score maps of one family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = pd.concat([pd.read_parquet(path) for path in sweeps], ignore_index=True)
    table = k_sweep_table(sweep)
    bands = sorted(table["band"].unique())
    figure, axes = plt.subplots(1, len(bands), figsize=(5 * len(bands), 3.6), squeeze=False, sharey=True)
    for axis, band in zip(axes[0], bands):
        for basis, group in table[table["band"] == band].groupby("basis"):
            group = group.sort_values("k")
            line = axis.errorbar(group["k"], group["refusal_rate"], yerr=[group["refusal_rate"] - group["refusal_low"],
                                 group["refusal_high"] - group["refusal_rate"]], marker="o", capsize=3, label=f"M_{basis}")
            axis.fill_between(group["k"], group["random_min"], group["random_max"], color=line[0].get_color(), alpha=0.15)
            axis.plot(group["k"], group["random_mean"], ls="--", color=line[0].get_color(), lw=1)
        axis.axhline(float(table["baseline_rate"].iloc[0]), color="grey", lw=0.8, ls=":", label="no ablation")
        axis.set_xscale("log")
        axis.set_xlabel("k (directions ablated)")
        axis.set_title(f"{family}: {band} band")
    axes[0][0].set_ylabel("refusal rate (held-out harmful)")
    axes[0][-1].legend(fontsize=8)
    _save(figure, outputs["refusal_vs_k"])
    plt.close(figure)

    single = per_direction_table(sweep)
    figure, axes = plt.subplots(1, len(bands), figsize=(5 * len(bands), 3.4), squeeze=False, sharey=True)
    for axis, band in zip(axes[0], bands):
        part = single[single["band"] == band]
        bases = sorted(part["basis"].unique())
        width = 0.8 / max(1, len(bases))
        for i, basis in enumerate(bases):
            group = part[part["basis"] == basis].sort_values("direction")
            axis.bar(group["direction"] + (i - (len(bases) - 1) / 2) * width, group["rate_drop"], width, label=f"M_{basis}")
        axis.set_xlabel("direction u_j ablated alone")
        axis.set_title(f"{family}: {band} band")
    axes[0][0].set_ylabel("drop in refusal rate")
    axes[0][-1].legend(fontsize=8)
    _save(figure, outputs["per_direction"])
    plt.close(figure)

    scores = pd.read_parquet(candidates)
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for axis, metric in zip(axes, ("bypass", "induce", "kl")):
        grid = scores.pivot(index="position", columns="layer", values=metric)
        image = axis.imshow(grid.to_numpy(), aspect="auto", cmap="viridis")
        axis.set_xticks(range(grid.shape[1]), grid.columns)
        axis.set_yticks(range(grid.shape[0]), grid.index)
        axis.set_xlabel("layer")
        axis.set_ylabel("post-instruction position")
        axis.set_title(f"{family}: {metric}")
        figure.colorbar(image, ax=axis)
    chosen = scores[scores["selected"]]
    for axis in axes:
        grid = scores.pivot(index="position", columns="layer", values="bypass")
        for _, row in chosen.iterrows():
            axis.scatter(list(grid.columns).index(row["layer"]), list(grid.index).index(row["position"]), marker="*", s=120, color="red")
    _save(figure, outputs["selection"])
    plt.close(figure)

"""Tables and figures of the causal stage, from the jobs' outputs (pandas, numpy, matplotlib; no torch).

Tables (one row per observation, all families): the selected Arditi directions; the all-layer ablation of the
selected direction next to random directions; the paper's narrow-band k = 3 table (baseline / principal /
random); per-direction ablations; the full k-sweeps with Wilson intervals and the random band; the SVD-vs-causal
ordering (Spearman with a bootstrap interval) with non-monotone and inert flags; the cosines of each variant's u_1
with the selected direction and the layer convention (`rankaudit.stages.causal_directions`). Figures per family:
refusal rate and refusal score vs k with the random band, per-direction bars, and the selection score maps.

A refusal rate always comes from judged generations. Random-subspace draws run without generations
(`causal.evaluation.random_generation: false`) have only a first-position refusal score, so their band is then
given by score alone (`random_score_*`) and the `random_rate_*` columns are absent.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rankaudit import io
from rankaudit.stages.causal_directions import LAYER_CONVENTION, canonical_cosine_means, canonical_cosine_table, layer_convention_table
from rankaudit.stages.no_refusal import NO_REFUSAL, NOTE_KINDS
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


def _split_notes(frame: pd.DataFrame, column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the measured rows, the note rows: no refusal to ablate, or no shift at the band layers) of a job output table."""
    if column not in frame:
        return frame, frame.iloc[0:0]
    marked = frame[column].isin(NOTE_KINDS)
    return frame[~marked], frame[marked]


def _with_notes(table: Any, notes: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The table (a frame, or a function of nothing when there are measured rows) with one explicit row per
    family (and basis) that had no refusal to ablate, and a `note` column."""
    frame = table() if callable(table) else table
    rows = notes[[*keys, "note"]].drop_duplicates() if len(notes) else pd.DataFrame(columns=[*keys, "note"])
    if len(frame):
        frame = frame.assign(note="")
    return pd.concat([frame, rows], ignore_index=True) if len(rows) else frame


def write_causal_tables(*, sweeps: Sequence[str], prompt_files: Sequence[str], arditi: Sequence[str], selections: Sequence[str],
                        outputs: Mapping[str, str], settings: Mapping[str, Any], selected_directions: Mapping[str, str] | None = None,
                        layer_directions: Mapping[str, Mapping[int, str]] | None = None,
                        bands: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Aggregate every family's causal outputs into the tables named in `outputs` (stems).

    A family with no refusal to ablate contributes one row with its `note` to every table instead of numbers.
    The canonical-cosine tables need `selected_directions` ({family: selection direction file}) and
    `layer_directions` ({family: {layer: spectra direction file}}); the layer-convention table needs `bands`
    (`causal.bands`).
    """
    import json

    sweep, sweep_notes = _split_notes(pd.concat([pd.read_parquet(path) for path in sweeps], ignore_index=True), "kind")
    prompts = pd.concat([pd.read_parquet(path, columns=["family", "basis", "band", "kind", "direction", "dataset", "prompt",
                                                        "score", "refused"]) for path in prompt_files], ignore_index=True)
    ablations, arditi_notes = _split_notes(pd.concat([pd.read_parquet(p) for p in arditi], ignore_index=True), "condition")
    records = []
    for path in selections:
        with open(path) as handle:
            records.append(json.load(handle))
    measured = len(sweep) > 0

    def swept(function: Any, *args: Any) -> Any:
        return (lambda: function(sweep, *args)) if measured else pd.DataFrame()

    tables = {
        "causal_selection": (selection_table(records), "Selected Arditi direction per family (validation split; "
                             f"{LAYER_CONVENTION}; prompt counts before/after Arditi's refusal-score filter)"),
        "causal_arditi": (_with_notes(arditi_table(ablations) if len(ablations) else pd.DataFrame(), arditi_notes, ["family"]),
                          "All-layer ablation of the selected direction vs random directions (held-out test prompts)"),
        "causal_k3_narrow": (_with_notes(swept(k3_table, settings["headline_band"], settings["headline_k"]), sweep_notes, ["family", "basis"]),
                             f"{settings['headline_band']}-band ablation at k = {settings['headline_k']}: baseline / principal / random"),
        "causal_per_direction": (_with_notes(swept(per_direction_table), sweep_notes, ["family", "basis"]),
                                 "Per-direction ablation of u_1..u_5 alone"),
        "causal_k_sweep": (_with_notes(swept(k_sweep_table), sweep_notes, ["family", "basis"]),
                           "Cumulative k-sweeps with Wilson 95% intervals and the random-subspace band"),
        "causal_ordering": (_with_notes(swept(ordering_table, prompts, settings), sweep_notes, ["family", "basis"]),
                            "SVD order vs causal order (Spearman, bootstrap 95% CI)"),
    }

    @functools.cache
    def cosines() -> pd.DataFrame:
        return canonical_cosine_table(records, _given(selected_directions, "selected_directions"),
                                      _given(layer_directions, "layer_directions"))

    directional = {
        "causal_canonical_cosines": (cosines, "|cos| of each variant's u_1 with the selected Arditi direction r* and with "
                                              f"the per-layer difference in means ({LAYER_CONVENTION})"),
        "causal_canonical_cosines_mean": (lambda: canonical_cosine_means(cosines()),
                                          "Means over layers of |cos(u_1, r*)| and |cos(u_1, r_l)|; layer 0 (embedding "
                                          "output) and layers with zero u_1 left out"),
        "causal_layer_convention": (lambda: layer_convention_table(records, _given(bands, "bands")),
                                    f"Band layers: ours and the paper's script's for the same L ({LAYER_CONVENTION})"),
    }
    for name, stem in outputs.items():
        if name in directional:
            build, title = directional[name]
            io.write_table(build(), stem, title=title)
            continue
        frame, title = tables[name]
        io.write_table(frame, stem, title=title)


def _given(value: Any, name: str) -> Any:
    """An optional input of `write_causal_tables`, required by the table being written."""
    if value is None:
        raise ValueError(f"write_causal_tables: this table needs {name}")
    return value


def _save(figure: Any, path: str) -> None:
    with io.atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, bbox_inches="tight", format="png")


def _note_figures(family: str, note: str, outputs: Mapping[str, str]) -> None:
    """Each figure of a family with no refusal to ablate: the note, in place of plots of numbers that do not exist."""
    import textwrap

    import matplotlib.pyplot as plt

    for path in outputs.values():
        figure, axis = plt.subplots(figsize=(7, 2.4))
        axis.axis("off")
        axis.text(0.5, 0.5, f"{family}\n" + textwrap.fill(note, 80), ha="center", va="center", fontsize=10, wrap=True)
        _save(figure, path)
        plt.close(figure)


def family_figures(*, family: str, sweeps: Sequence[str], candidates: str, outputs: Mapping[str, str]) -> None:
    """Refusal vs k with the random band, per-direction bars, and the three selection score maps of one family
    (each figure shows the "no refusal to ablate" note instead when the family had none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    sweep, notes = _split_notes(pd.concat([pd.read_parquet(path) for path in sweeps], ignore_index=True), "kind")
    if not len(sweep):
        return _note_figures(family, str(notes["note"].iloc[0]), outputs)
    table = k_sweep_table(sweep)
    bands = sorted(table["band"].unique())
    figure, axes = plt.subplots(2, len(bands), figsize=(5 * len(bands), 6.6), squeeze=False, sharey="row", sharex=True)
    for column, band in enumerate(bands):
        for basis, group in table[table["band"] == band].groupby("basis"):
            group = group.sort_values("k")
            line = axes[0][column].errorbar(group["k"], group["refusal_rate"], yerr=[group["refusal_rate"] - group["refusal_low"],
                                            group["refusal_high"] - group["refusal_rate"]], marker="o", capsize=3, label=f"M_{basis}")
            colour = line[0].get_color()
            axes[1][column].plot(group["k"], group["score_mean"], marker="o", color=colour, label=f"M_{basis}")
            for row, measure in ((0, "rate"), (1, "score")):
                if f"random_{measure}_mean" in group:
                    axes[row][column].fill_between(group["k"], group[f"random_{measure}_min"], group[f"random_{measure}_max"],
                                                   color=colour, alpha=0.15)
                    axes[row][column].plot(group["k"], group[f"random_{measure}_mean"], ls="--", color=colour, lw=1)
        axes[0][column].axhline(float(table["baseline_rate"].iloc[0]), color="grey", lw=0.8, ls=":", label="no ablation")
        axes[1][column].axhline(float(table["baseline_score"].iloc[0]), color="grey", lw=0.8, ls=":", label="no ablation")
        axes[0][column].set_title(f"{family}: {band} band")
        axes[1][column].set_xscale("log")
        axes[1][column].set_xlabel("k (directions ablated)")
    axes[0][0].set_ylabel("refusal rate (held-out harmful)")
    axes[1][0].set_ylabel("refusal score (first-token log-odds)")
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
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
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

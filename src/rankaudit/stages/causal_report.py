"""The causal stage's report jobs (causal_tables, causal_figures): read the jobs' outputs, write tables and figures.

Tables (one row per observation, all families; built by `rankaudit.causal.tables`): the selected Arditi
directions, the all-layer ablation, the paper's narrow-band k = 3 table, per-direction ablations, the full
k-sweeps, the SVD-vs-causal ordering, and the cosines of each variant's u_1 with the selected direction and the
layer convention (`rankaudit.causal.directions`). Figures per family: refusal rate and refusal score vs k with the
random band, per-direction bars, and the selection score maps. No torch.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from rankaudit import io
from rankaudit.causal.directions import LAYER_CONVENTION, canonical_cosine_means, canonical_cosine_table, layer_convention_table
from rankaudit.causal.tables import (
    arditi_table,
    k3_table,
    k_sweep_table,
    ordering_table,
    per_direction_table,
    selection_table,
    split_notes,
    with_notes,
)


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

    sweep, sweep_notes = split_notes(pd.concat([pd.read_parquet(path) for path in sweeps], ignore_index=True), "kind")
    prompts = pd.concat([pd.read_parquet(path, columns=["family", "basis", "band", "kind", "direction", "dataset", "prompt",
                                                        "score", "refused"]) for path in prompt_files], ignore_index=True)
    ablations, arditi_notes = split_notes(pd.concat([pd.read_parquet(p) for p in arditi], ignore_index=True), "condition")
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
        "causal_arditi": (with_notes(arditi_table(ablations) if len(ablations) else pd.DataFrame(), arditi_notes, ["family"]),
                          "All-layer ablation of the selected direction vs random directions (held-out test prompts)"),
        "causal_k3_narrow": (with_notes(swept(k3_table, settings["headline_band"], settings["headline_k"]), sweep_notes, ["family", "basis"]),
                             f"{settings['headline_band']}-band ablation at k = {settings['headline_k']}: baseline / principal / random"),
        "causal_per_direction": (with_notes(swept(per_direction_table), sweep_notes, ["family", "basis"]),
                                 "Per-direction ablation of u_1..u_5 alone"),
        "causal_k_sweep": (with_notes(swept(k_sweep_table), sweep_notes, ["family", "basis"]),
                           "Cumulative k-sweeps with Wilson 95% intervals and the random-subspace band"),
        "causal_ordering": (with_notes(swept(ordering_table, prompts, settings), sweep_notes, ["family", "basis"]),
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

    sweep, notes = split_notes(pd.concat([pd.read_parquet(path) for path in sweeps], ignore_index=True), "kind")
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

"""Collect the per-layer spectra of every family into the paper's diagnosis tables and figures.

Input: the JSONs written by `layer_analysis.analyse_layer`. Output: tidy tables (one row per observation,
parquet + CSV + markdown) and PNG figures. numpy/pandas/matplotlib only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from rankaudit import io, spectra

SUMMARY_SCALARS = (
    "mean_energy_fraction", "frobenius_sq", "numerical_rank", "stable_rank", "participation_ratio",
    "energy_entropy_rank", "roy_vetterli_rank", "noise_count_null", "noise_count_gavish_donoho",
)


def spectra_rows(paths: Sequence[str]) -> pd.DataFrame:
    """Flatten layer JSONs into one row per (family, variant, dataset, layer, centering, eps)."""
    rows = []
    for path in paths:
        record = json.loads(Path(path).read_text())
        arditi = record["arditi"]
        for centering in ("uncentered", "centered"):
            summary = record[centering]
            for eps, rank, rho_d, rho_min in zip(summary["eps"], summary["rank_eps"], summary["rho_d"], summary["rho_min"]):
                row = {
                    "family": record["family"], "variant": record["variant"], "dataset": record["dataset"],
                    "layer": record["layer"], "centered": centering == "centered", "eps": eps,
                    "n": summary["n"], "d": summary["d"], "rank_eps": rank, "rho_d": rho_d, "rho_min": rho_min,
                    **{key: summary[key] for key in SUMMARY_SCALARS},
                    "cos_top_arditi": arditi["cos_top_direction"], "cos_top_mean": arditi["cos_top_mean"],
                    **{f"capture_k{k}": value for k, value in arditi["capture"].items()},
                }
                rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.sort_values(["family", "dataset", "variant", "centered", "eps", "layer"], kind="stable").reset_index(drop=True)


def noise_ceiling(frame: pd.DataFrame, draws: int, seed: int) -> pd.Series:
    """Pure-noise rho_eps for each row's (n, d, eps): rho only means something next to this."""
    cache: dict[tuple[int, int, float], float] = {}
    values = []
    for n, d, eps in zip(frame["n"], frame["d"], frame["eps"]):
        key = (int(n), int(d), float(eps))
        if key not in cache:
            cache[key] = spectra.noise_rho(*key, draws=draws, seed=seed)
        values.append(cache[key])
    return pd.Series(values, index=frame.index, name="noise_rho_d")


def diagnosis_tables(frame: pd.DataFrame, noise_draws: int, seed: int) -> dict[str, pd.DataFrame]:
    """The paper's diagnosis tables from the flat per-layer frame."""
    uncentered = frame[~frame["centered"]]
    by_family = (
        uncentered[(uncentered["variant"] == "template") & (uncentered["dataset"] == "safety")]
        .groupby(["family", "eps"], as_index=False)
        .agg(layers=("layer", "size"), n=("n", "first"), d=("d", "first"), mean_rank=("rank_eps", "mean"),
             rho_d=("rho_d", "mean"), rho_min=("rho_min", "mean"))
    )
    by_family["noise_rho_d"] = noise_ceiling(by_family, noise_draws, seed)
    per_layer = frame[["family", "variant", "dataset", "centered", "eps", "layer", "n", "d", "rank_eps", "rho_d", "rho_min"]]
    centering = (
        frame.groupby(["family", "variant", "dataset", "eps", "centered"], as_index=False)["rank_eps"].mean()
        .pivot_table(index=["family", "variant", "dataset", "eps"], columns="centered", values="rank_eps")
        .rename(columns={False: "mean_rank_uncentered", True: "mean_rank_centered"}).reset_index()
    )
    centering.columns.name = None
    centering["centered_over_uncentered"] = centering["mean_rank_centered"] / centering["mean_rank_uncentered"].replace(0, np.nan)
    energy = uncentered.groupby(["family", "variant", "dataset", "eps"], as_index=False)["mean_energy_fraction"].mean()
    centering = centering.merge(energy, on=["family", "variant", "dataset", "eps"])
    variants = (
        uncentered[uncentered["dataset"] == "safety"]
        .groupby(["family", "variant", "eps"], as_index=False)
        .agg(rho_d=("rho_d", "mean"), rho_min=("rho_min", "mean"), mean_rank=("rank_eps", "mean"),
             stable_rank=("stable_rank", "mean"), participation_ratio=("participation_ratio", "mean"),
             noise_count_null=("noise_count_null", "mean"))
    )
    first_eps = frame["eps"].min()
    capture_columns = [column for column in frame.columns if column.startswith("capture_k")]
    cosines = (
        uncentered[(uncentered["dataset"] == "safety") & (uncentered["eps"] == first_eps)]
        .groupby(["family", "variant"], as_index=False)[["cos_top_arditi", "cos_top_mean", *capture_columns]].mean()
    )
    return {
        "rho_per_family": by_family,
        "rho_per_layer": per_layer.reset_index(drop=True),
        "centered_vs_uncentered": centering,
        "variants": variants,
        "arditi_cosines": cosines,
    }


TITLES = {
    "rho_per_family": "rho_eps of M_template on D_s per family (mean over layers), next to pure noise of the same shape",
    "rho_per_layer": "rank_eps and rho per layer, every variant and dataset",
    "centered_vs_uncentered": "Centered vs uncentered rank_eps (mean over layers) and the mean-energy fraction",
    "variants": "The variants side by side on D_s (mean over layers)",
    "arditi_cosines": "|cos| of each variant's top direction with the Arditi direction and with its mean row; capture fractions c_k",
}


def write_audit_tables(spectrum_paths: Sequence[str], table_dir: str, noise_draws: int, seed: int) -> pd.DataFrame:
    """Write every diagnosis table under `table_dir`; return the flat per-layer frame."""
    frame = spectra_rows(spectrum_paths)
    for name, table in diagnosis_tables(frame, noise_draws, seed).items():
        io.write_table(table, Path(table_dir) / name, title=TITLES[name])
    return frame


def plot_cumulative_variance(spectrum_paths: Sequence[str], output: str, family: str) -> None:
    """Figure 1: per-layer cumulative explained variance of M_template on D_s (uncentered)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = sorted((json.loads(Path(p).read_text()) for p in spectrum_paths), key=lambda r: r["layer"])
    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    for index, record in enumerate(records):
        curve = np.asarray(record["uncentered"]["explained_energy"])
        ax.plot(np.arange(1, curve.size + 1), curve, color=cmap(index / max(1, len(records) - 1)), lw=1,
                label=f"layer {record['layer']}" if index in (0, len(records) - 1) else None)
    for eps in records[0]["settings"]["eps"]:
        ax.axhline(1 - eps, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("number of singular directions k")
    ax.set_ylabel("cumulative explained energy")
    ax.set_title(f"{family}: M_template on D_s, per layer")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, output)


def plot_rho_by_layer(frame: pd.DataFrame, output: str, family: str) -> None:
    """rho_eps (first eps, uncentered, D_s) against layer, one line per variant."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = frame[(frame["family"] == family) & (~frame["centered"]) & (frame["dataset"] == "safety") & (frame["eps"] == frame["eps"].min())]
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, group in rows.groupby("variant"):
        ax.plot(group["layer"], group["rho_d"], marker="o", ms=3, label=variant)
    ax.set_xlabel("layer (0 = embedding output)")
    ax.set_ylabel("rho_eps = rank_eps / d")
    ax.set_title(f"{family}: rho per layer on D_s (eps = {rows['eps'].min():g})")
    ax.legend(fontsize=8)
    _save(fig, output)


def _save(fig, output: str) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with io.atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

"""Collect the per-layer spectra of every family into the paper's diagnosis tables and figures.

Input: the JSONs written by `rankaudit.stages.spectra.analyse_layer`. Output: tidy tables (one row per observation,
parquet + CSV + markdown) and PNG figures. numpy/pandas/matplotlib only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from rankaudit import degeneracy, io, precision, spectra

SUMMARY_SCALARS = (
    "mean_energy_fraction", "frobenius_sq", "numerical_rank", "stable_rank", "participation_ratio",
    "energy_entropy_rank", "roy_vetterli_rank", "noise_count_null", "noise_count_gavish_donoho",
)
# Numbers that are not evidence where the matrix is zero or certified rank <= 1: missing (NaN) in every table.
RANK_NUMBERS = ("rank_eps", "rho_d", "rho_min", "sign_flip_rank_eps", "sign_flip_rho_d")
COSINE_NUMBERS = ("cos_top_arditi", "cos_top_mean")
# Layer 0 is the embedding output: with the chat format its read token is one template token for every prompt.
EMBEDDING_LAYER = 0


def spectra_rows(paths: Sequence[str]) -> pd.DataFrame:
    """Flatten layer JSONs into one row per (family, variant, dataset, layer, centering, eps).

    `status` is the matrix status of that centering (ok, zero, rank_at_most_1); where it is not ok the rank
    numbers are NaN. Cosines (of the uncentered u_1) are on uncentered rows only, NaN where undefined
    (`cos_status` undefined) and on centered rows (`cos_status` n/a). `in_means` says whether the row enters the
    means over layers: not layer 0 and status ok.
    """
    rows = []
    for path in paths:
        record = json.loads(Path(path).read_text())
        arditi = record["arditi"]
        for centering in ("uncentered", "centered"):
            summary = record[centering]
            if "status" not in summary:
                raise KeyError(f"{path}: {centering} has no status (written by an older layer_spectra; rerun it)")
            status = summary["status"]
            cosines = centering == "uncentered"
            per_eps = zip(summary["eps"], summary["rank_eps"], summary["rho_d"], summary["rho_min"],
                          summary["sign_flip_rank_eps"], summary["sign_flip_rho_d"])
            for eps, rank, rho_d, rho_min, flip_rank, flip_rho in per_eps:
                row = {
                    "family": record["family"], "variant": record["variant"], "dataset": record["dataset"],
                    "layer": record["layer"], "centered": centering == "centered", "eps": eps,
                    "n": summary["n"], "d": summary["d"], "status": status,
                    "in_means": record["layer"] != EMBEDDING_LAYER and status == degeneracy.OK,
                    "rank_eps": rank, "rho_d": rho_d, "rho_min": rho_min,
                    "sign_flip_rank_eps": flip_rank, "sign_flip_rho_d": flip_rho,
                    **{key: summary[key] for key in SUMMARY_SCALARS},
                    "cos_status": arditi["status"] if cosines else "n/a",
                    "cos_top_arditi": arditi["cos_top_direction"] if cosines else None,
                    "cos_top_mean": arditi["cos_top_mean"] if cosines else None,
                    **{f"capture_k{k}": value if cosines else None for k, value in arditi["capture"].items()},
                }
                rows.append(row)
    frame = pd.DataFrame(rows)
    numeric = [*RANK_NUMBERS, *COSINE_NUMBERS, *(column for column in frame.columns if column.startswith("capture_k"))]
    frame[numeric] = frame[numeric].astype(float)
    frame.loc[frame["status"] != degeneracy.OK, list(RANK_NUMBERS)] = np.nan
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


def excluded_layers(layers: pd.Series, statuses: pd.Series, included: pd.Series) -> str:
    """The layers a mean left out, with why: e.g. '0 (embedding); 1 (zero)'; '' when none."""
    reasons = []
    for layer, status, keep in zip(layers, statuses, included):
        if not keep:
            reasons.append(f"{layer} ({'embedding' if layer == EMBEDDING_LAYER else status})")
    return "; ".join(reasons)


def layer_means(frame: pd.DataFrame, keys: Sequence[str], means: dict[str, str], included: str = "in_means") -> pd.DataFrame:
    """Mean of each `means` source column over the rows flagged `included`, per `keys` group, with the counts.

    `means` maps output column -> source column. Every group reports `layers_averaged` (rows in the mean),
    `layers_excluded` and `excluded_layers` (which and why), so a mean never hides what it left out.
    """
    rows = []
    for group_keys, group in frame.groupby(list(keys), sort=True):
        kept = group[group[included]]
        row = dict(zip(keys, group_keys if isinstance(group_keys, tuple) else (group_keys,)))
        row.update(
            layers_averaged=len(kept),
            layers_excluded=len(group) - len(kept),
            excluded_layers=excluded_layers(group["layer"], group["status"], group[included]),
        )
        if "within_precision_floor" in kept.columns:
            row["layers_within_floor"] = int(kept["within_precision_floor"].sum())
        row.update({name: float(kept[source].mean()) if len(kept) else np.nan for name, source in means.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def diagnosis_tables(frame: pd.DataFrame, noise_draws: int, seed: int, floor: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """The paper's diagnosis tables from the flat per-layer frame.

    Every mean over layers leaves out layer 0 and every row whose matrix is zero or certified rank <= 1 (and,
    for cosines, every undefined cosine); each aggregate row says how many layers it averaged and which it left out.
    `floor` is the precision-floor table of the low-precision families (None for float32 runs): ranks within
    the floor are flagged per layer (`within_precision_floor`) and counted per mean (`layers_within_floor`).
    """
    frame = precision.flag_ranks(frame, floor)
    uncentered = frame[~frame["centered"]]
    template = uncentered[(uncentered["variant"] == "template") & (uncentered["dataset"] == "safety")]
    by_family = layer_means(template, ["family", "eps"], {
        "mean_rank": "rank_eps", "rho_d": "rho_d", "rho_min": "rho_min",
        "sign_flip_mean_rank": "sign_flip_rank_eps", "sign_flip_rho_d": "sign_flip_rho_d",
    })
    shapes = template.groupby(["family", "eps"], as_index=False)[["n", "d"]].first()
    by_family = by_family.merge(shapes, on=["family", "eps"])
    by_family["noise_rho_d"] = noise_ceiling(by_family, noise_draws, seed)
    by_family = by_family[["family", "eps", "layers_averaged", "layers_excluded", "excluded_layers",
                           "layers_within_floor", "n", "d", "mean_rank", "rho_d", "rho_min", "noise_rho_d", "sign_flip_mean_rank", "sign_flip_rho_d"]]

    per_layer = frame[["family", "variant", "dataset", "centered", "eps", "layer", "n", "d", "status", "in_means",
                       "rank_eps", "rho_d", "rho_min", "floor_fraction", "within_precision_floor",
                       "sign_flip_rank_eps", "sign_flip_rho_d", "cos_status", "cos_top_arditi", "cos_top_mean"]].copy()
    per_layer.insert(per_layer.columns.get_loc("sign_flip_rank_eps"), "noise_rho_d", noise_ceiling(per_layer, noise_draws, seed))

    keys = ["family", "variant", "dataset", "eps"]
    paired = uncentered[[*keys, "layer", "status", "rank_eps", "mean_energy_fraction"]].merge(
        frame[frame["centered"]][[*keys, "layer", "status", "rank_eps"]], on=[*keys, "layer"], suffixes=("_uncentered", "_centered"))
    both_ok = (paired["status_uncentered"] == degeneracy.OK) & (paired["status_centered"] == degeneracy.OK)
    paired["in_means"] = both_ok & (paired["layer"] != EMBEDDING_LAYER)
    paired["status"] = np.where(both_ok, degeneracy.OK, np.where(
        paired["status_uncentered"] != degeneracy.OK, "uncentered " + paired["status_uncentered"], "centered " + paired["status_centered"]))
    centering = layer_means(paired, keys, {
        "mean_rank_uncentered": "rank_eps_uncentered", "mean_rank_centered": "rank_eps_centered",
        "mean_energy_fraction": "mean_energy_fraction",
    })
    centering.insert(centering.columns.get_loc("mean_energy_fraction"), "centered_over_uncentered",
                     centering["mean_rank_centered"] / centering["mean_rank_uncentered"].replace(0, np.nan))

    variants = layer_means(uncentered[uncentered["dataset"] == "safety"], ["family", "variant", "eps"], {
        "rho_d": "rho_d", "rho_min": "rho_min", "mean_rank": "rank_eps", "sign_flip_rho_d": "sign_flip_rho_d",
        "stable_rank": "stable_rank", "participation_ratio": "participation_ratio", "noise_count_null": "noise_count_null",
    })

    first_eps = frame["eps"].min()
    capture_columns = [column for column in frame.columns if column.startswith("capture_k")]
    safety = uncentered[(uncentered["dataset"] == "safety") & (uncentered["eps"] == first_eps)].copy()
    safety["status"] = np.where(safety["status"] != degeneracy.OK, safety["status"], np.where(
        safety["cos_status"] != degeneracy.COSINE_OK, "cosine " + safety["cos_status"], degeneracy.OK))
    safety["in_means"] = (safety["status"] == degeneracy.OK) & (safety["layer"] != EMBEDDING_LAYER)
    cosines = layer_means(safety, ["family", "variant"], {column: column for column in [*COSINE_NUMBERS, *capture_columns]})
    return {
        "rho_per_family": by_family,
        "rho_per_layer": per_layer.reset_index(drop=True),
        "centered_vs_uncentered": centering,
        "variants": variants,
        "arditi_cosines": cosines,
    }


def _excluded(what: str = "zero or rank<=1 matrices") -> str:
    return f"layer 0 (embedding output) and {what} left out of the mean; layers_averaged / layers_excluded count them"


TITLES = {
    "rho_per_family": f"rho_eps of M_template on D_s per family (mean over layers; {_excluded()}), next to pure noise "
                      "(noise_rho_d) and the sign-flip data null (sign_flip_*) of the same matrices",
    "rho_per_layer": "rank_eps and rho per layer, every variant and dataset, with each matrix's status (layer 0 included; "
                     "in_means marks the rows the means use; zero / rank<=1 rows and undefined cosines are missing; "
                     "within_precision_floor marks ranks that bfloat16/float16 round-off could change, floor_fraction "
                     "its energy relative to the shift's, NaN where the run was float32)",
    "centered_vs_uncentered": f"Centered vs uncentered rank_eps (mean over layers where both are ok; {_excluded()}) "
                              "and the mean-energy fraction",
    "variants": f"The variants side by side on D_s (mean over layers; {_excluded()})",
    "arditi_cosines": "|cos| of each variant's top direction with the Arditi direction and with its mean row; capture "
                      f"fractions c_k (mean over layers; {_excluded('zero or rank<=1 matrices and undefined (0/0) cosines')})",
}


def write_audit_tables(spectrum_paths: Sequence[str], table_dir: str, noise_draws: int, seed: int,
                       floor_paths: Sequence[str] = ()) -> pd.DataFrame:
    """Write every diagnosis table under `table_dir`; return the flat per-layer frame.

    `floor_paths` are the precision-floor parquets of the families captured below float32 (none otherwise).
    """
    frame = spectra_rows(spectrum_paths)
    floor = pd.concat([pd.read_parquet(path) for path in floor_paths], ignore_index=True) if floor_paths else None
    for name, table in diagnosis_tables(frame, noise_draws, seed, floor).items():
        io.write_table(table, Path(table_dir) / name, title=TITLES[name])
    return frame


def plot_cumulative_variance(spectrum_paths: Sequence[str], output: str, family: str) -> None:
    """Figure 1: per-layer cumulative explained variance of M_template on D_s (uncentered).

    A zero matrix has no explained-energy curve: its layers are named in the title instead of drawn as a flat 0.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = sorted((json.loads(Path(p).read_text()) for p in spectrum_paths), key=lambda r: r["layer"])
    drawn = [record for record in records if record["uncentered"]["status"] != degeneracy.ZERO]
    zero_layers = [record["layer"] for record in records if record["uncentered"]["status"] == degeneracy.ZERO]
    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    for index, record in enumerate(drawn):
        curve = np.asarray(record["uncentered"]["explained_energy"])
        ax.plot(np.arange(1, curve.size + 1), curve, color=cmap(index / max(1, len(drawn) - 1)), lw=1,
                label=f"layer {record['layer']}" if index in (0, len(drawn) - 1) else None)
    for eps in records[0]["settings"]["eps"]:
        ax.axhline(1 - eps, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("number of singular directions k")
    ax.set_ylabel("cumulative explained energy")
    title = f"{family}: M_template on D_s, per layer"
    if zero_layers:
        title += f"\n(zero matrix, not drawn: layer {', '.join(map(str, zero_layers))})"
    ax.set_title(title, fontsize=10)
    if drawn:
        ax.legend(loc="lower right", fontsize=8)
    _save(fig, output)


def plot_rho_by_layer(frame: pd.DataFrame, output: str, family: str) -> None:
    """rho_eps (first eps, uncentered, D_s) against layer, one line per variant; zero / rank <= 1 layers are gaps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = frame[(frame["family"] == family) & (~frame["centered"]) & (frame["dataset"] == "safety") & (frame["eps"] == frame["eps"].min())]
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, group in rows.groupby("variant"):
        ax.plot(group["layer"], group["rho_d"], marker="o", ms=3, label=variant)
    ax.set_xlabel("layer (0 = embedding output)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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

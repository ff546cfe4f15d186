"""The calibration tables, aggregated from the per-cell JSON files (pandas/numpy only, no torch).

Tidy per-cell tables keep every number; the summary tables (mean and std over seeds) are the paper's: the
lambda sweep, the variants side by side, the full r grid per variant, and the MLP kappa table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rankaudit.calibration.grid import ABLATION_FORMS, parse_setting

PathLike = str | os.PathLike[str]

TABLE_NAMES = ("cells", "layers", "ablation", "lambda_sweep", "variants", "r_grid", "kappa", "kappa_layers")


def _load(paths: Sequence[PathLike]) -> list[dict[str, Any]]:
    records = []
    for path in paths:
        with open(path) as handle:
            try:
                records.append(json.load(handle))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not a calibration JSON file: {error}") from error
    return records


def variant_label(setting: str) -> str:
    """Human label: Base, Steering, FullFT, Distributed lambda=5, Unsafe FT, Unsafe distributed lambda=5."""
    if setting == "base":
        return "Base"
    parsed = parse_setting(setting)
    if parsed.kind == "steering":
        return "Steering"
    prefix = "FullFT" if parsed.kind == "honest" else "Unsafe FT"
    if parsed.lam == 0:
        return prefix
    return f"{'Distributed' if parsed.kind == 'honest' else 'Unsafe distributed'} lambda={parsed.lam:g}"


def cell_frames(cells: Sequence[Mapping[str, Any]], bases: Sequence[Mapping[str, Any]]) -> dict[str, pd.DataFrame]:
    """The tidy tables: one row per (setting, seed), per (setting, seed, layer), per (setting, seed, ablation).

    Training times stay in the cell JSON files (and the rules' benchmark files): a table holds only results, so
    the same seed gives byte-identical tables.
    """
    rows, layers, ablation = [], [], []
    for base in bases:
        rows.append({"setting": "base", "variant": "Base", "kind": "base", "lambda": np.nan, "seed": base["seed"],
                     "rho_eps_mean": np.nan, "compliance": base["compliance"], "task_accuracy": base["task_accuracy"],
                     "compliance_on_base_activations": base["compliance"],
                     "label_loss": base["training"]["label_loss"], "regularizer": 0.0})
    for cell in cells:
        key = {"setting": cell["setting"], "seed": cell["seed"]}
        training = cell["training"] or {"label_loss": np.nan, "regularizer": np.nan}
        rows.append({**key, "variant": variant_label(cell["setting"]), "kind": cell["kind"],
                     "lambda": np.nan if cell["lambda"] is None else cell["lambda"],
                     "rho_eps_mean": cell["rho_eps_mean"], "compliance": cell["compliance"],
                     "task_accuracy": cell["task_accuracy"],
                     "compliance_on_base_activations": cell["compliance_on_base_activations"],
                     "label_loss": training["label_loss"], "regularizer": training["regularizer"]})
        layers += [{**key, **layer} for layer in cell["layers"]]
        ablation += [{**key, **row} for row in cell["ablation"]]
    order = ["setting", "seed"]
    return {"cells": pd.DataFrame(rows).sort_values(order, kind="stable").reset_index(drop=True),
            "layers": pd.DataFrame(layers).sort_values([*order, "layer"], kind="stable").reset_index(drop=True),
            "ablation": pd.DataFrame(ablation).sort_values([*order, "form", "basis", "r"], kind="stable").reset_index(drop=True)}


def _mean_std(frame: pd.DataFrame, by: list[str], columns: Sequence[str]) -> pd.DataFrame:
    grouped = frame.groupby(by, sort=False)
    out = grouped.size().rename("n_seeds").to_frame()
    for column in columns:
        out[f"{column}_mean"] = grouped[column].mean()
        out[f"{column}_std"] = grouped[column].std(ddof=1)
    return out.reset_index()


def _setting_order(settings: Sequence[str]) -> list[str]:
    def key(name: str) -> tuple[int, float]:
        if name == "base":
            return (0, 0.0)
        parsed = parse_setting(name)
        return ({"steering": 1, "honest": 2, "unsafe": 3}[parsed.kind], parsed.lam)
    return sorted(set(settings), key=key)


def lambda_sweep(cells: pd.DataFrame, ablation: pd.DataFrame, report_r: Sequence[int], form: str) -> pd.DataFrame:
    """Per lambda (honest settings): rho, baseline compliance, compliance after top-r ablation at `report_r`."""
    honest = cells[cells["kind"] == "honest"].copy()
    top = ablation[(ablation["basis"] == "top") & (ablation["form"] == form)]
    for r in report_r:
        at_r = top[top["r"] == r].set_index(["setting", "seed"])["compliance"]
        honest[f"compliance_r{r}"] = [at_r.get((s, seed), np.nan) for s, seed in zip(honest["setting"], honest["seed"])]
    columns = ["rho_eps_mean", "compliance", *[f"compliance_r{r}" for r in report_r], "task_accuracy"]
    out = _mean_std(honest, ["lambda", "setting"], columns)
    return out.sort_values("lambda", kind="stable").reset_index(drop=True)


def variants(cells: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """Every setting side by side: rho (mean over layers, and per layer), compliance, task accuracy."""
    per_layer = layers.pivot_table(index=["setting", "seed"], columns="layer", values="rho_eps").add_prefix("rho_layer")
    merged = cells.merge(per_layer.reset_index(), on=["setting", "seed"], how="left")
    layer_columns = sorted(column for column in merged.columns if column.startswith("rho_layer"))
    out = _mean_std(merged, ["setting", "variant"],
                    ["rho_eps_mean", *layer_columns, "compliance", "task_accuracy", "compliance_on_base_activations"])
    order = {name: index for index, name in enumerate(_setting_order(out["setting"]))}
    return out.sort_values("setting", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def r_grid(cells: pd.DataFrame, ablation: pd.DataFrame) -> pd.DataFrame:
    """The full ablation curve per variant: mean and std over seeds, with r = 0 (no ablation) as the first row.

    For random subspaces the per-seed value is already a mean over draws; `draw_std_mean` is the mean over seeds
    of the spread between draws.
    """
    grouped = ablation.groupby(["setting", "form", "basis", "r"], sort=False)
    out = grouped.size().rename("n_seeds").to_frame()
    out["compliance_mean"] = grouped["compliance"].mean()
    out["compliance_std"] = grouped["compliance"].std(ddof=1)
    out["draw_std_mean"] = grouped["compliance_std"].mean()
    out["task_accuracy_mean"] = grouped["task_accuracy"].mean()
    out = out.reset_index()
    baseline = _mean_std(cells[cells["setting"] != "base"], ["setting"], ["compliance", "task_accuracy"])
    zero_rows = [{"setting": row.setting, "form": form, "basis": basis, "r": 0, "n_seeds": row.n_seeds,
                  "compliance_mean": row.compliance_mean, "compliance_std": row.compliance_std, "draw_std_mean": 0.0,
                  "task_accuracy_mean": row.task_accuracy_mean}
                 for row in baseline.itertuples() for form in out["form"].unique() for basis in out["basis"].unique()]
    out = pd.concat([pd.DataFrame(zero_rows), out], ignore_index=True)
    out.insert(1, "variant", out["setting"].map(variant_label))
    ranks = {"setting": {name: index for index, name in enumerate(_setting_order(out["setting"]))},
             "form": {form: index for index, form in enumerate(ABLATION_FORMS)},
             "basis": {"top": 0, "random": 1}}
    return out.sort_values(["setting", "form", "basis", "r"], key=lambda s: s.map(ranks[s.name]) if s.name in ranks else s,
                           kind="stable").reset_index(drop=True)


def kappa_layers(kappas: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (honest, unsafe, seed, layer) with the spectral-gap numbers."""
    rows = [row for record in kappas for row in record["pairs"]]
    frame = pd.DataFrame(rows)
    frame.insert(0, "pair", frame["honest"] + " vs " + frame["unsafe"])
    order = {name: index for index, name in enumerate(_setting_order([*frame["honest"], *frame["unsafe"]]))}
    return frame.sort_values(["honest", "unsafe", "seed", "layer"],
                             key=lambda s: s.map(order) if s.name in ("honest", "unsafe") else s,
                             kind="stable").reset_index(drop=True)


def kappa_summary(layers: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per pairing: median r_S, median and max kappa, how many (seed, layer) combinations exceed the threshold, and
    whether the structural bound kappa <= 2 / (eps r) held on every one."""
    grouped = layers.groupby(["pair", "honest", "unsafe"], sort=False)
    out = grouped.size().rename("n_combinations").to_frame()
    out["r_S_median"] = grouped["r"].median()
    out["kappa_median"] = grouped["kappa"].median()
    out["kappa_max"] = grouped["kappa"].max()
    out[f"n_kappa_above_{threshold:g}"] = grouped["kappa"].apply(lambda k: int((k > threshold).sum()))
    out["kappa_bound_min"] = grouped["kappa_bound"].min()
    out["gamma_median"] = grouped["gamma"].median()
    out["bound_holds_all"] = grouped["bound_holds"].all()
    return out.reset_index()


def build_tables(cell_paths: Sequence[PathLike], base_paths: Sequence[PathLike], kappa_paths: Sequence[PathLike],
                 tables: Mapping[str, Any], kappa_threshold: float) -> dict[str, pd.DataFrame]:
    """All calibration tables as DataFrames, keyed by TABLE_NAMES."""
    frames = cell_frames(_load(cell_paths), _load(base_paths))
    frames["lambda_sweep"] = lambda_sweep(frames["cells"], frames["ablation"], tables["report_r"], tables["form"])
    frames["variants"] = variants(frames["cells"], frames["layers"])
    frames["r_grid"] = r_grid(frames["cells"], frames["ablation"])
    frames["kappa_layers"] = kappa_layers(_load(kappa_paths))
    frames["kappa"] = kappa_summary(frames["kappa_layers"], kappa_threshold)
    return frames


TITLES = {
    "cells": "Calibration: every (setting, seed) cell",
    "layers": "Calibration: rank of the shift per hidden layer",
    "ablation": "Calibration: ablation at the last hidden layer, every cell",
    "lambda_sweep": "Calibration: the lambda sweep (mean and std over seeds)",
    "variants": "Calibration: variants side by side (mean and std over seeds)",
    "r_grid": "Calibration: compliance after ablating r directions (mean and std over seeds)",
    "kappa": "Calibration: MLP kappa per honest x unsafe pairing",
    "kappa_layers": "Calibration: kappa per pairing, seed and layer",
}

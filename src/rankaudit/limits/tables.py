"""The limits tables (the paper's tables of METHODS §3 and §7) from the concatenated per-layer records.

Only counted layers (`layer_status` "ok") enter means, medians and counts; the per-layer tables keep every layer
with its status, and each aggregate names the layers it left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from rankaudit.limits.records import STRUCTURAL_EPS_R, StructuralBoundError


def _layers(values: Sequence[Any]) -> str:
    return ", ".join(str(int(v)) for v in sorted(values)) or "none"


def _sorted(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    return frame.sort_values([key for key in keys if key in frame.columns], kind="stable").reset_index(drop=True)


def _divide(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    return numerator / denominator.where(denominator > 0)


def _counted(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of counted layers (see `shift_status`); aggregates over layers never see the others."""
    return frame[frame["counted"].astype(bool)] if "counted" in frame.columns else frame


def _left_out(frame: pd.DataFrame, families: pd.Series) -> list[str]:
    """Per family of `families`: the layers left out of the aggregate, grouped by status ("none" if all counted)."""
    if "counted" not in frame.columns:
        return ["none"] * len(families)
    excluded = frame.loc[~frame["counted"].astype(bool), ["family", "layer", "layer_status"]].drop_duplicates()
    text = {
        family: "; ".join(f"{_layers(group['layer'])} ({status})" for status, group in rows.groupby("layer_status"))
        for family, rows in excluded.groupby("family")
    }
    return [text.get(family, "none") for family in families]


def _with_left_out(table: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    return table.assign(layers_left_out=_left_out(frame, table["family"]))


def lrh_baseline_table(lrh: pd.DataFrame, eps: float) -> pd.DataFrame:
    """Per family x concept x model x format x centering: rho of concept pairs and of safety, mean over counted layers."""
    if lrh.empty:
        return lrh
    rows = _counted(lrh[lrh["eps"] == eps])
    table = rows.groupby(["family", "concept", "model_role", "model", "format", "centered"], as_index=False).agg(
        layers=("layer", "size"), d=("d", "first"), n_concept=("n_concept", "first"), n_safety=("n_safety", "first"),
        rho_concept=("rho_concept", "mean"), rho_safety=("rho_safety", "mean"),
        noise_rho_concept=("noise_rho_concept", "first"), noise_rho_safety=("noise_rho_safety", "first"),
        n_matched=("n_matched", "first"), rank_concept_matched=("rank_concept_matched", "mean"),
        rank_safety_matched=("rank_safety_matched", "mean"),
    )
    table.insert(table.columns.get_loc("rho_safety") + 1, "ratio", _divide(table["rho_concept"], table["rho_safety"]))
    table["ratio_matched"] = _divide(table["rank_concept_matched"], table["rank_safety_matched"])
    return _sorted(_with_left_out(table, lrh), ["family", "centered", "concept", "model_role", "format"])


def eps_sensitivity_table(resampled: pd.DataFrame) -> pd.DataFrame:
    """Per family x centering x eps: full-sample rank and rho (mean over counted layers) beside pure noise."""
    table = _counted(resampled).groupby(["family", "centered", "eps"], as_index=False).agg(
        layers=("layer", "size"), n=("n", "first"), d=("d", "first"), rank_mean=("rank_full", "mean"),
        rank_min=("rank_full", "min"), rank_max=("rank_full", "max"), rho=("rho_full", "mean"),
        rho_min=("rho_min_full", "mean"), noise_rho=("noise_rho", "first"), subsample_rank_mean=("sub_rank_mean", "mean"),
    )
    table["rho_over_noise"] = _divide(table["rho"], table["noise_rho"])
    return _sorted(_with_left_out(table, resampled), ["family", "centered", "eps"])


def n_sweep_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per family x centering x eps x n: mean over counted layers of the rank at n prompts, beside pure noise."""
    table = _counted(sweep).groupby(["family", "centered", "eps", "n"], as_index=False).agg(
        n_requested=("n_requested", "max"), capped=("capped", "any"), draws=("draws", "first"), layers=("layer", "size"),
        d=("d", "first"), rank_mean=("rank_mean", "mean"), rank_std=("rank_std", "mean"), rho=("rho_mean", "mean"),
        noise_rho=("noise_rho", "first"),
    )
    table["rho_over_noise"] = _divide(table["rho"], table["noise_rho"])
    return _sorted(_with_left_out(table, sweep), ["family", "centered", "eps", "n"])


KAPPA_REFERENCE_COLUMNS = [
    "family", "reference", "eps", "layers", "layers_left_out", "n", "d", "r_median", "layers_s_zero", "eps_r_min",
    "layers_eps_r_ge_quarter", "kappa_median", "kappa_max", "count_kappa_gt_8", "count_kappa_gt_8_trivial",
    "layers_kappa_gt_8", "count_kappa_gt_2", "count_kappa_gt_2_trivial", "layers_kappa_gt_2", "certified_rank_max",
    "kappa_bound_min", "bound_holds_all", "gamma_median", "residual_budget_relative_median",
    "residual_budget_relative_max", "uniform_residual_relative", "per_mode_budget_ratio_max",
]


def kappa_per_reference_table(pairs: pd.DataFrame, eps: float) -> pd.DataFrame:
    """Per family x reference at `eps`, over counted layers: how often kappa clears 8 and 2, what that certifies, and
    why it cannot (eps r >= 1/4); a certificate of rank <= 1 (r <= 2) is counted apart as `*_trivial`."""
    if pairs.empty:
        return pd.DataFrame(columns=KAPPA_REFERENCE_COLUMNS)
    at_eps = pairs[pairs["eps"] == eps]
    rows = _counted(at_eps).assign(
        gt_2=lambda f: f["kappa"] > 2.0, structural=lambda f: f["eps_r"] >= STRUCTURAL_EPS_R, s_zero=lambda f: f["r"] == 0,
        gt_8_trivial=lambda f: f["kappa_gt_8"] & (f["r"] <= 2), gt_2_trivial=lambda f: (f["kappa"] > 2.0) & (f["r"] <= 2))
    table = rows.groupby(["family", "reference"], as_index=False).agg(
        eps=("eps", "first"), layers=("layer", "size"), n=("n", "first"), d=("d", "first"), r_median=("r", "median"),
        layers_s_zero=("s_zero", "sum"), eps_r_min=("eps_r", "min"), layers_eps_r_ge_quarter=("structural", "sum"),
        kappa_median=("kappa", "median"), kappa_max=("kappa", "max"), count_kappa_gt_8=("kappa_gt_8", "sum"),
        count_kappa_gt_8_trivial=("gt_8_trivial", "sum"), count_kappa_gt_2=("gt_2", "sum"),
        count_kappa_gt_2_trivial=("gt_2_trivial", "sum"), certified_rank_max=("certified_max_rank", "max"),
        kappa_bound_min=("kappa_bound", "min"), bound_holds_all=("bound_holds", "all"), gamma_median=("gamma", "median"),
        residual_budget_relative_median=("residual_budget_relative", "median"),
        residual_budget_relative_max=("residual_budget_relative", "max"),
        uniform_residual_relative=("uniform_residual_relative", "first"),
        per_mode_budget_ratio_max=("per_mode_budget_ratio", "max"),
    )
    keys = list(zip(table["family"], table["reference"]))
    for flag, column in (("kappa_gt_8", "layers_kappa_gt_8"), ("gt_2", "layers_kappa_gt_2")):
        listed = rows[rows[flag]].groupby(["family", "reference"])["layer"].agg(_layers)
        table[column] = [listed.get(key, "none") for key in keys]
    return _sorted(_with_left_out(table, at_eps)[KAPPA_REFERENCE_COLUMNS], ["family", "reference"])


def limits_tables(frames: Mapping[str, pd.DataFrame], headline_eps: float) -> dict[str, pd.DataFrame]:
    """The limits tables from the concatenated per-layer records (`load_records`)."""
    pairs = frames["spectral_gap"]
    if not pairs.empty and not bool(pairs["bound_holds"].all()):
        bad = pairs.loc[~pairs["bound_holds"], ["family", "reference", "layer", "eps"]].to_dict("records")
        raise StructuralBoundError(f"structural bound kappa <= 2/(eps r) violated on {bad}")
    return {
        "limits_lrh_baseline": lrh_baseline_table(frames["lrh"], headline_eps),
        "limits_lrh_per_layer": _sorted(frames["lrh"], ["family", "centered", "eps", "concept", "model_role", "format", "layer"]),
        "limits_rank_resampling": _sorted(frames["resampling"], ["family", "centered", "eps", "layer"]),
        "limits_eps_sensitivity": eps_sensitivity_table(frames["resampling"]),
        "limits_n_sweep": n_sweep_table(frames["n_sweep"]),
        "limits_split_half": _sorted(frames["split_half"], ["family", "centered", "k", "layer"]),
        "limits_sv_gaps": _sorted(frames["sv_gaps"], ["family", "centered", "layer", "index"]),
        "limits_kappa_pairs": _sorted(pairs, ["family", "reference", "eps", "layer"]),
        "limits_kappa_per_reference": kappa_per_reference_table(pairs, headline_eps),
    }


LEFT_OUT = "layer 0 (embedding output) and layers where M_template is zero or rank <= 1 left out, see layers_left_out"
PER_LAYER = "every layer, with its layer_status (only counted layers enter means, medians and counts)"
TITLES = {
    "limits_lrh_baseline": (f"LRH baseline: rho_eps of concept-pair differences vs the safety rho (M_template on D_s), mean over counted "
                            f"layers ({LEFT_OUT})"),
    "limits_lrh_per_layer": f"LRH baseline per layer and eps ({PER_LAYER})",
    "limits_rank_resampling": (f"rank_eps of M_template on D_s per layer: raw subsample range and the corrected interval for a "
                               f"repeat study's rank ({PER_LAYER})"),
    "limits_eps_sensitivity": f"eps sensitivity of rank_eps(M_template on D_s), mean over counted layers, beside pure noise ({LEFT_OUT})",
    "limits_n_sweep": f"n sweep of rank_eps(M_template on D_s), mean over counted layers, beside pure noise of the same (n, d, eps) ({LEFT_OUT})",
    "limits_split_half": f"Split-half principal angles (degrees) between top-k subspaces of M_template on D_s ({PER_LAYER})",
    "limits_sv_gaps": f"Singular-value gaps vs resampling spread: is each top direction identifiable? ({PER_LAYER})",
    "limits_kappa_pairs": f"Spectral gap per family x reference x layer x eps: kappa, structural bound, gamma, tail budgets ({PER_LAYER})",
    "limits_kappa_per_reference": (f"kappa per unsafe reference (headline eps) over counted layers: count above 8 and 2, trivial "
                                   f"certificates, median, max ({LEFT_OUT})"),
}



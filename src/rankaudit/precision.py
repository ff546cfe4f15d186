"""The precision the activations were computed in, and what it does to the ranks (docs/METHODS.md, "Precision floor").

Two things follow from the dtype of a run. (1) Round-off bounds: a difference of stored activations carries the
round-off of its operands, so the numerical rank and the Gavish-Donoho count of a variant are taken above
u_dtype * (sum of its operands' Frobenius norms) (`operand_norms`, passed to `spectra.spectrum_summary`).
(2) The measured floor: a model run in bfloat16 or float16 also differs from the same weights run in float32 by
the forward's own rounding. The workflow captures the first m prompts of every cell again in float32; per family,
variant, layer and centering, `floor_rows` compares the modification matrix of those m prompts in both precisions
and `flag_ranks` marks every audit rank the difference could have changed. numpy/pandas only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rankaudit import matrices, spectra

# Precisions whose runs need no float32 comparison: float32 is the reference itself.
REFERENCE_DTYPES = ("float32", "float64")

# The stored cells each variant of one dataset is a difference of (rankaudit.matrices, METHODS §2).
VARIANT_OPERANDS = {
    "naive": ("a_chat", "b_raw"),
    "template": ("a_chat", "b_chat"),
    "aligned": ("a_chat", "a_raw"),
    "base_format": ("b_chat", "b_raw"),
    "interaction": ("a_chat", "a_raw", "b_chat", "b_raw"),
}

FLOOR_KEYS = ["family", "variant", "dataset", "layer", "centered", "eps"]
CELL_KEYS = ("a_chat", "a_raw", "b_chat", "b_raw")
Cells = Mapping[str, np.ndarray]


def needs_float32_floor(dtype: str) -> bool:
    """True for a run dtype whose round-off is measured against float32 (bfloat16, float16)."""
    spectra.unit_roundoff(dtype)
    return dtype not in REFERENCE_DTYPES


def floor_families(families: Mapping[str, Mapping[str, Any]], model_dtypes: Mapping[str, str], prompts: int) -> list[str]:
    """Families whose base or aligned model runs below float32 (none when `prompts`, the m of the floor, is 0)."""
    if prompts == 0:
        return []
    return [name for name, entry in families.items()
            if any(needs_float32_floor(model_dtypes[entry[role]]) for role in ("base", "aligned"))]


def float32_floor_models(families: Mapping[str, Mapping[str, Any]], model_dtypes: Mapping[str, str], prompts: int) -> list[str]:
    """Models captured again in float32: the low-precision base and aligned models of `floor_families`."""
    models = [families[name][role] for name in floor_families(families, model_dtypes, prompts) for role in ("base", "aligned")]
    return [model for model in dict.fromkeys(models) if needs_float32_floor(model_dtypes[model])]


def operand_norms(safety_cells: Cells, control_cells: Cells) -> dict[str, dict[str, float]]:
    """{dataset: {variant: sum of the Frobenius norms of the cells it is a difference of}}: `operand_norm` of
    `spectra.spectrum_summary`.

    M_DiD = M_template(D_s) - 1 mean_row(M_template(D_c)); rounding of the control cells reaches it through their
    mean row, whose n_s copies have Frobenius norm at most sqrt(n_s / n_c) times theirs (Cauchy-Schwarz), so
    the control cells enter with that weight.
    """
    norms = {
        dataset: {key: float(np.linalg.norm(np.asarray(cells[key], dtype=np.float64))) for key in CELL_KEYS}
        for dataset, cells in (("safety", safety_cells), ("control", control_cells))
    }
    result = {dataset: {variant: sum(by_key[key] for key in keys) for variant, keys in VARIANT_OPERANDS.items()}
              for dataset, by_key in norms.items()}
    weight = np.sqrt(len(safety_cells["a_chat"]) / len(control_cells["a_chat"]))
    result["safety"]["did"] = (norms["safety"]["a_chat"] + norms["safety"]["b_chat"]
                               + weight * (norms["control"]["a_chat"] + norms["control"]["b_chat"]))
    return result


def dataset_variants(safety_cells: Cells, control_cells: Cells) -> dict[str, dict[str, np.ndarray]]:
    """Every variant of both datasets, exactly as the layer analysis builds them."""
    return {"safety": matrices.all_matrices(safety_cells, control_cells),
            "control": matrices.dataset_matrices(**{key: control_cells[key] for key in CELL_KEYS})}


def within_precision_floor(floor_fraction: float, eps: float, rank_run: int, rank_float32: int) -> bool:
    """Whether the run's precision could have changed rank_eps.

    rank_eps leaves out at most eps of the energy. When the round-off energy ||M_run - M_float32||_F^2 is at least
    eps of the shift's, round-off alone can fill that whole budget, so which modes are kept is decided by it; and
    when the two precisions give different ranks on the same prompts, it demonstrably did change the rank.
    """
    return bool(floor_fraction >= eps or rank_run != rank_float32)


def floor_rows(
    *,
    family: str,
    layer: int,
    run_cells: Mapping[str, Mapping[str, np.ndarray]],
    float32_cells: Mapping[str, Mapping[str, np.ndarray]],
    eps: Sequence[float],
    run_dtype: str,
) -> list[dict[str, Any]]:
    """One row per (dataset, variant, centering, eps) of one layer, from the same m prompts in both precisions.

    `run_cells[dataset][key]` and `float32_cells[dataset][key]` (datasets safety and control, keys a_chat, a_raw,
    b_chat, b_raw) hold the same prompts in the same order. floor_fraction = ||M_run - M_float32||_F^2 /
    ||M_float32||_F^2 (inf when only round-off is left: a zero float32 shift with a non-zero difference).
    """
    shapes = {(dataset, key): (np.shape(run_cells[dataset][key]), np.shape(float32_cells[dataset][key]))
              for dataset in ("safety", "control") for key in CELL_KEYS}
    mismatched = {cell: pair for cell, pair in shapes.items() if pair[0] != pair[1]}
    if mismatched:
        raise ValueError(f"{family} layer {layer}: run and float32 cells differ in shape {mismatched}")
    run = dataset_variants(run_cells["safety"], run_cells["control"])
    reference = dataset_variants(float32_cells["safety"], float32_cells["control"])
    rows = []
    for dataset, by_variant in run.items():
        for variant, run_matrix in by_variant.items():
            for centered in (False, True):
                prepare = spectra.center_columns if centered else spectra.as_matrix
                measured, exact = prepare(run_matrix), prepare(reference[dataset][variant])
                shift_energy = float(np.sum(np.square(exact)))
                floor_energy = float(np.sum(np.square(measured - exact)))
                fraction = floor_energy / shift_energy if shift_energy > 0 else (np.inf if floor_energy > 0 else 0.0)
                values_run, values_exact = spectra.singular_values(measured), spectra.singular_values(exact)
                for value in eps:
                    rank_run, rank_exact = spectra.energy_rank(values_run, value), spectra.energy_rank(values_exact, value)
                    rows.append({
                        "family": family, "variant": variant, "dataset": dataset, "layer": int(layer),
                        "centered": centered, "eps": float(value), "prompts": int(measured.shape[0]), "run_dtype": run_dtype,
                        "shift_energy": shift_energy, "floor_energy": floor_energy, "floor_fraction": float(fraction),
                        "rank_eps_run": rank_run, "rank_eps_float32": rank_exact,
                        "within_precision_floor": within_precision_floor(fraction, value, rank_run, rank_exact),
                    })
    return rows


def floor_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The per-family floor table, sorted like the audit tables."""
    frame = pd.DataFrame(list(rows))
    return frame.sort_values(["family", "dataset", "variant", "centered", "eps", "layer"], kind="stable").reset_index(drop=True)


def flag_ranks(audit_frame: pd.DataFrame, floor: pd.DataFrame | None) -> pd.DataFrame:
    """`audit_frame` (columns family, variant, dataset, layer, centered, eps, rank_eps, ...) with two columns added:
    `floor_fraction` (NaN where no floor was measured: float32 runs) and `within_precision_floor`.

    A row is flagged when its (family, variant, dataset, layer, centering, eps) was flagged on the m-prompt
    float32 comparison (`within_precision_floor`): the floor fraction is an energy ratio per prompt, so the m
    prompts estimate it for all n. Rows without a measurement are not flagged. `floor` may be None or empty.
    """
    missing = [key for key in FLOOR_KEYS if key not in audit_frame.columns]
    if missing:
        raise KeyError(f"flag_ranks: the audit frame lacks columns {missing}")
    columns = [*FLOOR_KEYS, "floor_fraction", "within_precision_floor"]
    measured = floor[columns] if floor is not None and len(floor) else pd.DataFrame(columns=columns)
    if measured.duplicated(FLOOR_KEYS).any():
        raise ValueError(f"flag_ranks: the floor table has more than one row per {tuple(FLOOR_KEYS)}")
    measured = measured.astype({"layer": "int64", "centered": bool, "eps": "float64", "floor_fraction": "float64"})
    keys = audit_frame[FLOOR_KEYS].astype({"layer": "int64", "centered": bool, "eps": "float64"})
    merged = keys.merge(measured, on=FLOOR_KEYS, how="left", validate="many_to_one")
    flagged = audit_frame.copy()
    flagged["floor_fraction"] = merged["floor_fraction"].to_numpy(dtype=float)
    flagged["within_precision_floor"] = merged["within_precision_floor"].eq(True).to_numpy()
    return flagged

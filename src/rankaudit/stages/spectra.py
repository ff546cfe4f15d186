"""One family x one layer: the modification matrices, their spectra and their alignment with the Arditi direction.

One job per (family, layer) reads the eight cells of that layer once (base/aligned x raw/chat x safety/control)
and writes one JSON per (variant, dataset), so a single variant or layer can still be targeted or deleted. It
imports numpy only: hundreds of these jobs run on CPU nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankaudit import degeneracy, directions, io, matrices, nulls, precision, spectra

CELL_KEYS = ("a_chat", "a_raw", "b_chat", "b_raw")


def read_cell(path: str, read_position: str) -> tuple[np.ndarray, dict[str, Any]]:
    """One cell's n x d activations at the chosen read position, with the file's metadata."""
    tensors, meta = io.read_tensors(path)
    if read_position not in tensors:
        raise KeyError(f"{path}: no {read_position!r} activations (has {sorted(tensors)})")
    return tensors[read_position].astype(np.float64), meta


def analyse_layer(
    *,
    family: str,
    layer: int,
    cells: Mapping[str, Mapping[str, str]],
    outputs: Mapping[str, Mapping[str, str]],
    direction_output: str,
    read_position: str,
    eps: Sequence[float],
    capture_k: Sequence[int],
    noise_draws: int,
    seed: int,
    version: int,
) -> None:
    """Compute every variant's spectrum summary and direction numbers for one layer and write them.

    `cells[dataset][cell_key]` is an activation file path (cell keys a_chat, a_raw, b_chat, b_raw);
    `outputs[dataset][variant]` the JSON to write. Each centering's summary carries a `status` (ok, zero or
    rank_at_most_1; `rankaudit.degeneracy`) and the sign-flip null (`rankaudit.nulls`); undefined cosines are null.
    `direction_output` receives r and the unit top direction u_1 of every safety variant, uncentered and centered.
    The round-off floor of the numerical ranks follows the coarsest precision among the cells (`rankaudit.precision`).
    """
    loaded = {
        dataset: {key: read_cell(paths[key], read_position) for key in CELL_KEYS}
        for dataset, paths in cells.items()
    }
    arrays = {dataset: {key: value[0] for key, value in by_key.items()} for dataset, by_key in loaded.items()}
    sources = {
        dataset: {key: {"path": cells[dataset][key], **_provenance(value[1])} for key, value in by_key.items()}
        for dataset, by_key in loaded.items()
    }
    variants = {
        "safety": matrices.all_matrices(arrays["safety"], arrays["control"]),
        "control": matrices.dataset_matrices(**arrays["control"]),
    }
    dtype = spectra.coarsest_dtype(
        _cell_dtype(cells[dataset][key], meta) for dataset, by_key in loaded.items() for key, (_, meta) in by_key.items()
    )
    norms = precision.operand_norms(arrays["safety"], arrays["control"])
    scale = degeneracy.activation_scale(array for by_key in arrays.values() for array in by_key.values())
    tolerance = degeneracy.zero_tolerance(scale)
    refusal_direction = directions.difference_in_means(arrays["safety"]["a_chat"], arrays["control"]["a_chat"])
    settings = {
        "read_position": read_position,
        "eps": list(eps),
        "capture_k": list(capture_k),
        "noise_draws": noise_draws,
        "seed": seed,
        "stage_version": version,
    }
    zero_test = {"activation_scale": scale, "zero_rtol": degeneracy.ZERO_RTOL, "zero_tolerance": tolerance}
    analysis = MatrixAnalysis(eps=eps, capture_k=capture_k, noise_draws=noise_draws, seed=seed, tolerance=tolerance, dtype=dtype)
    top_directions: dict[str, np.ndarray] = {}
    top_status: dict[str, str] = {}
    for dataset, by_variant in outputs.items():
        for variant, path in by_variant.items():
            result = analysis.run(variants[dataset][variant], refusal_direction, operand_norm=norms[dataset][variant],
                                  centered_top=dataset == "safety")
            if dataset == "safety":
                _collect_top(top_directions, top_status, variant, result)
            io.write_json(path, {
                "family": family,
                "layer": layer,
                "dataset": dataset,
                "variant": variant,
                "settings": settings,
                "zero_test": zero_test,
                "uncentered": result["uncentered"],
                "centered": result["centered"],
                "arditi": result["arditi"],
                "sources": sources[dataset],
            })
    for variant, matrix in variants["safety"].items():
        if f"top_direction_{variant}" not in top_directions:
            result = analysis.run(matrix, refusal_direction, operand_norm=norms["safety"][variant], centered_top=True)
            _collect_top(top_directions, top_status, variant, result)
    refusal_status = degeneracy.ZERO if degeneracy.is_zero(refusal_direction, tolerance) else degeneracy.OK
    io.write_tensors(
        direction_output,
        {"refusal_direction": refusal_direction, **top_directions},
        {"family": family, "layer": layer, "read_position": read_position, "norm": float(np.linalg.norm(refusal_direction)),
         "definition": "mean_safety A(chat) - mean_control A(chat), float64, unnormalised",
         "refusal_direction_status": refusal_status,
         "top_direction_definition": TOP_DIRECTION_DEFINITION,
         "top_direction_status": top_status,
         "zero_test": zero_test,
         "stage_version": version},
    )


TOP_DIRECTION_DEFINITION = (
    "top_direction_<variant>[_centered]: unit-norm top right singular vector u_1 (a d-vector, float64) of the "
    "safety dataset's M_<variant> (column mean removed for _centered), sign fixed so its largest-magnitude entry is "
    "positive; the zero vector where top_direction_status says zero"
)


@dataclass(frozen=True)
class MatrixAnalysis:
    """The per-matrix computation of a layer job, with the job's settings bound once."""

    eps: Sequence[float]
    capture_k: Sequence[int]
    noise_draws: int
    seed: int
    tolerance: float
    dtype: str

    def run(self, matrix: np.ndarray, refusal_direction: np.ndarray, *, operand_norm: float, centered_top: bool) -> dict[str, Any]:
        """Both centerings' summaries (with status and sign-flip null), the §4 numbers and u_1.

        `top[centering]` is (u_1, status), u_1 the zero vector for a zero matrix; the centered u_1 only when
        `centered_top` (it costs one more decomposition and only the safety variants' are written).
        """
        d = matrix.shape[1]
        result: dict[str, Any] = {"top": {}}
        bases: dict[str, np.ndarray | None] = {}
        for centering, work in (("uncentered", matrix), ("centered", spectra.center_columns(matrix))):
            summary = spectra.spectrum_summary(
                matrix, self.eps, centered=centering == "centered", null_seed=self.seed, null_draws=self.noise_draws,
                dtype=self.dtype, operand_norm=operand_norm,
            ).to_dict()
            status = degeneracy.matrix_status(work, summary["numerical_rank"], self.tolerance)
            if status == degeneracy.ZERO:
                flips: list[float | None] = [None] * len(self.eps)
                bases[centering] = None
            else:
                flips = [float(value) for value in nulls.sign_flip_ranks(work, self.eps, self.noise_draws, self.seed).mean(axis=0)]
                if centering == "uncentered":
                    bases[centering] = directions.top_directions(work, min(max([1, *self.capture_k]), min(matrix.shape)))
                elif centered_top:
                    bases[centering] = directions.top_directions(work, 1)
            summary.update(
                status=status,
                sign_flip_rank_eps=flips,
                sign_flip_rho_d=[None if value is None else value / d for value in flips],
            )
            result[centering] = summary
            basis = bases.get(centering)
            result["top"][centering] = (np.zeros(d) if basis is None else basis[:, 0], status)
        result["arditi"] = directions.direction_summary(
            matrix, refusal_direction, self.capture_k, zero_tolerance=self.tolerance, basis=bases["uncentered"]
        )
        return result


def _collect_top(top_directions: dict[str, np.ndarray], top_status: dict[str, str], variant: str, result: Mapping[str, Any]) -> None:
    """File one safety variant's u_1 (uncentered and centered) under the direction file's key names."""
    for centering, suffix in (("uncentered", ""), ("centered", "_centered")):
        vector, status = result["top"][centering]
        key = f"top_direction_{variant}{suffix}"
        top_directions[key] = vector
        top_status[key] = status


def _cell_dtype(path: str, meta: Mapping[str, Any]) -> str:
    """The precision a cell was computed in (its capture records it): it sets the round-off floor of the ranks."""
    if "dtype" not in meta:
        raise KeyError(f"{path}: no 'dtype' in its metadata (captured before the precision was recorded; rerun its capture)")
    return str(meta["dtype"])


def _provenance(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata of a cell worth repeating next to a result (what was measured, on what)."""
    keys = ("model", "source", "revision", "dtype", "format", "dataset", "dataset_sha256", "n_prompts")
    return {key: meta[key] for key in keys if key in meta}

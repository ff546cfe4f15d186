"""One family x one layer: the modification matrices, their spectra and their alignment with the Arditi direction.

One job per (family, layer) reads the eight cells of that layer once (base/aligned x raw/chat x safety/control)
and writes one JSON per (variant, dataset), so a single variant or layer can still be targeted or deleted. It
imports numpy only: hundreds of these jobs run on CPU nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rankaudit import directions, io, matrices, spectra

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
    `outputs[dataset][variant]` the JSON to write.
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
    refusal_direction = directions.difference_in_means(arrays["safety"]["a_chat"], arrays["control"]["a_chat"])
    settings = {
        "read_position": read_position,
        "eps": list(eps),
        "capture_k": list(capture_k),
        "noise_draws": noise_draws,
        "seed": seed,
        "stage_version": version,
    }
    for dataset, by_variant in outputs.items():
        for variant, path in by_variant.items():
            matrix = variants[dataset][variant]
            io.write_json(path, {
                "family": family,
                "layer": layer,
                "dataset": dataset,
                "variant": variant,
                "settings": settings,
                "uncentered": spectra.spectrum_summary(matrix, eps, centered=False, null_seed=seed, null_draws=noise_draws).to_dict(),
                "centered": spectra.spectrum_summary(matrix, eps, centered=True, null_seed=seed, null_draws=noise_draws).to_dict(),
                "arditi": directions.direction_summary(matrix, refusal_direction, capture_k),
                "sources": sources[dataset],
            })
    io.write_tensors(
        direction_output,
        {"refusal_direction": refusal_direction},
        {"family": family, "layer": layer, "read_position": read_position, "norm": float(np.linalg.norm(refusal_direction)),
         "definition": "mean_safety A(chat) - mean_control A(chat), float64, unnormalised", "stage_version": version},
    )


def _provenance(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata of a cell worth repeating next to a result (what was measured, on what)."""
    keys = ("model", "source", "revision", "format", "dataset", "dataset_sha256", "n_prompts")
    return {key: meta[key] for key in keys if key in meta}

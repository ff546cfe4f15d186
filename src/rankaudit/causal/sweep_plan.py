"""Planning one sweep job (METHODS §5): the band layers, the bases read from the captured cells, the k grid, the
conditions' rows and the parts the job is kept on disk in as they finish (numpy only; no torch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rankaudit import io
from rankaudit.batched_ablation import RowIntervention
from rankaudit.directions import top_directions
from rankaudit.sweeps import Condition, band_layers, basis_matrix, k_grid


def sweep_bands(n_blocks: int, section: Mapping[str, Any]) -> dict[str, list[int]]:
    """The layers of each configured band for a model of `n_blocks` blocks."""
    return {name: band_layers(n_blocks, *spec["range"], spec["count"]) for name, spec in section["bands"].items()}


def band_matrices(basis: str, cells: Mapping[int, Mapping[str, Mapping[str, str]]], bands: Mapping[str, Sequence[int]],
                  read_position: str) -> dict[int, np.ndarray]:
    """M_basis (training split) at every band layer, read from the captured cells."""
    layers = sorted({layer for band in bands.values() for layer in band})
    missing = [layer for layer in layers if layer not in cells]
    if missing:
        raise KeyError(f"causal.bands: layers {missing} were not captured (capture.layers must include them)")
    matrices = {}
    for layer in layers:
        loaded = {dataset: {key: io.read_tensors(path)[0][read_position] for key, path in by_key.items()}
                  for dataset, by_key in cells[layer].items()}
        matrices[layer] = basis_matrix(basis, loaded["safety"], loaded.get("control"))
    return matrices


def sweep_bases(per_layer: Mapping[int, np.ndarray], ranks: Mapping[int, int], bands: Mapping[str, Sequence[int]],
                section: Mapping[str, Any]) -> tuple[dict[str, dict[int, np.ndarray]], list[int], dict[str, Any]]:
    """Per band and layer the top singular basis of M_basis, the k grid and a record of it.

    `per_layer[layer]` is M_basis at that band layer (`band_matrices`) and `ranks[layer]` its numerical rank;
    every rank must be >= 1.
    """
    rank = min(ranks.values())
    ks = k_grid(section["k_grid"], rank)
    k_max = min(rank, max(max(ks), section["n_single"]))
    tops = {layer: top_directions(matrix, k_max) for layer, matrix in per_layer.items()}
    record = {"bands": dict(bands), "ranks": {str(l): r for l, r in ranks.items()}, "k_grid": ks, "k_max": k_max,
              "read_position": section["read_position"], "n_rows": {str(l): int(m.shape[0]) for l, m in per_layer.items()}}
    return {name: {layer: tops[layer] for layer in band} for name, band in bands.items()}, ks, record


def sweep_parts(conditions: Sequence[Condition]) -> dict[str, list[int]]:
    """The sweep's parts (kept on disk as they finish, so a killed sweep resumes): the baseline, then per band its
    cumulative conditions, its single directions, and its random draws of each k; {part name: condition indices}.

    Each part's conditions share batches; the parts run one after another, in the order of `plan_conditions`, so the
    tables list the conditions in that order whether or not the job was interrupted.
    """
    groups: dict[str, list[int]] = {}
    for index, condition in enumerate(conditions):
        if condition.kind == "baseline":
            name = "baseline"
        elif condition.kind == "random":
            name = f"{condition.band}__random_k{condition.k}"
        else:
            name = f"{condition.band}__{condition.kind}"
        if name in groups and groups[name][-1] != index - 1:
            raise ValueError(f"sweep part {name!r}: its conditions are not consecutive in the plan")
        groups.setdefault(name, []).append(index)
    return groups


def sweep_rows(conditions: Sequence[Condition], judge_random: bool) -> list[tuple[dict[str, Any], RowIntervention, bool]]:
    """(labels, intervention, judged) per planned condition, in plan order; random draws are judged only when
    `causal.evaluation.random_generation` is set (`judge_random`)."""
    return [({"condition": c.name, "band": c.band, "kind": c.kind, "k": c.k,
              "direction": c.direction if c.direction is not None else -1, "draw": c.draw if c.draw is not None else -1},
             RowIntervention(bases=c.bases), c.kind != "random" or judge_random) for c in conditions]

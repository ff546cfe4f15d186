"""Entry points of rules/limits.smk: one job per family x layer, the tables and the per-family figure.

`analyse_limits_layer` reads one layer's cells once (checking that cells subtracted row by row share one prompt list
and that concept rows come in pairs) and writes `results/{family}/limits/layer_{layer}.json`, the record lists of
`rankaudit.limits.records`; `write_limits_tables` concatenates them into `rankaudit.limits.tables` and the section of
`rankaudit.limits.claims`, whose every statement is computed from those tables against documented thresholds;
`plot_limits` draws `rankaudit.limits.figures`. numpy/pandas/matplotlib only: these jobs never import torch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rankaudit import degeneracy, io, matrices
from rankaudit.limits.claims import ClaimThresholds, limits_section
from rankaudit.limits.figures import limits_figure
from rankaudit.limits.records import RECORD_KINDS, LimitsSettings, layer_limit_records
from rankaudit.limits.tables import TITLES, limits_tables
from rankaudit.stages.spectra import read_cell

# --- the per-layer job ---------------------------------------------------------------------------------------------


def check_pair_order(prompt_file: str, n_rows: int) -> None:
    """Concept rows must run pair 0 a, pair 0 b, pair 1 a, ... so that rows 2i and 2i+1 are one pair."""
    frame = pd.read_parquet(prompt_file, columns=["pair", "side"])
    if len(frame) != n_rows:
        raise ValueError(f"{prompt_file}: {len(frame)} prompts but the activations have {n_rows} rows")
    sides = frame["side"].to_numpy(dtype=object)
    pairs = frame["pair"].to_numpy()
    if n_rows % 2 or not (np.all(sides[0::2] == "a") and np.all(sides[1::2] == "b") and np.array_equal(pairs[0::2], pairs[1::2])):
        raise ValueError(f"{prompt_file}: concept rows are not ordered pair i side a, pair i side b")


def _check_same_prompts(cells: Mapping[str, Mapping[str, Any]]) -> None:
    """Cells subtracted row by row must have been captured on one prompt list (same dataset fingerprint and count)."""
    fingerprints = {path: (meta.get("dataset_sha256"), meta.get("n_prompts")) for path, meta in cells.items()}
    if len(set(fingerprints.values())) > 1:
        raise ValueError(f"cells subtracted row by row were captured on different prompt lists: {fingerprints}")


def _provenance(path: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    return {"path": path, **{key: meta[key] for key in ("model", "format", "dataset", "dataset_sha256", "n_prompts") if key in meta}}


def analyse_limits_layer(
    *,
    family: str,
    layer: int,
    cells: Mapping[str, Any],
    models: Mapping[str, str],
    concept_prompts: Mapping[str, str],
    output: str,
    read_position: str,
    settings: Mapping[str, Any],
    version: int,
) -> None:
    """Read one family x layer's cells, compute every limits record and write them to `output` (JSON).

    `cells` = {"safety": {"aligned": path, "base": path}, "references": {name: path},
    "concepts": {concept: {role: {fmt: path}}}}, all at this layer; `models` maps role (base, aligned) to model
    name; `concept_prompts[concept]` is the selected prompt table, used to check the pair order of the rows.
    """
    limits = LimitsSettings.from_config(settings)
    where = f"family {family}, layer {layer}"
    a_chat, a_meta = read_cell(cells["safety"]["aligned"], read_position)
    b_chat, b_meta = read_cell(cells["safety"]["base"], read_position)
    safety_meta = {cells["safety"]["aligned"]: a_meta, cells["safety"]["base"]: b_meta}
    references = {}
    for name, path in cells["references"].items():
        unsafe, meta = read_cell(path, read_position)
        safety_meta[path] = meta
        references[name] = matrices.shift_matrix(unsafe, b_chat)
    _check_same_prompts(safety_meta)
    sources = {"safety": {path: _provenance(path, meta) for path, meta in safety_meta.items()}, "concepts": {}}
    concepts = {}
    for concept, by_role in cells["concepts"].items():
        concept_meta = {}
        for role, by_format in by_role.items():
            for fmt, path in by_format.items():
                rows, meta = read_cell(path, read_position)
                check_pair_order(concept_prompts[concept], rows.shape[0])
                concept_meta[path] = meta
                concepts[(concept, role, fmt)] = matrices.concept_pair_matrix(rows[0::2], rows[1::2])
        _check_same_prompts(concept_meta)
        sources["concepts"][concept] = {path: _provenance(path, meta) for path, meta in concept_meta.items()}
    records = layer_limit_records(matrices.shift_matrix(a_chat, b_chat), concepts, references, limits, where=where,
                                  layer=layer, zero_tolerance=degeneracy.zero_tolerance(degeneracy.activation_scale([a_chat, b_chat])))
    for kind, rows in records.items():
        for row in rows:
            row["family"] = family
            if kind == "lrh":
                row["model"] = models[row["model_role"]]
    io.write_json(output, {
        "family": family, "layer": layer, "models": dict(models), "read_position": read_position,
        "settings": dataclasses.asdict(limits), "stage_version": version, "sources": sources, "records": records,
    })



# --- aggregation into tables and the figure ---------------------------------------------------------------------


def load_records(paths: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Concatenate the per-layer records of every JSON into one frame per record kind."""
    rows: dict[str, list[dict]] = {kind: [] for kind in RECORD_KINDS}
    for path in paths:
        payload = json.loads(Path(path).read_text())
        for kind in RECORD_KINDS:
            rows[kind] += payload["records"][kind]
    return {kind: pd.DataFrame(rows[kind]) for kind in RECORD_KINDS}


def write_limits_tables(layer_paths: Sequence[str], table_dir: str, section_path: str, headline_eps: float,
                        claims: Mapping[str, Any], floor_paths: Sequence[str] = ()) -> dict[str, pd.DataFrame]:
    """Write every limits table under `table_dir` and the generated section to `section_path`; return the tables.

    `floor_paths`: the precision-floor tables of the families captured below float32 (their claims say which ranks
    round-off could change)."""
    tables = limits_tables(load_records(layer_paths), headline_eps)
    for name, table in tables.items():
        io.write_table(table, Path(table_dir) / name, title=TITLES[name])
    floor = pd.concat([pd.read_parquet(path) for path in floor_paths], ignore_index=True) if floor_paths else None
    text = limits_section(tables, headline_eps, ClaimThresholds.from_config(claims), floor)
    with io.atomic_path(section_path) as tmp:
        tmp.write_text(text)
    return tables


def plot_limits(layer_paths: Sequence[str], output: str, family: str, headline_eps: float) -> None:
    """Write the family's limits figure (`rankaudit.limits.figures.limits_figure`) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = limits_figure(load_records(layer_paths), family, headline_eps)
    with io.atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

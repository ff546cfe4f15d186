"""One family: the precision floor of every variant at every layer, from the run's and the float32 captures.

Reads, per layer, the first m prompts of the run's eight cells (base/aligned x raw/chat x safety/control) and the
same m prompts captured in float32 (`capture_float32_<model>`; a model that already runs in float32 is its own
reference), and writes one table (parquet + CSV + markdown). numpy/pandas only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from rankaudit import io, precision, spectra

logger = logging.getLogger(__name__)

TITLE = ("Precision floor: ||M_run - M_float32||_F^2 / ||M_float32||_F^2 on the first m prompts of each cell, with "
         "rank_eps in both precisions; within_precision_floor marks ranks the run's precision could have changed")


def _first_rows(path: str, read_position: str, m: int) -> tuple[np.ndarray, dict]:
    tensors, meta = io.read_tensors(path)
    if read_position not in tensors:
        raise KeyError(f"{path}: no {read_position!r} activations (has {sorted(tensors)})")
    values = tensors[read_position]
    if values.shape[0] < m:
        raise ValueError(f"{path}: {values.shape[0]} prompts, fewer than capture.precision_floor_prompts = {m}")
    return values[:m].astype(np.float64), meta


def write_precision_floor(
    *,
    family: str,
    cells: Mapping[int, Mapping[str, Mapping[str, str]]],
    float32_cells: Mapping[int, Mapping[str, Mapping[str, str]]],
    output_stem: str,
    read_position: str,
    eps: Sequence[float],
    prompts: int,
) -> None:
    """`cells[layer][dataset][key]` are the run's activation files, `float32_cells` the float32 ones (same keys)."""
    rows = []
    for layer in sorted(cells):
        run: dict[str, dict[str, np.ndarray]] = {}
        reference: dict[str, dict[str, np.ndarray]] = {}
        dtypes = []
        for dataset, paths in cells[layer].items():
            run[dataset], reference[dataset] = {}, {}
            for key, path in paths.items():
                run[dataset][key], meta = _first_rows(path, read_position, prompts)
                reference_path = float32_cells[layer][dataset][key]
                reference[dataset][key], reference_meta = _first_rows(reference_path, read_position, prompts)
                if reference_meta.get("dtype") not in precision.REFERENCE_DTYPES:
                    raise ValueError(f"{reference_path}: captured in {reference_meta.get('dtype')}, not float32")
                if reference_meta.get("dataset_sha256") != meta.get("dataset_sha256"):
                    raise ValueError(f"{reference_path} and {path}: captured from different prompt sets")
                dtypes.append(meta["dtype"])
        rows += precision.floor_rows(family=family, layer=layer, run_cells=run, float32_cells=reference, eps=eps,
                                     run_dtype=spectra.coarsest_dtype(dtypes))
    frame = precision.floor_frame(rows)
    io.write_table(frame, output_stem, title=f"{family}: {TITLE}")
    logger.info("%s: %d of %d ranks within the precision floor", family, int(frame["within_precision_floor"].sum()), len(frame))

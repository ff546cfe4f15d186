"""Paper-sized spectra: n = 200 prompts, d = 4096, 33 layers, every variant, through the real per-layer job.

Writes synthetic activation cells (low-rank shift + noise) once, then times `analyse_layer` over 33 layers
(6 safety variants + 5 control variants, uncentered and centered, plus the direction numbers) against a baseline
run side by side: numpy's full SVD of the same matrices. Reports the total and the ratio. Run single-threaded
BLAS (as the workflow's `threads: 1` rules do) so two jobs can share the 2 cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import tempfile
import time
from pathlib import Path

import numpy as np

from benchcommon import wait_for_idle

from rankaudit import io, matrices
from rankaudit.stages.layer_analysis import CELL_KEYS, analyse_layer
from rankaudit.plan import VARIANTS_PER_DATASET

N, D, LAYERS = 200, 4096, 33


def write_cells(root: Path, rng: np.random.Generator) -> dict:
    cells = {}
    for dataset in ("safety", "control"):
        base = rng.standard_normal((N, D)).astype(np.float32)
        shift = (rng.standard_normal((N, 8)) @ rng.standard_normal((8, D))).astype(np.float32)
        arrays = {"b_raw": base, "b_chat": base + 0.1 * rng.standard_normal((N, D)).astype(np.float32),
                  "a_raw": base + 0.5 * shift, "a_chat": base + shift}
        cells[dataset] = {}
        for key in CELL_KEYS:
            path = root / f"{dataset}_{key}.safetensors"
            io.write_tensors(path, {"last": arrays[key]}, {"dataset": dataset})
            cells[dataset][key] = str(path)
    return cells


def main() -> None:
    idle = wait_for_idle(threshold=1.0, max_wait=300)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cells = write_cells(root, rng)
        started = time.perf_counter()
        for layer in range(LAYERS):
            outputs = {dataset: {v: str(root / f"out_{layer}_{dataset}_{v}.json") for v in variants}
                       for dataset, variants in VARIANTS_PER_DATASET.items()}
            analyse_layer(family="bench", layer=layer, cells=cells, outputs=outputs,
                          direction_output=str(root / f"dir_{layer}.safetensors"), read_position="last",
                          eps=[0.01, 0.05, 0.1, 0.2], capture_k=[1, 3, 5, 10, 20, 50], noise_draws=1, seed=0, version=0)
        ours = time.perf_counter() - started
        loaded = {d: {k: io.read_tensors(p)[0]["last"].astype(np.float64) for k, p in by.items()} for d, by in cells.items()}
        variants = {"safety": matrices.all_matrices(loaded["safety"], loaded["control"]),
                    "control": matrices.dataset_matrices(**loaded["control"])}
        started = time.perf_counter()
        for _ in range(LAYERS):
            for by_variant in variants.values():
                for matrix in by_variant.values():
                    for centered in (False, True):
                        work = matrix - matrix.mean(axis=0) if centered else matrix
                        np.linalg.svd(work, full_matrices=False)
        baseline = time.perf_counter() - started
    n_matrices = LAYERS * sum(len(v) for v in VARIANTS_PER_DATASET.values())
    print(f"paper-sized spectra: n={N}, d={D}, {LAYERS} layers, {n_matrices} matrices x (uncentered, centered), "
          f"4 eps, directions; {idle}")
    print(f"  analyse_layer, all layers (incl. reading cells, writing JSON): {ours:.1f} s  (target: < 60 s)")
    print(f"  baseline, numpy full SVD of the same matrices only:           {baseline:.1f} s")
    print(f"  ratio ours / baseline: {ours / baseline:.2f}")


if __name__ == "__main__":
    main()

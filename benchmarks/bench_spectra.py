"""Paper-sized spectra: one layer at n = 200 prompts, d = 4096, every variant, through the real per-layer job.

Writes synthetic activation cells (low-rank shift + noise) once, then times `analyse_layer` on one layer (6 safety
variants + 5 control variants, uncentered and centered, every eps below, the Gaussian null, the direction
numbers, reading the cells and writing the JSON) against a baseline run side by side: numpy's singular values of the same
22 matrices (`np.linalg.svd(..., compute_uv=False)`, all that the rank measures need) and nothing else.
The nulls' per-shape caches are cleared before each call, since every workflow job is a fresh process.
Single-threaded BLAS, as the workflow's `threads: 1` rules run; medians of interleaved rounds.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys
import tempfile
from pathlib import Path

import numpy as np
from benchcommon import benchmark_arguments, interleaved, ratio_rows, report, wait_for_idle

from rankaudit import io, matrices, spectra
from rankaudit.plan import VARIANTS_PER_DATASET
from rankaudit.stages.spectra import CELL_KEYS, analyse_layer

N, D = 200, 4096
EPS = [0.01, 0.05, 0.1, 0.2]
CAPTURE_K = [1, 3, 5, 10, 20, 50]


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


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_arguments(__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cells = write_cells(root, rng)
        outputs = {dataset: {v: str(root / f"out_{dataset}_{v}.json") for v in variants}
                   for dataset, variants in VARIANTS_PER_DATASET.items()}
        loaded = {d: {k: io.read_tensors(p)[0]["last"].astype(np.float64) for k, p in by.items()} for d, by in cells.items()}
        variants = [*matrices.all_matrices(loaded["safety"], loaded["control"]).values(),
                    *matrices.dataset_matrices(**loaded["control"]).values()]

        def ours() -> None:
            for cached in [value for value in vars(spectra).values() if hasattr(value, "cache_clear")]:
                cached.cache_clear()
            analyse_layer(family="bench", layer=0, cells=cells, outputs=outputs,
                          direction_output=str(root / "direction.safetensors"), read_position="last", eps=EPS,
                          capture_k=CAPTURE_K, noise_draws=1, seed=0, version=0)

        def numpy_svd() -> None:
            for matrix in variants:
                for work in (matrix, matrix - matrix.mean(axis=0)):
                    np.linalg.svd(work, compute_uv=False)

        print(wait_for_idle(args.idle_load, args.max_wait), flush=True)
        times = interleaved({"analyse_layer": ours, "numpy_svd": numpy_svd}, args.rounds)
    print(f"one paper-sized layer: n={N}, d={D}, {len(variants)} matrices x (uncentered, centered), eps {EPS}")
    for name, timing in times.items():
        print(f"  {name:<14} median {timing.wall:.2f} s wall, {timing.cpu:.2f} s CPU")
    note = (f"one layer, n={N}, d={D}, {len(variants)} variants x (uncentered, centered), eps {EPS}, null, directions, "
            "cell I/O; numpy: singular values only")
    report([ratio_rows("spectra of one paper-sized layer: analyse_layer / numpy SVD of the same matrices (time)",
                       times["analyse_layer"], times["numpy_svd"], "<= 1", note)], args.ratios_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

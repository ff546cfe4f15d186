"""What one calibration cell costs: the base network, FullFT and one regularised (lambda = 5) fine-tune, timed on
the demo config, then the CPU time of the default grid extrapolated from them (issue 5 asks the grid to finish in
under 10 minutes on 2 cores). Single-threaded, as the workflow's `threads: 1` calibration jobs run.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import tempfile
import time
from pathlib import Path

import torch
import yaml
from benchcommon import wait_for_idle

from rankaudit.calibration import grid
from rankaudit.calibration.jobs import run_base_job, run_finetune_job

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    torch.set_num_threads(1)
    print(wait_for_idle(threshold=1.0, max_wait=120), flush=True)
    calibration = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["calibration"]
    cell = grid.cell_slice(calibration)
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        run_base_job(cell, 0, root / "base.safetensors", root / "base.json")
        seconds["base"] = time.perf_counter() - started
        for setting in ("fullft", "dist5"):
            started = time.perf_counter()
            run_finetune_job(cell, 0, setting, root / "base.safetensors", root / f"{setting}.safetensors", root / f"{setting}.json")
            seconds[setting] = time.perf_counter() - started
    n_seeds = len(calibration["seeds"])
    n_plain = 1 + len(calibration.get("unsafe_lambdas", [0, 5]))  # fullft and the unsafe variants cost about a FullFT
    n_regularised = len([lam for lam in calibration["lambdas"] if lam > 0])
    grid_cpu = n_seeds * (seconds["base"] + n_plain * seconds["fullft"] + n_regularised * seconds["dist5"])
    for name, value in seconds.items():
        print(f"  one {name} cell (train + measure): {value:.1f} s")
    print(f"  default grid ({n_seeds} seeds, {n_regularised} regularised settings): ~{grid_cpu / 60:.1f} CPU-minutes, "
          f"~{grid_cpu / 120:.1f} min of wall time on 2 cores plus ~3 s of process start-up per job")


if __name__ == "__main__":
    main()

"""benchmarks/gpu_check.py --tiny: the GPU check's code path runs on the CPU, prints every figure, and prices the
study from config/paper.yaml with the counts the config implies (so the real check on a GPU cannot fail on them)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml

from rankaudit import plan

REPO = Path(__file__).resolve().parents[2]
FIELDS = ("capture tokens/s", "capture MFU", "conditions scored/s", "generation tokens/s", "peak memory GiB",
          "abliteration hooks vs weights", "GPU-hours, as configured", "GPU-hours, conditions batched",
          "whole study (config/paper.yaml)")
BF16_RELATIVE = 0.05  # a few bf16 roundings (2^-8 each) through a few blocks


def test_tiny_gpu_check_prints_finite_figures_and_prices_the_paper_study(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--json", str(out)],
                            cwd=REPO, env=env, text=True, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for field in FIELDS:
        assert field in result.stdout, field
    report = json.loads(out.read_text())

    assert set(report["figures"]) == {"llama", "gemma2", "qwen2"}
    for family, figures in report["figures"].items():
        numbers = {key: value for key, value in figures.items() if isinstance(value, (int, float))}
        assert all(math.isfinite(value) and value > 0 for value in numbers.values()), (family, numbers)
        # hooks and edited weights compute the same ablation, up to bf16 rounding
        assert figures["abliteration_max_relative_difference"] < BF16_RELATIVE, family

    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    causal = config["causal"]
    stages = {row["stage"]: row for row in report["study"]}
    assert {name for name in stages if name.startswith("capture ")} == {f"capture {m}" for m in plan.captured_models(config)}
    per_band = len(causal["k_grid"]) + causal["n_single"] + len(causal["k_grid"]) * causal["random_draws"]
    for family in causal["families"]:
        assert stages[f"sweeps {family}"]["conditions"] == len(causal["bases"]) * (1 + len(causal["bands"]) * per_band)
        assert stages[f"arditi {family}"]["conditions"] == 3 + causal["random_draws"]
        generated = causal["evaluation"]["n"] * 2 * causal["generation"]["max_new_tokens"]
        assert stages[f"sweeps {family}"]["generated_tokens"] == stages[f"sweeps {family}"]["conditions"] * generated
    totals = [report[key] for key in ("total_hours", "total_hours_batched", "total_hours_batched_scored_random")]
    assert all(math.isfinite(value) and value > 0 for value in totals)
    assert totals[2] < totals[1]  # same rates, fewer generated tokens

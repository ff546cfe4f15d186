"""The limits stage through Snakemake: tiny random Llama base / aligned / unsafe models, real capture, real jobs."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
LAYERS = [1, 2]


def _config(models: dict[str, Path]) -> dict:
    return {
        "prompts": {
            "generated": {"seed": 0, "n_harmful": 120, "n_benign": 120,
                          "split_fractions": {"train": 0.6, "val": 0.2, "test": 0.2},
                          "n_translation_pairs": 30, "n_question_statement_pairs": 30},
            "public": {},
        },
        "models": {name: {"source": str(path), "n_layers": 3} for name, path in models.items()},
        "families": {"llama": {"base": "llama_base", "aligned": "llama_aligned", "references": ["llama_unsafe"]}},
        "runtime": {"device": "cpu", "dtype": "float32", "batch_size": 32},
        "datasets": {"safety": {"dataset": "demo_harmful", "split": "train", "n": 60},
                     "control": {"dataset": "demo_benign", "split": "train", "n": 60},
                     "concepts": ["concept_en_fr"]},
        "capture": {"layers": LAYERS, "mean_last_k": 4, "system_prompt": "default"},
        "audit": {"read_position": "last", "eps": [0.05], "noise_draws": 1, "seed": 0},
    }


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        [str(SNAKEMAKE), "--snakefile", "Snakefile", "--configfile", "config.yaml", "--cores", "1", *args, "limits_all"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900,
    )


@pytest.mark.slow
def test_limits_stage_runs_and_checks_the_bound(tmp_path, tiny_family_factory):
    models = {f"llama_{role}": tiny_family_factory("llama", seed=seed).path
              for role, seed in (("base", 0), ("aligned", 1), ("unsafe", 2))}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_config(models)))
    (tmp_path / "Snakefile").write_text("".join(
        f'include: "{REPO}/rules/{name}.smk"\n' for name in ("common", "prompts", "manifests", "capture", "limits")))

    run = _snakemake(tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]

    tables = tmp_path / "results" / "tables"
    pairs = pd.read_parquet(tables / "limits_kappa_pairs.parquet")
    assert sorted(pairs["layer"].unique()) == LAYERS and set(pairs["reference"]) == {"llama_unsafe"}
    assert pairs["bound_holds"].all()
    assert (pairs["kappa"] <= 2.0 / pairs["eps_r"] * (1 + 1e-9)).all()
    per_reference = pd.read_parquet(tables / "limits_kappa_per_reference.parquet")
    assert per_reference["bound_holds_all"].all() and per_reference["layers"].tolist() == [len(LAYERS)]
    lrh = pd.read_parquet(tables / "limits_lrh_baseline.parquet")
    assert set(zip(lrh["model_role"], lrh["format"])) == {(r, f) for r in ("base", "aligned") for f in ("raw", "chat")}
    assert set(lrh["n_concept"]) == {30} and set(lrh["n_safety"]) == {60}
    resampled = pd.read_parquet(tables / "limits_rank_resampling.parquet")
    assert set(resampled["sub_draws"]) == {50} and set(resampled["eps"]) == {0.01, 0.05, 0.1, 0.2}
    sweep = pd.read_parquet(tables / "limits_n_sweep.parquet")
    assert sorted(sweep["n"].unique()) == [50, 60] and sweep.loc[sweep["n"] == 60, "capped"].all()
    section = (tables / "limits_section.md").read_text()
    assert "### llama" in section and "Spectral gap, reference llama_unsafe" in section
    assert (tmp_path / "results" / "figures" / "llama" / "limits.png").stat().st_size > 0

    again = _snakemake(tmp_path, "--dry-run")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

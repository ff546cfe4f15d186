"""rules/prompts.smk in a real Snakemake run: both rules, disjoint dataset names, nothing left to do after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from rankaudit.prompts import read_prompt_set

REPO_ROOT = Path(__file__).resolve().parents[2]
MIRROR = (REPO_ROOT / ".." / "shared" / "data" / "refusal_direction").resolve()
SNAKEFILE = f"""
STAGE_VERSION = {{"prompts": 1}}
configfile: "config.yaml"
include: "{REPO_ROOT / 'rules' / 'common' / 'prompts.smk'}"
include: "{REPO_ROOT / 'rules' / 'prompts.smk'}"

rule all:
    input:
        expand("results/prompts/{{dataset}}.parquet", dataset=PROMPT_SETS),
"""
GENERATED = {
    "seed": 0,
    "n_harmful": 40,
    "n_benign": 40,
    "split_fractions": {"train": 0.5, "val": 0.25, "test": 0.25},
    "n_translation_pairs": 50,
    "n_question_statement_pairs": 50,
}


def workdir(tmp_path: Path, public: dict, mirror: str | None = None) -> Path:
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    prompts = {"generated": GENERATED, "public": public, "mirror": mirror}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"prompts": prompts}))
    return tmp_path


def snakemake(directory: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "snakemake", "--cores", "1", "--directory", str(directory), *args]
    return subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=300)


def test_rules_build_sets_refuse_a_lost_download_then_have_nothing_to_do(tmp_path):
    """One real run (kept small: each job is a fresh Python) covering both rules and a failing download."""
    public = {"lost": {"url": "file:///nonexistent/rankaudit/lost.json", "sha256": "0" * 64, "format": "json"}}
    expected = {"demo_harmful": 40, "concept_en_fr": 100}
    if MIRROR.is_dir():
        public["harmful_val"] = {
            "url": "{mirror}/dataset/splits/harmful_val.json",
            "sha256": "305f1d1e6dfa6c50a32d24a18ef815f42b5441eb83e6d7767d242107162fd9f4",
            "format": "json",
            "category_column": "category",
            "split": "val",
        }
        expected["harmful_val"] = 39
    directory = workdir(tmp_path, public, MIRROR.as_uri())
    built = [f"results/prompts/{name}.parquet" for name in expected]
    run = snakemake(directory, *built, "results/prompts/lost.parquet", "--keep-going")
    assert run.returncode != 0
    prompts = directory / "results" / "prompts"
    assert {name: len(read_prompt_set(prompts / f"{name}.parquet")) for name in expected} == expected
    assert not (prompts / "lost.parquet").exists() and not (prompts / "lost.provenance.json").exists()
    log = (directory / "logs" / "prompts" / "fetch" / "lost.log").read_text()
    assert "'lost': cannot download file:///nonexistent/rankaudit/lost.json" in log
    provenance = json.loads((prompts / "demo_harmful.provenance.json").read_text())
    assert provenance["stage_version"] == 1 and provenance["settings"]["n_harmful"] == 40
    assert (directory / "logs" / "prompts" / "generated" / "demo_harmful.log").exists()
    again = snakemake(directory, *built, "--dry-run")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

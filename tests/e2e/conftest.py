"""The demo workflow, run once per test session into a temporary directory, for the end-to-end tests.

The run uses the real Snakefile and the embedded demo config (organisms built and trained from scratch), with two
changes that keep the session inside CI's budget: the MLP calibration grid runs one seed instead of three (its own
tests cover the grid), and the ablation sweeps run the template and DiD bases (the naive basis runs the same code). Every test in tests/e2e reads this one run's outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 2400


def snakemake(workdir: Path, config: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the project's Snakefile on `workdir` with `config`; hard-killed at `timeout` (SIGTERM makes it wait)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = ["timeout", "-s", "KILL", str(timeout), sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def demo_config() -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["calibration"]["seeds"] = config["calibration"]["seeds"][:1]
    config["causal"]["bases"] = ["template", "did"]
    return config


@pytest.fixture(scope="session")
def run_snakemake():
    """The `snakemake` runner above, for tests that re-run or dry-run the finished demo."""
    return snakemake


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(working directory, config file) of a finished demo run.

    RANKAUDIT_E2E_WORKDIR names the working directory of a demo run finished earlier (with its `demo.yaml`): the
    assertions then run against it without re-running the workflow.
    """
    finished = os.environ.get("RANKAUDIT_E2E_WORKDIR")
    if finished:
        return Path(finished), Path(finished) / "demo.yaml"
    workdir = tmp_path_factory.mktemp("demo")
    config = workdir / "demo.yaml"
    config.write_text(yaml.safe_dump(demo_config(), sort_keys=False))
    result = snakemake(workdir, config, "--cores", "2", timeout=RUN_TIMEOUT_S)
    (workdir / "snakemake.out").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        pytest.fail(f"the demo workflow failed (rc {result.returncode}); log tail:\n{(result.stdout + result.stderr)[-6000:]}")
    return workdir, config

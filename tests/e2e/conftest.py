"""The demo workflow, run once per test session into a temporary directory, for the end-to-end tests.

The run uses the real Snakefile and the embedded demo config (organisms built and trained from scratch), with two
changes that keep the session inside CI's budget: the MLP calibration grid runs one seed instead of three (its own
tests cover the grid), and the ablation sweeps run the template and DiD bases (the naive basis runs the same code).
Every test in tests/e2e reads this one run's outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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


CODE_STAMP = "code_version.json"
# what a demo run's outputs depend on: the package, the workflow, its configs, schemas, reference data and captions
CODE_GLOBS = ("src/rankaudit/**/*.py", "Snakefile", "rules/**/*.smk", "workflow_scripts/*.py", "config/**/*.yaml",
              "reference/*.yaml", "report/*.rst")


def code_version() -> dict:
    """sha256 of every file a demo run's outputs depend on, and of the e2e demo config (tests/e2e/conftest.py)."""
    digest = hashlib.sha256()
    for pattern in CODE_GLOBS:
        for path in sorted(REPO.glob(pattern)):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    config = hashlib.sha256(yaml.safe_dump(demo_config(), sort_keys=True).encode()).hexdigest()
    return {"code_sha256": digest.hexdigest(), "demo_config_sha256": config}


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

    RANKAUDIT_E2E_WORKDIR names a working directory to keep between sessions: empty or absent, the demo runs there;
    holding a run of this very code (the CODE_STAMP file matches `code_version()`), the assertions reuse it; holding a
    run of other code, the session fails rather than judge today's code by yesterday's outputs.
    """
    kept = os.environ.get("RANKAUDIT_E2E_WORKDIR")
    workdir = Path(kept) if kept else tmp_path_factory.mktemp("demo")
    config = workdir / "demo.yaml"
    if kept_run_is_current(workdir):
        return workdir, config
    workdir.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(demo_config(), sort_keys=False))
    result = snakemake(workdir, config, "--cores", "2", timeout=RUN_TIMEOUT_S)
    (workdir / "snakemake.out").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        pytest.fail(f"the demo workflow failed (rc {result.returncode}); log tail:\n{(result.stdout + result.stderr)[-6000:]}")
    (workdir / CODE_STAMP).write_text(json.dumps(code_version(), indent=1, sort_keys=True))
    return workdir, config


def kept_run_is_current(workdir: Path) -> bool:
    """True when `workdir` holds a finished demo run of this checkout; False when it is empty or absent (run it
    there). A run of other code or config, or a non-empty folder without a stamp, fails the session."""
    stamp = workdir / CODE_STAMP
    if stamp.exists():
        if json.loads(stamp.read_text()) != code_version():
            pytest.fail(f"{workdir} holds a demo run of other code or another demo config ({stamp} differs from this "
                        "checkout's); delete the folder to run the demo there again")
        return True
    if workdir.exists() and any(workdir.iterdir()):
        pytest.fail(f"{workdir} is not empty and has no {CODE_STAMP}: not a demo run of this code")
    return False


# what docutils prints for a caption or the landing page it cannot render cleanly, e.g. "(ERROR/3) Undefined
# substitution referenced"
DOCUTILS_MESSAGE = re.compile(r"\((?:INFO|WARNING|ERROR|SEVERE)/\d\)")


@pytest.fixture(scope="session")
def demo_report(demo_run: tuple[Path, Path]) -> tuple[Path, str]:
    """(report.html of the finished demo, what `snakemake --report` printed), built once per session; a failed
    build or any docutils message fails every test that uses it."""
    workdir, config = demo_run
    report = workdir / "report.html"
    result = snakemake(workdir, config, "--report", str(report))
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed[-3000:]
    assert not DOCUTILS_MESSAGE.search(printed), [line for line in printed.splitlines() if DOCUTILS_MESSAGE.search(line)]
    return report, printed

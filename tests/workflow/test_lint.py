"""Lint and format checks, so that CI fails on drift: ruff on the Python tree, snakefmt on the workflow files, and
Snakemake's own linter on the demo and paper configs (no findings at all). Each failure prints the tool's output.

The commands that fix what these report are in docs/DEVELOPING.md ("Lint and format").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKFLOW_FILES = ["Snakefile", *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "rules").rglob("*.smk"))]


def tool(name: str) -> str:
    """The tool next to this interpreter (the test extras install ruff and snakefmt there)."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed next to {sys.executable}: install the test extras (pip install -e '.[test]')")
    return str(path)


def run(command: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_python_is_ruff_clean():
    result = run([tool("ruff"), "check", "--no-cache", "."])
    assert result.returncode == 0, f"ruff check . reported:\n{result.stdout}{result.stderr}"


def test_workflow_files_are_snakefmt_formatted():
    result = run([tool("snakefmt"), "--check", *WORKFLOW_FILES])
    assert result.returncode == 0, f"snakefmt --check would reformat:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/paper.yaml"])
def test_snakemake_lint_has_no_findings(configfile, tmp_path):
    result = run([tool("snakemake"), "--lint", "-s", str(ROOT / "Snakefile"), "--configfile", str(ROOT / configfile), "-d", str(tmp_path)])
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Lints for" not in output, f"snakemake --lint ({configfile}) reported:\n{output}"

"""Fixtures of the workflow tests: a reduced workflow (tiny local models, no organisms) run by the real Snakefile.

The building blocks live in reduced_workflow.py, next to this file, so that tests/slurm shares them (and, through
its per-session cache, the same finished run).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reduced_workflow import FAMILY_LAYERS, copy_run, finished_run, reduced_config, reduced_models, write_config

__all__ = ["finished_run", "reduced_models"]


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A private copy of the finished run (outputs, metadata, config) that a test may change."""
    return copy_run(finished_run, tmp_path / "run")


@pytest.fixture
def empty_workdir(reduced_models, tmp_path) -> Path:
    """A working directory with the reduced config and no outputs yet."""
    workdir = tmp_path / "fresh"
    workdir.mkdir()
    write_config(workdir, reduced_config(reduced_models))
    return workdir


@pytest.fixture(scope="session")
def families() -> list[str]:
    return list(FAMILY_LAYERS)

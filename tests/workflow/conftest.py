"""Fixtures of the workflow tests: a reduced workflow (tiny local models, no organisms) run by the real Snakefile.

The building blocks live in reduced_workflow.py, next to this file, so that tests/slurm shares them (and, through
its per-session cache, the same finished run).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kill_harness import KILL_TARGETS, kill_config
from reduced_workflow import (
    FAMILY_LAYERS,
    cached_dir,
    copy_run,
    finished_run,
    reduced_config,
    reduced_models,
    snakemake,
    write_config,
)

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


@pytest.fixture(scope="session")
def kill_reference_run(tmp_path_factory) -> Path:
    """An uninterrupted run of kill_harness.kill_config() up to every kill test's target, the reference the killed and
    resumed jobs are compared with (tests copy it: copy_run)."""

    def make() -> Path:
        workdir = tmp_path_factory.mktemp("kill_reference")
        write_config(workdir, kill_config())
        snakemake(workdir, "--cores", "2", *KILL_TARGETS.values())
        return workdir

    return cached_dir("kill_reference_run", make)

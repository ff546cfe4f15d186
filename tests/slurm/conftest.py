"""Fixtures of the real-SLURM tests: a controller that answers (ci/slurm/start.sh), and the reduced workflow.

Without a controller the tests are skipped with the reason; with RANKAUDIT_REQUIRE_SLURM=1 (set by .ci/run, which
starts the cluster) they fail instead, so CI can never pass by silently skipping them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from reduced_workflow import finished_run, reduced_models  # noqa: E402  (shared with tests/workflow)

__all__ = ["finished_run", "reduced_models"]


@dataclass(frozen=True)
class Cluster:
    """The running CI cluster: its state directory (logs, job completion records)."""

    state: Path

    @property
    def jobcomp_log(self) -> Path:
        return self.state / "log" / "jobcomp.log"


def _controller_answer() -> str | None:
    """None when `scontrol ping` reports the controller UP, else what went wrong."""
    try:
        result = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
    except FileNotFoundError:
        return "scontrol is not installed (bash ci/slurm/install.sh)"
    except subprocess.TimeoutExpired:
        return "scontrol ping timed out"
    if "is UP" not in result.stdout:
        first_line = (result.stdout + result.stderr).strip().splitlines()[:1]
        return f"scontrol ping: {first_line[0] if first_line else 'no answer'}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> Cluster:
    problem = _controller_answer()
    if problem:
        message = (f"no SLURM controller answers ({problem}); start one with `bash ci/slurm/start.sh` and "
                   "`source $RANKAUDIT_SLURM_STATE/env` (default state /tmp/rankaudit-slurm), or run .ci/run")
        if os.environ.get("RANKAUDIT_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return Cluster(state=Path(os.environ.get("RANKAUDIT_SLURM_STATE", "/tmp/rankaudit-slurm")))

"""Which job failures are worth a retry: out of memory and time-outs, never a deterministic error.

Snakemake's `retries` resubmits a failed job whatever the cause, with the resources of the next `attempt`. That is
right for a job SLURM killed (OUT_OF_MEMORY, TIMEOUT: the process is killed from outside and leaves no marker)
and for a Python MemoryError or torch.OutOfMemoryError, which more memory may cure. Any other exception (a bad
input, a config error, a bug, BatchOutOfMemoryError at batch size 1) fails the same way again, after loading the
model again. So the job records it: `<log>.failure.json` next to the job's log, with the error and its traceback,
and the next attempt of the same job in the same run stops at once, before any work, repeating the original
message. The Snakefile's `onstart` removes every marker (`clear_failure_markers`), so a new run, after a fix,
always runs every job; a job that succeeds removes its own.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

MARKER_SUFFIX = ".failure.json"
RETRIABLE = "out_of_memory"
DETERMINISTIC = "deterministic"


class RepeatedJobFailure(RuntimeError):
    """An earlier attempt of this job in this run failed with a deterministic error: this attempt does nothing."""


def marker_path(log_path: str | Path) -> Path:
    return Path(f"{log_path}{MARKER_SUFFIX}")


def classify(error: BaseException) -> str:
    """RETRIABLE for running out of host memory (MemoryError) or GPU memory (torch.OutOfMemoryError), else DETERMINISTIC."""
    if isinstance(error, MemoryError):
        return RETRIABLE
    torch = sys.modules.get("torch")  # a job that never imported torch cannot have raised its error
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return RETRIABLE
    return DETERMINISTIC


def record_failure(log_path: str | Path, error: BaseException) -> Path | None:
    """Write the marker of a deterministic failure (returns its path); a retriable one leaves none."""
    marker = marker_path(log_path)
    if isinstance(error, RepeatedJobFailure):
        return marker  # the original failure's marker stays as it is
    if classify(error) == RETRIABLE:
        marker.unlink(missing_ok=True)
        return None
    payload = {"log": str(log_path), "kind": DETERMINISTIC,
               "error": f"{type(error).__module__}.{type(error).__qualname__}", "message": str(error),
               "traceback": "".join(traceback.format_exception(error))}
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(payload, indent=1) + "\n")
    return marker


def refuse_repeated_failure(log_path: str | Path) -> None:
    """Raise RepeatedJobFailure, with the original error and traceback, when this job's marker exists."""
    marker = marker_path(log_path)
    try:
        payload: dict[str, Any] = json.loads(marker.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as problem:
        raise RepeatedJobFailure(f"{marker}: unreadable failure marker of an earlier attempt ({problem}); remove it "
                                 "and rerun") from None
    raise RepeatedJobFailure(
        f"not retried: an earlier attempt of this job in this run failed with a deterministic error, which another "
        f"attempt would repeat (retries are for out-of-memory and time-outs only; the marker {marker} is removed "
        f"when the next run starts). The original error: {payload['error']}: {payload['message']}\n"
        f"{payload['traceback']}")


def clear_failure_markers(log_root: str | Path = "logs") -> list[Path]:
    """Remove every failure marker under `log_root` (at the start of a run: its first attempts all run)."""
    root = Path(log_root)
    removed = sorted(root.rglob(f"*{MARKER_SUFFIX}")) if root.is_dir() else []
    for marker in removed:
        marker.unlink(missing_ok=True)
    return removed


def forget_failure(log_path: str | Path) -> None:
    """A job that succeeded removes its marker."""
    marker_path(log_path).unlink(missing_ok=True)

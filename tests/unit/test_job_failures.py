"""The retry policy inside a job: out-of-memory errors are retriable, anything else is recorded so that a retry of the
same job stops before doing any work, with the original error; a new run (clear_failure_markers) starts clean."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from rankaudit.batching import BatchOutOfMemoryError  # noqa: E402
from rankaudit.job_failures import (  # noqa: E402
    DETERMINISTIC,
    RETRIABLE,
    RepeatedJobFailure,
    classify,
    clear_failure_markers,
    marker_path,
)
from rankaudit.workflow_logging import log_to  # noqa: E402


@pytest.mark.parametrize("error, kind", [
    (MemoryError(), RETRIABLE),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"), RETRIABLE),
    (torch.cuda.OutOfMemoryError("CUDA out of memory"), RETRIABLE),
    (ValueError("results/prompts/x.parquet: row 3 is empty"), DETERMINISTIC),
    (KeyError("models.gemma_base.source"), DETERMINISTIC),
    (FileNotFoundError("resources/organisms/a/base/config.json"), DETERMINISTIC),
    (RuntimeError("CUDA error: device-side assert triggered"), DETERMINISTIC),
    (BatchOutOfMemoryError("capture: out of GPU memory with a batch of 1 row"), DETERMINISTIC),
])
def test_only_running_out_of_memory_is_retriable(error, kind):
    assert classify(error) == kind


def run_job(log, body):
    """One attempt of a workflow script: its body inside log_to, as every script under workflow_scripts/ does."""
    with log_to(str(log)):
        body()


def test_a_deterministic_error_stops_the_retry_before_any_work_with_the_original_message(tmp_path):
    log = tmp_path / "logs" / "capture" / "m.log"
    log.parent.mkdir(parents=True)
    work = []

    def failing():
        work.append("loaded the model")
        raise ValueError("results/prompts/selected/safety.parquet: row 7 holds special-token text '<|eot_id|>'")

    with pytest.raises(ValueError, match="row 7"):
        run_job(log, failing)
    marker = json.loads(marker_path(log).read_text())
    assert (marker["kind"], marker["error"]) == (DETERMINISTIC, "builtins.ValueError")
    assert "in failing" in marker["traceback"] and "row 7" in marker["message"]

    with pytest.raises(RepeatedJobFailure, match=r"not retried: an earlier attempt.*builtins.ValueError: "
                                                 r"results/prompts/selected/safety.parquet: row 7") as repeated:
        run_job(log, failing)
    assert work == ["loaded the model"]  # the second attempt did nothing
    assert "in failing" in str(repeated.value)  # the original traceback
    assert "row 7 holds special-token text" in log.read_text()  # the retry's log (rewritten) still says why
    assert json.loads(marker_path(log).read_text()) == marker  # the original marker is kept

    # a new run (the Snakefile's onstart) forgets it: the first attempt runs again, and success leaves no marker
    assert clear_failure_markers(tmp_path / "logs") == [marker_path(log)]
    run_job(log, lambda: work.append("ran again"))
    assert work == ["loaded the model", "ran again"] and not marker_path(log).exists()


@pytest.mark.parametrize("error", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory")])
def test_out_of_memory_leaves_no_marker_so_the_retry_runs(tmp_path, error):
    log = tmp_path / "job.log"

    def out_of_memory():
        raise error

    with pytest.raises(type(error)):
        run_job(log, out_of_memory)
    assert not marker_path(log).exists()
    ran = []
    run_job(log, lambda: ran.append(True))
    assert ran == [True]


def test_clearing_markers_of_an_absent_log_folder_is_a_no_op(tmp_path):
    assert clear_failure_markers(tmp_path / "nothing") == []

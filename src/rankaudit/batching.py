"""Batches of prompts through a model that survive a GPU out-of-memory: the batch is halved and redone.

A batch size that fits the GPU for short prompts can run out of memory on the longest ones (or on a smaller card
than the config was tuned on). Instead of failing the job (and the SLURM retry that would fail the same way), the
batch loop catches `torch.OutOfMemoryError`, frees the CUDA cache, halves the batch size and redoes the rows of
the failed batch; at batch size 1 it gives up with `BatchOutOfMemoryError`, which names the loop and the rows.

The reduced size is kept for the rest of the job (per loop `label`), so a later call does not pay for the same
out-of-memory again, and `job_batching_record()` gives what a job record stores: per label the initial and the
final batch size and every halving. Rows keep their order and are sliced by the current size, so when the first
batch is the one that runs out of memory, every batch holds the same rows as in a run started at the final size
(tests/unit/test_batching.py checks that the results are then bit-identical).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

Row = TypeVar("Row")
Result = TypeVar("Result")


class BatchOutOfMemoryError(RuntimeError):
    """Out of GPU memory with a batch of one row: no smaller batch exists, the job needs a larger GPU."""


@dataclass
class BatchSizeHistory:
    """The batch size of one loop label in this process: the first size asked for, the last size run, the cap an
    out-of-memory left (None before any), each halving."""

    initial: int
    final: int
    cap: int | None = None
    halvings: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"initial_batch_size": self.initial, "final_batch_size": self.final,
                "n_halvings": len(self.halvings), "halvings": list(self.halvings)}


_HISTORY: dict[str, BatchSizeHistory] = {}


def job_batching_record() -> dict[str, dict[str, Any]]:
    """{loop label: initial and final batch size, number of halvings, each halving} of every loop this job ran."""
    return {label: history.record() for label, history in sorted(_HISTORY.items())}


def reset_job_batching() -> None:
    """Forget every loop's history (a new job in the same process, or a test)."""
    _HISTORY.clear()


def _free_accelerator_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_in_batches_halving_on_oom(rows: Sequence[Row], batch_size: int, run_batch: Callable[[list[Row]], Result],
                                  *, label: str) -> Iterator[tuple[list[Row], Result]]:
    """Yield (batch rows, run_batch(batch rows)) over consecutive slices of `rows`, in order.

    The slice length starts at `batch_size`, or at the smaller size an earlier out-of-memory of the same `label`
    left in this process. When `run_batch` raises torch.OutOfMemoryError, the CUDA cache is freed, the size is
    halved and the same rows are redone in smaller batches; at size 1 BatchOutOfMemoryError is raised. `run_batch`
    must not have side effects that a redo would double (build tensors and run the forward only; count and store
    results from what is yielded).
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"{label}: batch_size must be >= 1, got {batch_size}")
    history = _HISTORY.setdefault(label, BatchSizeHistory(initial=batch_size, final=batch_size))
    size = batch_size if history.cap is None else min(batch_size, history.cap)
    history.final = size
    start = 0
    while start < len(rows):
        batch = list(rows[start:start + size])
        try:
            result = run_batch(batch)
        except torch.OutOfMemoryError as error:  # alias torch.cuda.OutOfMemoryError; anything else propagates
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
        else:
            yield batch, result
            start += len(batch)
            continue
        # outside the except block, so that the traceback's frames (and the tensors they hold) are released first
        _free_accelerator_memory()
        if size == 1:
            raise BatchOutOfMemoryError(
                f"{label}: out of GPU memory with a batch of 1 row (input row {batch[0]!r}, after "
                f"{len(history.halvings)} halvings from batch size {history.initial}): the model and one prompt do "
                f"not fit this GPU; give the job a larger GPU or more GPUs (models.<name>.resources.gpus with "
                f"device_map: auto) or a max_memory that leaves room for activations. torch said: {message}")
        halved = size // 2
        history.halvings.append({"rows_done": start, "from": size, "to": halved, "error": message})
        logger.warning("%s: out of GPU memory with a batch of %d rows (after %d of %d rows); batch size %d -> %d, "
                       "redoing that batch", label, size, start, len(rows), size, halved)
        size = history.final = history.cap = halved

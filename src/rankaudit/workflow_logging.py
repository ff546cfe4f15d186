"""Logging for workflow scripts: every job logs to its rule's `log:` file, and a failure leaves its traceback there.

Long loops report with `Progress`: one plain line at a steady rhythm (never a carriage-return bar, which makes a
log file unreadable), so that `tail -f logs/...` shows how far a job is and about how long it has left.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator

from rankaudit.job_failures import forget_failure, record_failure, refuse_repeated_failure

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def log_to(path: str, level: int = logging.INFO) -> Iterator[logging.Logger]:
    """Send the `rankaudit` loggers (and warnings) to `path` and stderr for the duration of one job.

    It also applies the retry policy (rankaudit.job_failures): a deterministic error leaves a marker next to the
    log, and a retry of the same job in the same run stops at once with the original error.
    """
    handlers: list[logging.Handler] = [logging.FileHandler(path, mode="w"), logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.setLevel(level)
    for handler in handlers:
        root.addHandler(handler)
    logging.captureWarnings(True)
    logger = logging.getLogger("rankaudit")
    try:
        refuse_repeated_failure(path)
        yield logger
    except Exception as error:
        logger.exception("job failed")
        record_failure(path, error)
        raise
    else:
        forget_failure(path)
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


PROGRESS_EVERY_S = 10.0


class Progress:
    """Counts the units of a long loop and logs `label: done/total unit (pct%), elapsed, ~left` at most once every
    `every_s` seconds, and once more when the last unit is done if the loop took `every_s` or longer: a loop
    shorter than that logs nothing (its caller's summary line says enough), a long one a steady rhythm and its end.
    `clock` returns seconds (time.monotonic); tests pass a fake one."""

    def __init__(self, label: str, total: int, unit: str, *, logger: logging.Logger | None = None,
                 every_s: float = PROGRESS_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        if total < 0 or every_s <= 0:
            raise ValueError(f"Progress {label!r}: total={total}, every_s={every_s}")
        self.label, self.total, self.unit = label, total, unit
        self.logger = logger or logging.getLogger("rankaudit.progress")
        self.every_s, self.clock = every_s, clock
        self.done = 0
        self.started = self.last_logged = clock()

    def advance(self, units: int = 1, detail: str | Callable[[], str] = "") -> None:
        """Count `units` more as done; log when `every_s` has passed since the last line, or at the end of a long loop.
        `detail` (e.g. the current loss) is appended to the line; a callable is only called when a line is logged."""
        self.done += units
        now = self.clock()
        finished_long_loop = self.done >= self.total and now - self.started >= self.every_s
        if finished_long_loop or now - self.last_logged >= self.every_s:
            self.last_logged = now
            self.logger.info("%s", self.line(now, detail() if callable(detail) else detail))

    def line(self, now: float, detail: str = "") -> str:
        elapsed = now - self.started
        fraction = self.done / self.total if self.total else 1.0
        text = f"{self.label}: {self.done}/{self.total} {self.unit} ({100 * fraction:.0f}%), {elapsed:.0f} s elapsed"
        if 0 < self.done < self.total:
            text += f", ~{elapsed * (self.total - self.done) / self.done:.0f} s left"
        return text + (f" ({detail})" if detail else "")

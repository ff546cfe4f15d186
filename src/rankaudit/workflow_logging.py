"""Logging for workflow scripts: every job logs to its rule's `log:` file, and a failure leaves its traceback there."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def log_to(path: str, level: int = logging.INFO) -> Iterator[logging.Logger]:
    """Send the `rankaudit` loggers (and warnings) to `path` and stderr for the duration of one job."""
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
        yield logger
    except Exception:
        logger.exception("job failed")
        raise
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()

"""What every benchmark shares: timings on a shared 2-core machine mean little while other work runs."""

from __future__ import annotations

import os
import time


def wait_for_idle(threshold: float, max_wait: float) -> str:
    """Wait until the 1-minute load average drops below `threshold` (at most `max_wait` s); say what happened."""
    started = time.monotonic()
    while True:
        load = os.getloadavg()[0]
        waited = time.monotonic() - started
        if load < threshold:
            return f"CPU idle: 1-min load average {load:.2f} < {threshold} (waited {waited:.0f}s)"
        if waited >= max_wait:
            return (f"CPU NOT idle after waiting {waited:.0f}s: 1-min load average {load:.2f} >= {threshold}; "
                    "absolute times are unreliable, the interleaved ratios less so")
        time.sleep(10)

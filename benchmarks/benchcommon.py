"""What every benchmark shares: idle waiting, interleaved timing, ratio rows for `run_all.py`, the paper's scripts.

Timings on a shared 2-core machine mean little while other work runs, so every comparison here is a ratio of two
arms measured in the same process, interleaved over rounds, with medians of wall time and of process CPU time.
The arms run single-threaded, so an arm's CPU time is what its wall time would be on an idle core; the CPU ratio
is the one judged against the target, the wall ratio is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The paper's original scripts (CC-BY-4.0), read and run from here at benchmark time, never copied into the project.
ANCHORS = Path(os.environ.get("RANKAUDIT_PAPER_SCRIPTS",
                              REPO.parent / "shared" / "anchors" / "effective-rank-audit" / "experiments"))


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
        time.sleep(min(10.0, max(1.0, max_wait - waited)))


@dataclass(frozen=True)
class Timing:
    """Medians over rounds of one arm's wall and process CPU seconds."""

    wall: float
    cpu: float
    rounds: int


def interleaved(arms: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, Timing]:
    """Run every arm `rounds` times, rotating the order each round so no arm always runs first or last."""
    names = list(arms)
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = time.perf_counter(), time.process_time()
            arms[name]()
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    return {name: Timing(statistics.median(walls[name]), statistics.median(cpus[name]), rounds) for name in names}


@dataclass(frozen=True)
class Ratio:
    """One row of the `make bench` table: `value` is judged against `target` ('<= 0.6', '>= 50'); `wall` is the
    same ratio from wall time; `note` says what was measured, on what, and where sizes were reduced."""

    label: str
    value: float | None
    target: str
    wall: float | None = None
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "skipped"
        if not self.target or self.target == "-":
            return "info"
        operator, bound = self.target.split()
        met = self.value <= float(bound) if operator == "<=" else self.value >= float(bound)
        return "pass" if met else "miss"


def ratio_rows(label: str, numerator: Timing, denominator: Timing, target: str, note: str) -> Ratio:
    """numerator / denominator from CPU time (judged) and wall time (shown)."""
    return Ratio(label, numerator.cpu / denominator.cpu, target, numerator.wall / denominator.wall, note)


def benchmark_arguments(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes, so that `run_all.py` can drive each one the same way."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios-json", type=Path, help="also write the ratio rows here (used by run_all.py)")
    parser.add_argument("--max-wait", type=float, default=120.0, help="seconds to wait for an idle CPU first")
    parser.add_argument("--idle-load", type=float, default=1.0, help="1-minute load average counted as idle")
    return parser


def report(rows: Sequence[Ratio], path: Path | None) -> None:
    """Print the rows as a markdown table and write them as JSON for `run_all.py` when asked."""
    print(markdown_table(rows))
    if path is not None:
        path.write_text(json.dumps([asdict(row) for row in rows], indent=1))


def read_rows(path: Path) -> list[Ratio]:
    return [Ratio(**row) for row in json.loads(path.read_text())]


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def markdown_table(rows: Sequence[Ratio]) -> str:
    lines = ["| ratio | value (CPU time) | wall time | target | result | measured on |", "|---|---:|---:|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.label} | {_number(row.value)} | {_number(row.wall)} | {row.target or '-'} | {row.verdict} "
                     f"| {row.note} |")
    return "\n".join(lines)


def paper_scripts() -> Path | None:
    """The paper's experiments/ directory, put on sys.path for import; None (with a message) when it is absent."""
    if not (ANCHORS / "diagnostics_v4.py").is_file():
        print(f"the paper's scripts are not at {ANCHORS} (set RANKAUDIT_PAPER_SCRIPTS): comparisons with them skipped")
        return None
    if str(ANCHORS) not in sys.path:
        sys.path.insert(0, str(ANCHORS))
    return ANCHORS


def single_thread() -> None:
    """One intra-op thread for torch (the workflow's jobs run with `threads: 1` or 2; CPU time then equals work)."""
    import torch

    torch.set_num_threads(1)

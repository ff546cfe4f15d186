"""Which stage a Snakemake run is in: one line when a stage starts and one when its last job finishes.

`python -m rankaudit.stage_summary <snakemake command ...>` runs the command, passes its output through unchanged
and adds `[rankaudit] stage <name>: ...` lines (`make demo` uses it). Stages run side by side (the MLP calibration
cells fill the cores the model jobs leave idle), so several can be open at once; the lines say which. The job
counts come from the "Job stats" table Snakemake prints before the first job; the exit status is the command's.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator

# rule-name prefix -> stage, first match wins (names as in rules/*.smk; README, "What a run produces")
STAGE_PREFIXES = (
    ("generated_prompts", "prompts"), ("fetch_public_prompts", "prompts"), ("select_prompts", "prompts"),
    ("organism_", "organisms"), ("checkpoint_", "checkpoints"), ("capture_", "capture"), ("precision_", "capture"),
    ("layer_spectra", "spectra"), ("audit_tables", "audit tables"), ("family_figures", "audit tables"),
    ("limits_", "limits"), ("causal_", "causal"), ("calibration_", "calibration"), ("headline_", "headline"),
    ("download_", "downloads"),
)
IGNORED_RULES = {"all", "limits_all", "causal_all", "calibration_all", "download_models"}
PREFIX = "[rankaudit]"

_STATS_ROW = re.compile(r"^(\S+)\s+(\d+)$")
_STARTED = re.compile(r"^(?:local)?rule (\S+):$")
_FINISHED = re.compile(r"^Finished jobid: \d+ \(Rule: (\S+)\)$")


def _jobs(count: int) -> str:
    return "1 job" if count == 1 else f"{count} jobs"


def stage_of(rule: str) -> str:
    return next((stage for prefix, stage in STAGE_PREFIXES if rule.startswith(prefix)), rule)


class StageSummary:
    """Reads a Snakemake log line by line and says which lines to add: a stage's start and its end."""

    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self.started: set[str] = set()
        self.done: Counter[str] = Counter()
        self._in_stats = False
        self._stats_read = False

    def feed(self, line: str) -> list[str]:
        text = line.strip()
        if not self._stats_read:
            self._read_stats(text)
        if match := _STARTED.match(text):
            return self._start(match.group(1))
        if match := _FINISHED.match(text):
            return self._finish(match.group(1))
        return []

    def _read_stats(self, text: str) -> None:
        """The first "Job stats" table: jobs per rule, summed per stage."""
        if text == "Job stats:":
            self._in_stats = True
        elif self._in_stats and (match := _STATS_ROW.match(text)):
            rule, count = match.groups()
            if rule == "total":
                self._in_stats, self._stats_read = False, True
            elif rule != "job" and rule not in IGNORED_RULES:
                self.totals[stage_of(rule)] += int(count)

    def _open(self) -> str:
        running = [stage for stage in self.totals if stage in self.started and self.done[stage] < self.totals[stage]]
        return ", ".join(running) or "none"

    def _start(self, rule: str) -> list[str]:
        stage = stage_of(rule)
        if rule in IGNORED_RULES or stage in self.started:
            return []
        self.started.add(stage)
        return [f"{PREFIX} stage {stage}: started ({_jobs(self.totals[stage])}; running now: {self._open()})"]

    def _finish(self, rule: str) -> list[str]:
        stage = stage_of(rule)
        if rule in IGNORED_RULES:
            return []
        self.done[stage] += 1
        if self.done[stage] != self.totals.get(stage):
            return []
        finished = sum(1 for name, total in self.totals.items() if self.done[name] >= total)
        return [f"{PREFIX} stage {stage}: done ({_jobs(self.totals[stage])}; {finished} of {len(self.totals)} stages done; "
                f"running now: {self._open()})"]


def annotate(lines: Iterable[str]) -> Iterator[str]:
    """Every input line, each followed by the stage lines it causes."""
    summary = StageSummary()
    for line in lines:
        yield line
        for added in summary.feed(line):
            yield added + "\n"


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m rankaudit.stage_summary <snakemake command ...>", file=sys.stderr)
        return 2
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        assert process.stdout is not None
        try:
            for line in annotate(process.stdout):
                sys.stdout.write(line)
                sys.stdout.flush()
        except KeyboardInterrupt:  # Snakemake got the Ctrl-C too: show how it winds down, return its status
            for line in process.stdout:
                sys.stdout.write(line)
    return process.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

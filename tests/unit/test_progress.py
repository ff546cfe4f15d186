"""Progress where people wait. The lines of long jobs: a steady rhythm (at most one line per `every_s`), nothing
for a short loop, and the count, percentage, elapsed and remaining time in each line (a fake clock stands in for
time). The stage lines `make demo` adds to Snakemake's output: a start and an end per stage, output untouched."""

from __future__ import annotations

import logging

import pytest

from rankaudit.workflow_logging import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "test.progress"]


def _run(caplog, total: int, seconds_per_unit: float, every_s: float = 10.0) -> list[str]:
    clock = FakeClock()
    progress = Progress("capture llama_base chat/safety", total, "prompts", logger=logging.getLogger("test.progress"),
                        every_s=every_s, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for _ in range(total):
            clock.now += seconds_per_unit
            progress.advance()
    return _messages(caplog)


def test_a_long_loop_logs_every_interval_and_its_end(caplog):
    # 100 units of 1.5 s: 150 s in all; a line when >= 10 s have passed since the last one (units 7, 14, ... 98)
    # and one at the end
    lines = _run(caplog, total=100, seconds_per_unit=1.5)
    assert len(lines) == 100 // 7 + 1 == 15
    assert lines[0] == "capture llama_base chat/safety: 7/100 prompts (7%), 10 s elapsed, ~140 s left"
    assert lines[1].startswith("capture llama_base chat/safety: 14/100 prompts (14%), 21 s elapsed")
    assert lines[-1] == "capture llama_base chat/safety: 100/100 prompts (100%), 150 s elapsed"


def test_the_rhythm_does_not_depend_on_how_many_units_there_are(caplog):
    # 10,000 fast units of 1/128 s (exact in binary) over 78 s: one line per 10 s (every 1280 units) plus the end
    lines = _run(caplog, total=10_000, seconds_per_unit=1 / 128)
    assert [line.split(": ")[1].split(" ")[0] for line in lines] == [f"{done}/10000" for done in range(1280, 10_000, 1280)] + ["10000/10000"]


def test_a_short_loop_logs_nothing(caplog):
    assert _run(caplog, total=20, seconds_per_unit=0.4) == []  # 8 s < every_s


def test_a_detail_and_several_units_at_once(caplog):
    clock = FakeClock()
    progress = Progress("llama/base pretrain", 300, "steps", logger=logging.getLogger("test.progress"), every_s=5, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        clock.now += 6
        progress.advance(100, detail="loss 2.5000")
        clock.now += 1
        progress.advance(100, detail=lambda: pytest.fail("a detail is computed only for a line that is logged"))
        clock.now += 6
        progress.advance(100, detail=lambda: "loss 1.5000")
    assert _messages(caplog) == ["llama/base pretrain: 100/300 steps (33%), 6 s elapsed, ~12 s left (loss 2.5000)",
                                 "llama/base pretrain: 300/300 steps (100%), 13 s elapsed (loss 1.5000)"]


@pytest.mark.parametrize("total, every_s", [(-1, 10.0), (5, 0.0)])
def test_bad_settings_are_refused(total, every_s):
    with pytest.raises(ValueError, match="Progress 'x'"):
        Progress("x", total, "units", every_s=every_s)


SNAKEMAKE_LOG = """Building DAG of jobs...
Job stats:
job                  count
-----------------  -------
generated_prompts        2
capture_llama_base       1
capture_llama_aligned    1
calibration_base         1
all                      1
total                    6

rule generated_prompts:
    output: results/prompts/demo_harmful.parquet
localrule generated_prompts:
rule calibration_base:
Finished jobid: 3 (Rule: generated_prompts)
1 of 6 steps (17%) done
Finished jobid: 2 (Rule: generated_prompts)
rule capture_llama_base:
Finished jobid: 4 (Rule: calibration_base)
rule capture_llama_aligned:
Finished jobid: 5 (Rule: capture_llama_base)
Finished jobid: 6 (Rule: capture_llama_aligned)
localrule all:
Finished jobid: 0 (Rule: all)
Job stats:
job    count
-----  -------
all          9
total        9
"""


def test_the_stage_summary_says_when_each_stage_starts_and_ends():
    from rankaudit.stage_summary import annotate

    lines = list(annotate(SNAKEMAKE_LOG.splitlines(keepends=True)))
    assert "".join(line for line in lines if not line.startswith("[rankaudit]")) == SNAKEMAKE_LOG  # passed through
    assert [line.rstrip("\n") for line in lines if line.startswith("[rankaudit]")] == [
        "[rankaudit] stage prompts: started (2 jobs; running now: prompts)",
        "[rankaudit] stage calibration: started (1 job; running now: prompts, calibration)",
        "[rankaudit] stage prompts: done (2 jobs; 1 of 3 stages done; running now: calibration)",
        "[rankaudit] stage capture: started (2 jobs; running now: capture, calibration)",
        "[rankaudit] stage calibration: done (1 job; 2 of 3 stages done; running now: capture)",
        "[rankaudit] stage capture: done (2 jobs; 3 of 3 stages done; running now: none)",
    ]

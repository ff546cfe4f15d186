"""The retry policy through the project's own Snakefile, locally: a job failing with a deterministic error does its
work once in a run however many retries are allowed, and the Snakefile's onstart hook forgets that failure when the
next run starts. (tests/slurm checks the same on SLURM, together with a job killed for memory.)"""

from __future__ import annotations

import shutil

from reduced_workflow import REPO, SNAKEFILE, snakemake

WITH_FAILING_RULE = '''
include: "{snakefile}"


rule deterministic_probe:
    output:
        "results/deterministic_probe.txt",
    log:
        "logs/deterministic_probe.log",
    localrule: True
    script:
        "deterministic_probe.py"
'''
FAILING_SCRIPT = '''
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    with open("work_done.txt", "a") as record:
        record.write("attempt\\n")
    raise ValueError("results/prompts/x.parquet: row 3 is empty (a deterministic error)")
'''


def test_a_deterministic_error_is_worked_on_once_per_run(tmp_path):
    (tmp_path / "Snakefile").write_text(WITH_FAILING_RULE.format(snakefile=SNAKEFILE))
    (tmp_path / "deterministic_probe.py").write_text(FAILING_SCRIPT)
    shutil.copy(REPO / "config" / "config.yaml", tmp_path / "cfg.yaml")
    for run in (1, 2):
        result = snakemake(tmp_path, "results/deterministic_probe.txt", "--cores", "1", "--retries", "2",
                           snakefile=tmp_path / "Snakefile", timeout_s=180, check=False)
        assert result.returncode != 0
        # three attempts per run, one of them working: the retries stop before the work, with the original error
        assert result.stdout.count("Error in rule deterministic_probe") == 3, result.stdout[-4000:]
        assert (tmp_path / "work_done.txt").read_text() == "attempt\n" * run
        log = (tmp_path / "logs/deterministic_probe.log").read_text()
        assert "not retried: an earlier attempt of this job in this run failed with a deterministic error" in log
        assert "ValueError: results/prompts/x.parquet: row 3 is empty (a deterministic error)" in log

"""The SLURM profile against a real scheduler (ci/slurm/start.sh): every non-local job goes through sbatch to the
partition its resources call for, a failing job is reported and retried with more memory, and the outputs equal a
local run's. Every snakemake call is bounded by `timeout -s KILL` (SIGTERM only starts a graceful wait)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from reduced_workflow import (
    AUDIT_TABLES,
    FAMILY_LAYERS,
    REPO,
    SNAKEFILE,
    assert_same_output,
    family_targets,
    reduced_config,
    snakemake,
    write_config,
)

pytestmark = pytest.mark.slurm

PROFILES = ["--profile", str(REPO / "profiles" / "ci"), "--workflow-profile", str(REPO / "profiles" / "slurm")]
LOCAL_RULES = {"generated_prompts", "select_prompts", "audit_tables", "family_figures"}
CAPTURE_RULES = [f"capture_{family}_{role}" for family in FAMILY_LAYERS for role in ("base", "aligned")]

# A rule that fails on its first attempt (300 MB) and succeeds on the retry (600 MB): the retry must reach SLURM
# with the larger request. It is added next to the project's rules so that one run exercises both.
RETRY_PROBE = '''
include: "{snakefile}"


rule retry_probe:
    output:
        "results/retry_probe.txt",
    resources:
        mem_mb=lambda wildcards, attempt: 300 * attempt,
        runtime=2,
    shell:
        "if [ {{resources.mem_mb}} -lt 600 ]; then echo 'retry_probe: fails on purpose with mem_mb={{resources.mem_mb}}' >&2; exit 3; fi; "
        "echo mem_mb={{resources.mem_mb}} job=$SLURM_JOB_ID > {{output}}"
'''


def scheduler_jobs(workdir: Path) -> list[dict[str, str]]:
    """The controller's record (`scontrol show job`) of every job submitted from `workdir`."""
    text = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=30).stdout
    jobs = [dict(re.findall(r"(\S+?)=(\S*)", line)) for line in text.splitlines() if line.strip()]
    return [job for job in jobs if Path(job.get("WorkDir", "")) == workdir]


def job_rule(job: dict[str, str]) -> str:
    """The rule of a job submitted by the Snakemake plugin, whose comment is rule_<name>[_wildcards_<values>]."""
    return job["Comment"].removeprefix("rule_").split("_wildcards_")[0]


def jobcomp_states(cluster, job_ids) -> dict[str, str]:
    """JobState of each job id in the completion log (the durable record, written when a job ends)."""
    states = {}
    for line in cluster.jobcomp_log.read_text().splitlines():
        fields = dict(re.findall(r"(\S+?)=(\S*)", line))
        if fields.get("JobId") in job_ids:
            states[fields["JobId"]] = fields["JobState"]
    return states


@pytest.fixture
def cancel_leftovers():
    """Cancel whatever a killed snakemake left queued from the given working directories."""
    workdirs = []
    yield workdirs.append
    for workdir in workdirs:
        ids = [job["JobId"] for job in scheduler_jobs(workdir) if job["JobState"] in ("PENDING", "RUNNING")]
        if ids:
            subprocess.run(["scancel", *ids], timeout=30, check=False)


@pytest.mark.slow
def test_reduced_workflow_through_slurm_matches_the_local_run(slurm_cluster, finished_run, reduced_models, tmp_path,
                                                              cancel_leftovers):
    workdir = tmp_path / "slurm_run"
    workdir.mkdir()
    cancel_leftovers(workdir)
    write_config(workdir, reduced_config(reduced_models))
    probe = workdir / "with_retry_probe.smk"
    probe.write_text(RETRY_PROBE.format(snakefile=SNAKEFILE))
    # the captures compute on the CPU (runtime.device: cpu) but request a GPU here, so that GPU scheduling is
    # exercised on the fake GRES; small memory because the node is small (the profile's values are for 8B models)
    gpu_requests = [f"{rule}:{key}={value}" for rule in CAPTURE_RULES for key, value in (("gpu", 1), ("mem_mb", 1500))]
    # targets first: --set-resources and --set-threads take every value after them
    run = snakemake(workdir, *family_targets(FAMILY_LAYERS), "results/retry_probe.txt", *PROFILES, "--jobs", "8",
                    "--set-resources", *gpu_requests, "--set-threads", *(f"{rule}=1" for rule in CAPTURE_RULES),
                    snakefile=probe, timeout_s=420)

    jobs = scheduler_jobs(workdir)
    by_rule = Counter(job_rule(job) for job in jobs)
    n_spectra = sum(layers + 1 for layers in FAMILY_LAYERS.values())
    assert by_rule == {**{rule: 1 for rule in CAPTURE_RULES}, "layer_spectra": n_spectra, "retry_probe": 2}, run.stdout[-3000:]
    assert not LOCAL_RULES & set(by_rule)

    for job in jobs:
        rule = job_rule(job)
        if rule.startswith("capture_"):
            assert (job["Partition"], job.get("TresPerJob")) == ("gpu", "gres:gpu:1"), job
        else:
            assert job["Partition"] == "cpu" and "gpu" not in job.get("TresPerJob", ""), job
    probes = sorted((job for job in jobs if job_rule(job) == "retry_probe"), key=lambda job: int(job["JobId"]))
    assert [(job["JobState"], job["MinMemoryNode"]) for job in probes] == [("FAILED", "300M"), ("COMPLETED", "600M")]
    assert all(job["JobState"] == "COMPLETED" for job in jobs if job not in probes)
    assert "retry_probe: fails on purpose with mem_mb=300" in run.stdout
    assert (workdir / "results/retry_probe.txt").read_text().startswith("mem_mb=600 ")

    states = jobcomp_states(slurm_cluster, {job["JobId"] for job in jobs})
    assert states == {job["JobId"]: job["JobState"] for job in jobs}

    compared = [path.relative_to(finished_run) for path in sorted((finished_run / "results").rglob("*"))
                if path.is_file() and path.suffix in (".safetensors", ".json", ".csv")
                and not path.name.endswith(("provenance.json", "capture_record.json"))]
    assert len([path for path in compared if path.suffix == ".csv"]) == len(AUDIT_TABLES)
    for relative in compared:
        assert_same_output(finished_run, workdir, relative)


@pytest.mark.parametrize("bad_setting, expected", [
    (["--set-resources", "probe:slurm_partition=nosuch"], "invalid partition specified: nosuch"),
    (["--slurm-partition-config", "/nonexistent/partitions.yaml"],
     "Partition configuration file not found, given was /nonexistent/partitions.yaml"),
])
def test_bad_partition_settings_are_reported(slurm_cluster, tmp_path, cancel_leftovers, bad_setting, expected):
    workdir = tmp_path / "bad_partition"
    workdir.mkdir()
    cancel_leftovers(workdir)
    snakefile = workdir / "Snakefile"
    snakefile.write_text('rule probe:\n    output: "probe.txt"\n    shell: "touch {output}"\n')
    (workdir / "cfg.yaml").write_text("{}\n")
    result = snakemake(workdir, "probe.txt", *PROFILES, "--retries", "0", *bad_setting, snakefile=snakefile,
                       timeout_s=120, check=False)
    assert result.returncode != 0
    assert expected in result.stdout, result.stdout[-3000:]


# The retry policy (docs/CLUSTER.md, "Retries"): a job killed for memory is resubmitted with more and succeeds; a job
# failing with a deterministic error does its work once, and its retries stop at once with the original error.
# fits_on_retry holds HOG_MB on top of two Snakemake processes (the job step's and the job's own, about 300-500 MB):
# above 1000 MB (attempt 1), well below 2000 MB (attempt 2).
HOG_MB = 1000
RETRY_POLICY = '''
from rankaudit.job_failures import clear_failure_markers


onstart:
    clear_failure_markers("logs")


rule all:
    input:
        "results/fits_on_retry.txt",
        "results/deterministic.txt",


rule fits_on_retry:
    output:
        "results/fits_on_retry.txt",
    resources:
        mem_mb=lambda wildcards, attempt: 1000 * attempt,
        runtime=5,
    shell:
        "{python} -c 'import time; hog = bytes([1]) * ({hog_mb} * 2**20); time.sleep(4)' && "
        "echo mem_mb={{resources.mem_mb}} > {{output}}"


rule deterministic:
    output:
        "results/deterministic.txt",
    log:
        "logs/deterministic.log",
    resources:
        mem_mb=lambda wildcards, attempt: 1500 * attempt,
        runtime=5,
    script:
        "deterministic.py"
'''
DETERMINISTIC_SCRIPT = '''
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    with open("work_done.txt", "a") as record:
        record.write(f"mem_mb={snakemake.resources.mem_mb}\\n")
    raise ValueError("results/prompts/x.parquet: row 3 is empty (a deterministic error)")
'''


def slurm_log(workdir: Path, job_id: str) -> str:
    """The SLURM log the plugin kept for one job (slurm-keep-successful-logs keeps failed and finished ones)."""
    logs = list(workdir.glob(f".snakemake/slurm_logs/**/{job_id}.log"))
    assert len(logs) == 1, (job_id, logs)
    return logs[0].read_text()


def memory_limits_by_cgroup() -> bool:
    """Whether the cluster confines jobs with cgroups (OOM kill by the kernel) or polls their RSS (ci/slurm/start.sh)."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    return bool(re.search(r"^TaskPlugin\s*=\s*.*task/cgroup", config, re.MULTILINE))


def test_out_of_memory_is_retried_with_more_memory_and_a_deterministic_error_is_not(slurm_cluster, tmp_path,
                                                                                     cancel_leftovers):
    workdir = tmp_path / "retry_policy"
    workdir.mkdir()
    cancel_leftovers(workdir)
    snakefile = workdir / "Snakefile"
    snakefile.write_text(RETRY_POLICY.format(python=sys.executable, hog_mb=HOG_MB))
    (workdir / "deterministic.py").write_text(DETERMINISTIC_SCRIPT)
    (workdir / "cfg.yaml").write_text("{}\n")
    # one retry (the profile allows two) is enough to see both outcomes, and keeps the test to two rounds of jobs
    run = snakemake(workdir, "all", *PROFILES, "--retries", "1", "--keep-going", "--jobs", "4", snakefile=snakefile,
                    timeout_s=240, check=False)
    assert run.returncode != 0, run.stdout[-3000:]

    jobs = sorted(scheduler_jobs(workdir), key=lambda job: int(job["JobId"]))
    by_rule = {rule: [job for job in jobs if job_rule(job) == rule] for rule in ("fits_on_retry", "deterministic")}
    assert Counter(job_rule(job) for job in jobs) == {"fits_on_retry": 2, "deterministic": 2}, run.stdout[-3000:]

    # killed for memory at 1000 MB, then done with 2000 MB
    killed, fitted = by_rule["fits_on_retry"]
    assert (killed["MinMemoryNode"], fitted["MinMemoryNode"], fitted["JobState"]) == ("1000M", "2000M", "COMPLETED")
    assert killed["JobState"] in ("OUT_OF_MEMORY", "FAILED"), killed
    killed_log = slurm_log(workdir, killed["JobId"])
    if memory_limits_by_cgroup():
        assert "oom-kill" in killed_log or "Out Of Memory" in killed_log, killed_log[-2000:]
    else:
        assert "exceeded memory limit" in killed_log, killed_log[-2000:]
    assert (workdir / "results/fits_on_retry.txt").read_text() == "mem_mb=2000\n"

    # the deterministic error: both attempts reach SLURM (Snakemake retries whatever failed), the work runs once
    assert [job["JobState"] for job in by_rule["deterministic"]] == ["FAILED"] * 2
    assert (workdir / "work_done.txt").read_text() == "mem_mb=1500\n"
    last_attempt = (workdir / "logs/deterministic.log").read_text()
    assert "not retried: an earlier attempt of this job in this run failed with a deterministic error" in last_attempt
    assert "ValueError: results/prompts/x.parquet: row 3 is empty (a deterministic error)" in last_attempt
    assert (workdir / "logs/deterministic.log.failure.json").is_file()

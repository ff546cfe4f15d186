"""Incremental reruns: each test asks the real Snakefile (`snakemake --dry-run`) what it would run and asserts the
exact rules and job counts, so a surprise forward pass over a model shows up here as a failing count.
Tests on the finished reduced run are `slow`: the run itself takes about a minute on two idle cores."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from reduced_workflow import (
    FAMILY_LAYERS,
    SNAKEFILE,
    SNAKEMAKE,
    assert_same_output,
    copy_workflow,
    dry_run,
    family_targets,
    snakemake,
    snakemake_env,
    write_config,
)

PROMPT_JOBS = {"generated_prompts": 2, "select_prompts": 2}  # demo_harmful/demo_benign, then safety/control


def n_layers(family: str) -> int:
    return FAMILY_LAYERS[family] + 1  # layer 0 is the embedding output


def load_config(workdir: Path) -> dict:
    return yaml.safe_load((workdir / "cfg.yaml").read_text())


@pytest.mark.slow
def test_finished_run_dry_runs_to_nothing(finished_run):
    assert dry_run(finished_run, *family_targets(FAMILY_LAYERS)).jobs == ()


def test_one_family_target_schedules_only_that_family(empty_workdir):
    plan = dry_run(empty_workdir, "results/figures/llama/rho_by_layer.png")
    assert plan.counts == {**PROMPT_JOBS, "capture_llama_base": 1, "capture_llama_aligned": 1,
                           "layer_spectra": n_layers("llama"), "family_figures": 1}
    assert {job["family"] for job in plan.wildcards("layer_spectra")} == {"llama"}


def test_one_layer_target_schedules_one_spectra_job(empty_workdir):
    plan = dry_run(empty_workdir, "results/qwen2/spectra/template/safety/layer_2.json")
    assert plan.counts == {**PROMPT_JOBS, "capture_qwen2_base": 1, "capture_qwen2_aligned": 1, "layer_spectra": 1}
    assert plan.wildcards("layer_spectra") == [{"family": "qwen2", "layer": "2"}]


def test_one_variant_target_across_layers(empty_workdir):
    targets = [f"results/llama/spectra/did/safety/layer_{layer}.json" for layer in range(n_layers("llama"))]
    plan = dry_run(empty_workdir, *targets)
    assert plan.counts == {**PROMPT_JOBS, "capture_llama_base": 1, "capture_llama_aligned": 1,
                           "layer_spectra": n_layers("llama")}


@pytest.mark.slow
def test_forcing_one_model_reruns_it_and_its_descendants_only(finished_run):
    # targets first: --forcerun takes every name that follows it
    plan = dry_run(finished_run, *family_targets(FAMILY_LAYERS), "--forcerun", "capture_llama_aligned")
    assert plan.counts == {"capture_llama_aligned": 1, "layer_spectra": n_layers("llama"), "audit_tables": 1,
                           "family_figures": 1}
    assert {job["family"] for job in plan.wildcards("layer_spectra")} == {"llama"}
    assert plan.wildcards("family_figures") == [{"family": "llama"}]


@pytest.mark.slow
def test_adding_a_model_adds_only_its_jobs_and_the_aggregators(run_copy, reduced_models):
    config = load_config(run_copy)
    # a second aligned model for the llama base: the base is shared and must not be captured again
    config["models"]["llama_tuned"] = {"source": str(reduced_models / "llama_aligned"), "n_layers": FAMILY_LAYERS["llama"]}
    # rendered with llama_aligned's chat template, like the llama family, since llama_base is captured once for both
    config["families"]["llama_tuned"] = {"base": "llama_base", "aligned": "llama_tuned", "template": "llama_aligned"}
    write_config(run_copy, config)
    plan = dry_run(run_copy, *family_targets([*FAMILY_LAYERS, "llama_tuned"]))
    assert plan.counts == {"capture_llama_tuned": 1, "layer_spectra": n_layers("llama"), "audit_tables": 1,
                           "family_figures": 1}
    assert {job["family"] for job in plan.wildcards("layer_spectra")} == {"llama_tuned"}


@pytest.mark.slow
def test_changing_audit_params_reruns_spectra_and_tables_but_no_capture(run_copy):
    config = load_config(run_copy)
    config["audit"]["eps"] = [0.1]
    write_config(run_copy, config)
    plan = dry_run(run_copy, *family_targets(FAMILY_LAYERS))
    assert plan.counts == {"layer_spectra": sum(map(n_layers, FAMILY_LAYERS)), "audit_tables": 1,
                           "family_figures": len(FAMILY_LAYERS)}
    assert all("params" in job.reason.lower() for job in plan.jobs if job.rule == "layer_spectra")


@pytest.mark.slow
def test_changing_capture_params_reruns_captures_and_everything_below(run_copy):
    config = load_config(run_copy)
    config["capture"]["mean_last_k"] = 2
    write_config(run_copy, config)
    plan = dry_run(run_copy, *family_targets(FAMILY_LAYERS))
    captures = {f"capture_{family}_{role}": 1 for family in FAMILY_LAYERS for role in ("base", "aligned")}
    assert plan.counts == {**captures, "layer_spectra": sum(map(n_layers, FAMILY_LAYERS)), "audit_tables": 1,
                           "family_figures": len(FAMILY_LAYERS)}


def _bump_stage_version(snakefile: Path, stage: str) -> None:
    common = snakefile.parent / "rules" / "common.smk"
    text, count = re.subn(rf'("{stage}": )(\d+)', lambda m: f"{m.group(1)}{int(m.group(2)) + 1}", common.read_text())
    assert count == 1, f"no STAGE_VERSION entry for {stage!r} in {common}"
    common.write_text(text)


@pytest.mark.slow
def test_stage_version_bump_reruns_exactly_that_stage_and_below(finished_run, tmp_path):
    snakefile = copy_workflow(tmp_path / "workflow")
    # the unchanged copy plans nothing: what follows is due to the bump alone
    assert dry_run(finished_run, *family_targets(FAMILY_LAYERS), snakefile=snakefile).jobs == ()
    _bump_stage_version(snakefile, "spectra")
    plan = dry_run(finished_run, *family_targets(FAMILY_LAYERS), snakefile=snakefile)
    assert plan.counts == {"layer_spectra": sum(map(n_layers, FAMILY_LAYERS)), "audit_tables": 1,
                           "family_figures": len(FAMILY_LAYERS)}


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def _capture_running(workdir: Path) -> bool:
    """A llama capture job has written activation files but not its record (the job's last write): it is mid-way."""
    return any(any(model.glob("*/*/layer_*.safetensors")) and not (model / "capture_record.json").exists()
               for model in (workdir / "results/acts").glob("llama_*"))


def _captures_done(workdir: Path) -> bool:
    return all((workdir / f"results/acts/llama_{role}/capture_record.json").exists() for role in ("base", "aligned"))


def _kill_during_a_capture_job(process: subprocess.Popen, workdir: Path) -> bool:
    """SIGKILL snakemake's process group while a capture job is known to be running; False when none was caught.

    The marker is a job's first activation file (written after its first cell, with more cells to go) without its
    record. The group is frozen (SIGSTOP) before the marker is checked again, so the job cannot finish between the
    check and the kill; a job that finished in the meantime is let go (SIGCONT) and the next capture job is awaited.
    """
    while process.poll() is None and not _captures_done(workdir):
        _wait_for(lambda: _capture_running(workdir) or _captures_done(workdir) or process.poll() is not None, 300,
                  "a capture job to write its first activation file")
        if process.poll() is not None or not _capture_running(workdir):
            continue
        os.killpg(process.pid, signal.SIGSTOP)
        if _capture_running(workdir):
            os.killpg(process.pid, signal.SIGKILL)
            return True
        os.killpg(process.pid, signal.SIGCONT)
    return False


@pytest.mark.slow
def test_kill_mid_capture_then_rerun_incomplete_matches_uninterrupted_run(run_copy, finished_run):
    """kill -9 while a capture job is writing its files: the stale lock and the incomplete outputs are reported
    with their fixes, and `--unlock` + `--rerun-incomplete` reproduce the uninterrupted run exactly."""
    # the llama family's outputs are removed from the copy, so that its captures, spectra and figure run again
    for path in [*(run_copy / "results/acts").glob("llama_*"), run_copy / "results/llama", run_copy / "results/figures/llama"]:
        shutil.rmtree(path)
    targets = ["results/figures/llama/rho_by_layer.png"]
    command = ["timeout", "-s", "KILL", "600", str(SNAKEMAKE), "-s", str(SNAKEFILE), "--directory", str(run_copy),
               "--configfile", str(run_copy / "cfg.yaml"), "--cores", "1", *targets]
    with open(run_copy / "killed_run.log", "w") as log:
        process = subprocess.Popen(command, cwd=run_copy, env=snakemake_env(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            killed_mid_job = _kill_during_a_capture_job(process, run_copy)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert killed_mid_job, f"no capture job was caught running:\n{(run_copy / 'killed_run.log').read_text()[-3000:]}"
    written = sorted((run_copy / "results/acts").glob("llama_*/*/*/layer_*.safetensors"))
    assert written, "the run ended before any capture output appeared"
    assert any((run_copy / ".snakemake/incomplete").iterdir()), "the kill did not interrupt a job"

    # Snakemake reports the incomplete outputs first (while planning), then the stale lock (before running)
    incomplete = snakemake(run_copy, *targets, "--cores", "1", check=False)
    assert incomplete.returncode != 0 and "IncompleteFilesException" in incomplete.stdout
    assert "rerun your command with the --rerun-incomplete flag" in incomplete.stdout
    locked = snakemake(run_copy, *targets, "--cores", "1", "--rerun-incomplete", check=False)
    assert locked.returncode != 0 and "Directory cannot be locked" in locked.stdout
    assert "It can be removed with the --unlock argument" in locked.stdout
    snakemake(run_copy, "--unlock")

    snakemake(run_copy, *targets, "--cores", "2", "--rerun-incomplete")
    compared = sorted(path.relative_to(finished_run) for path in (finished_run / "results/acts").glob("llama_*/*/*/*.safetensors"))
    compared += sorted(path.relative_to(finished_run) for path in (finished_run / "results/llama/spectra").rglob("*.json"))
    assert compared
    for relative in compared:
        assert_same_output(finished_run, run_copy, relative)
    assert dry_run(run_copy, *targets).jobs == ()

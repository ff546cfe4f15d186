"""Incremental reruns: each test asks the real Snakefile (`snakemake --dry-run`) what it would run and asserts the
exact rules and job counts, so a surprise forward pass over a model shows up here as a failing count.
Tests on the finished reduced run are `slow`: the run itself takes about a minute on two idle cores."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from reduced_workflow import (
    FAMILY_LAYERS,
    copy_workflow,
    dry_run,
    family_targets,
    write_config,
)

# demo_harmful/demo_benign, then safety/control, and each capture's prompt check (rules/prompts.smk)
PROMPT_JOBS = {"generated_prompts": 2, "select_prompts": 2, "check_prompts": 2}
# a family's two model manifests and its models' template manifests (rules/manifests.smk): the aligned one renders
# the chat format, and the prompt check reads both tokenizers
MANIFEST_JOBS = {"model_manifest": 2, "template_manifest": 2}


def n_layers(family: str) -> int:
    return FAMILY_LAYERS[family] + 1  # layer 0 is the embedding output


def load_config(workdir: Path) -> dict:
    return yaml.safe_load((workdir / "cfg.yaml").read_text())


@pytest.mark.slow
def test_finished_run_dry_runs_to_nothing(finished_run):
    assert dry_run(finished_run, *family_targets(FAMILY_LAYERS)).jobs == ()


def test_one_family_target_schedules_only_that_family(empty_workdir):
    plan = dry_run(empty_workdir, "results/figures/llama/rho_by_layer.png")
    assert plan.counts == {**PROMPT_JOBS, **MANIFEST_JOBS, "capture_llama_base": 1, "capture_llama_aligned": 1,
                           "layer_spectra": n_layers("llama"), "family_figures": 1}
    assert {job["family"] for job in plan.wildcards("layer_spectra")} == {"llama"}


def test_one_layer_target_schedules_one_spectra_job(empty_workdir):
    plan = dry_run(empty_workdir, "results/qwen2/spectra/template/safety/layer_2.json")
    assert plan.counts == {**PROMPT_JOBS, **MANIFEST_JOBS, "capture_qwen2_base": 1, "capture_qwen2_aligned": 1, "layer_spectra": 1}
    assert plan.wildcards("layer_spectra") == [{"family": "qwen2", "layer": "2"}]


def test_one_variant_target_across_layers(empty_workdir):
    targets = [f"results/llama/spectra/did/safety/layer_{layer}.json" for layer in range(n_layers("llama"))]
    plan = dry_run(empty_workdir, *targets)
    assert plan.counts == {**PROMPT_JOBS, **MANIFEST_JOBS, "capture_llama_base": 1, "capture_llama_aligned": 1,
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
    # the new model's prompt check reads its tokenizer (template manifest); the shared base's check is unchanged
    assert plan.counts == {"model_manifest": 1, "template_manifest": 1, "check_prompts": 1, "capture_llama_tuned": 1,
                           "layer_spectra": n_layers("llama"), "audit_tables": 1, "family_figures": 1}
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

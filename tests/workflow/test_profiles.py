"""The workflow profiles (profiles/*): each parses, plans the same jobs, and gives the rules the resources the
docs promise. Dry runs only: the SLURM profile is exercised against a real scheduler in tests/slurm."""

from __future__ import annotations

import pytest
from reduced_workflow import FAMILY_LAYERS, REPO, dry_run, family_targets

PROFILES = REPO / "profiles"
SLURM = ["--profile", str(PROFILES / "ci"), "--workflow-profile", str(PROFILES / "slurm")]
LOCAL = ["--workflow-profile", str(PROFILES / "local")]


@pytest.fixture
def default_plan(empty_workdir):
    return dry_run(empty_workdir, *family_targets(FAMILY_LAYERS))


@pytest.mark.parametrize("profile", [LOCAL, SLURM, ["--workflow-profile", str(PROFILES / "default")]],
                         ids=["local", "slurm+ci", "default"])
def test_every_profile_plans_the_same_jobs(empty_workdir, default_plan, profile):
    assert dry_run(empty_workdir, *profile, *family_targets(FAMILY_LAYERS)).counts == default_plan.counts


def test_slurm_profile_resources(empty_workdir):
    plan = dry_run(empty_workdir, *SLURM, *family_targets(FAMILY_LAYERS))
    # a capture rule sizes its request from the model's config entry (none here: the rule's floor), first attempt;
    # the profile adds no per-model overrides (tests/workflow/test_model_resources.py covers the sizing)
    assert {"mem_mb": "8000", "runtime": "60", "gpu": "0"}.items() <= plan.resources("capture_llama_base")[0].items()
    # a rule's own declaration applies otherwise (attempt 1), and GPU requests follow the model's device
    assert all(res["mem_mb"] == "2000" and res["runtime"] == "10" and "gpu" not in res
               for res in plan.resources("layer_spectra"))


def test_cuda_device_requests_a_gpu_per_capture_job(empty_workdir):
    # targets first: --config takes every key=value after it
    plan = dry_run(empty_workdir, *family_targets(FAMILY_LAYERS), *SLURM, "--config", "runtime={device: cuda}")
    gpus = {rule: plan.resources(rule)[0].get("gpu") for rule in plan.counts if rule.startswith("capture_")}
    assert gpus == {f"capture_{family}_{role}": "1" for family in FAMILY_LAYERS for role in ("base", "aligned")}


def test_local_gpu_cap_scales_a_gpu_request_down_instead_of_refusing(empty_workdir):
    """Documented in docs/CLUSTER.md: Snakemake caps a job's request at the global `resources: gpu` of
    profiles/local (gpu=0 on a GPU-less machine) rather than refusing it, so the job then fails inside torch;
    the fix is runtime.device: cpu."""
    plan = dry_run(empty_workdir, *family_targets(FAMILY_LAYERS), *LOCAL, "--resources", "gpu=0",
                   "--config", "runtime={device: cuda}")
    assert {res["gpu"] for rule in plan.counts if rule.startswith("capture_") for res in plan.resources(rule)} == {"0"}

"""Models as tracked inputs (rankaudit.manifests, rules/manifests.smk), asked of the real Snakefile.

One reduced run where llama's models and qwen2's base are local directories and qwen2's aligned model is a Hugging
Face id served from a fake offline cache (hub layout: blobs, snapshots/<commit> symlinks, refs/main). Then dry runs:
nothing to do; rewritten local weights re-plan exactly that model's manifest and the jobs downstream of it; a moved
revision of the hub model re-plans exactly its manifest and its jobs. Everything lives inside the working directory
(relative model paths, the cache under it), so each test changes its own copy of the finished run.
`slow`: the run captures four tiny models (about a minute on two idle cores).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from reduced_workflow import FAMILY_LAYERS, copy_run, dry_run, family_targets, reduced_config, snakemake, write_config
from safetensors.numpy import load_file, save_file

from rankaudit import manifests

HUB_ID = "rankaudit-test/qwen2-aligned"
COMMIT_A = "a" * 40
COMMIT_B = "b" * 40
LOCAL = {"llama_base": "llama", "llama_aligned": "llama", "qwen2_base": "qwen2"}


def n_layers(family: str) -> int:
    return FAMILY_LAYERS[family] + 1  # layer 0 is the embedding output


def add_snapshot(cache: Path, commit: str, model_dir: Path) -> None:
    """`model_dir`'s files as commit `commit` of HUB_ID in the hub cache layout, with refs/main pointing at it."""
    repo = manifests.hub_repo_dir(HUB_ID, cache)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for path in sorted(model_dir.iterdir()):
        data = path.read_bytes()
        # LFS files (weights) are stored under their sha256, git files under their sha1, as the hub does
        blob = hashlib.sha256(data).hexdigest() if path.suffix == ".safetensors" else hashlib.sha1(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", blob))
    (repo / "refs" / "main").write_text(commit)


def snapshot(workdir: Path, commit: str) -> Path:
    return manifests.hub_repo_dir(HUB_ID, workdir / "hub") / "snapshots" / commit


def perturbed_weights(path: Path, target: Path) -> None:
    """`path`'s safetensors weights with one tensor shifted, written to `target`."""
    tensors = load_file(str(path))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + np.float32(0.5)
    save_file(tensors, str(target), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, reduced_models) -> Path:
    """A finished reduced run: three local models under ./models, qwen2_aligned a hub id at commit A in ./hub."""
    workdir = tmp_path_factory.mktemp("manifests_run")
    for model in LOCAL:
        shutil.copytree(reduced_models / model, workdir / "models" / model)
    add_snapshot(workdir / "hub", COMMIT_A, reduced_models / "qwen2_aligned")
    config = reduced_config(Path("./models"))
    config["models"]["qwen2_aligned"]["source"] = HUB_ID
    write_config(workdir, config)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_CACHE", str(workdir / "hub"))
        snakemake(workdir, "--cores", "2", *family_targets(FAMILY_LAYERS))
    return workdir


@pytest.fixture
def tracked_copy(tracked_run, tmp_path, monkeypatch) -> Path:
    """A private copy of the tracked run, with HF_HUB_CACHE pointing at its own cache."""
    workdir = copy_run(tracked_run, tmp_path / "run")
    monkeypatch.setenv("HF_HUB_CACHE", str(workdir / "hub"))
    return workdir


def model_jobs(family: str) -> dict[str, int]:
    """What depends on a family's aligned model's weights: its capture, the family's spectra, tables and figures."""
    return {f"capture_{family}_aligned": 1, "layer_spectra": n_layers(family), "audit_tables": 1, "family_figures": 1}


@pytest.mark.slow
def test_finished_run_plans_nothing_and_records_what_was_loaded(tracked_copy):
    assert dry_run(tracked_copy, *family_targets(FAMILY_LAYERS)).jobs == ()
    hub = json.loads((tracked_copy / manifests.manifest_path("qwen2_aligned")).read_text())
    weights = hashlib.sha256((snapshot(tracked_copy, COMMIT_A) / "model.safetensors").read_bytes()).hexdigest()
    assert (hub["kind"], hub["requested_revision"], hub["resolved_revision"]) == ("hub", None, COMMIT_A)
    assert hub["weight_files"] == {"model.safetensors": weights}
    local = json.loads((tracked_copy / manifests.manifest_path("llama_aligned")).read_text())
    assert (local["kind"], local["resolved_revision"]) == ("local", None)
    assert local["weight_index_sha256"] == hashlib.sha256((tracked_copy / "models/llama_aligned/model.safetensors").read_bytes()).hexdigest()
    # the capture records name exactly the manifests the job read (the base is rendered with the aligned template)
    record = json.loads((tracked_copy / "results/acts/qwen2_base/capture_record.json").read_text())
    assert record["model_manifest"]["kind"] == "local" and record["model_manifest"]["model"] == "qwen2_base"
    template = (tracked_copy / manifests.template_manifest_path("qwen2_aligned")).read_bytes()
    assert record["template_manifest"]["manifest_sha256"] == hashlib.sha256(template).hexdigest()
    aligned = json.loads((tracked_copy / "results/acts/qwen2_aligned/capture_record.json").read_text())
    assert aligned["model_manifest"]["resolved_revision"] == COMMIT_A


@pytest.mark.slow
def test_rewritten_local_weights_replan_exactly_that_model(tracked_copy):
    weights = tracked_copy / "models" / "llama_aligned" / "model.safetensors"
    perturbed_weights(weights, weights)
    plan = dry_run(tracked_copy, *family_targets(FAMILY_LAYERS))
    # not llama_base (its chat prompts use llama_aligned's tokenizer, which did not change), nothing of qwen2
    assert plan.counts == {"model_manifest": 1, **model_jobs("llama")}
    assert plan.wildcards("model_manifest") == [{"model": "llama_aligned"}]
    assert {job["family"] for job in plan.wildcards("layer_spectra")} == {"llama"}


@pytest.mark.slow
def test_a_moved_revision_replans_exactly_that_model(tracked_copy, tmp_path):
    moved = tmp_path / "commit_b"
    moved.mkdir()
    for path in snapshot(tracked_copy, COMMIT_A).iterdir():  # the same config and tokenizer, other weights
        if path.name == "model.safetensors":
            perturbed_weights(path, moved / path.name)
        else:
            shutil.copyfile(path, moved / path.name)
    add_snapshot(tracked_copy / "hub", COMMIT_B, moved)  # refs/main: A -> B

    plan = dry_run(tracked_copy, *family_targets(FAMILY_LAYERS))
    assert plan.counts == {"model_manifest": 1, **model_jobs("qwen2")}
    assert plan.wildcards("model_manifest") == [{"model": "qwen2_aligned"}]
    assert "params" in next(job.reason.lower() for job in plan.jobs if job.rule == "model_manifest")

    snakemake(tracked_copy, "--cores", "1", manifests.manifest_path("qwen2_aligned"))
    manifest = json.loads((tracked_copy / manifests.manifest_path("qwen2_aligned")).read_text())
    assert manifest["resolved_revision"] == COMMIT_B
    assert manifest["weight_files"] == {"model.safetensors": hashlib.sha256((moved / "model.safetensors").read_bytes()).hexdigest()}

"""Model manifests: what exactly a workflow model is, written once per model and read by every job that loads it.

A manifest (resources/manifests/<model>.json) names the model's source, the revision asked for and the commit it
resolved to in the Hugging Face cache, the sha256 of its config, of its weight index and of every weight file, the
other files the loaders read (tokenizer, chat template) and the dtype it runs in. It is an input of every job that
loads the model, so Snakemake re-runs exactly those jobs when the model changes:

- a local directory: the manifest rule's inputs are the directory's files, so rewriting weights (a newer mtime)
  re-runs the manifest and, through it, the model's jobs;
- a Hugging Face id: the manifest rule's params hold the commit the requested revision resolves to in the offline
  cache (one small refs file read at parse time, no network), so a moved revision re-runs it;
- a directory the workflow builds (organisms, checkpoints, abliterated models): its producing rule is upstream.

A template manifest (resources/manifests/<model>.template.json) covers only the config and tokenizer files: a model
whose chat format another model's template renders depends on that model's tokenizer, not on its weights.

Parse-time helpers here read directory listings, refs files and at most a hub snapshot's small config and
tokenizer files; weights are hashed in the manifest job. In the Hugging Face cache the blob of a weight file (a Git
LFS object) is named by its sha256, so hashing it is free.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rankaudit import io
from rankaudit.download import ALLOW_PATTERNS, is_hub_id

MANIFEST_ROOT = "resources/manifests"
WEIGHT_INDEX = "model.safetensors.index.json"
SINGLE_WEIGHTS = "model.safetensors"
# what the template manifest covers: the files load_config / load_tokenizer read, never the weights
TEMPLATE_PATTERNS = [pattern for pattern in ALLOW_PATTERNS if not pattern.startswith("*.safetensors")]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class ManifestError(ValueError):
    """A model whose files cannot be described; the message names the model and the path at fault."""


def manifest_path(model: str) -> str:
    """The manifest of `model` (weights, config and tokenizer): an input of every job that loads the model."""
    return f"{MANIFEST_ROOT}/{model}.json"


def template_manifest_path(model: str) -> str:
    """The config + tokenizer manifest of `model`: an input of jobs that render prompts with its chat template."""
    return f"{MANIFEST_ROOT}/{model}.template.json"


def source_kind(source: str, workflow_built: bool) -> str:
    """The kind of a model source: "workflow" (a rule writes it), "local" (read in place) or "hub" (a Hugging Face id).

    An existing directory wins over the id reading, as in `from_pretrained`; a missing path that is no hub id is
    "local" (its job fails naming it).
    """
    if workflow_built:
        return "workflow"
    if Path(source).expanduser().is_dir() or not is_hub_id(source):
        return "local"
    return "hub"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache of this process (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_repo_dir(repo_id: str, cache_dir: str | os.PathLike[str]) -> Path:
    """The cache folder of one model repository (the hub's layout: models--<owner>--<name>)."""
    return Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"


def resolved_hub_revision(repo_id: str, revision: str | None, cache_dir: str | os.PathLike[str]) -> str | None:
    """The commit `revision` (default "main") resolves to in the offline cache, or None when the cache lacks it.

    A branch or tag resolves through refs/<revision> (a file holding the commit); a full commit hash is itself
    when its snapshot folder exists. Cheap: one small file read, so it can run at parse time.
    """
    repo = hub_repo_dir(repo_id, cache_dir)
    wanted = revision or "main"
    if _COMMIT.match(wanted):
        return wanted if (repo / "snapshots" / wanted).is_dir() else None
    ref = repo / "refs" / wanted
    if not ref.is_file():
        return None
    commit = ref.read_text().strip()
    return commit if _COMMIT.match(commit) else None


def tracked_files(directory: str | os.PathLike[str], patterns: Sequence[str] = tuple(ALLOW_PATTERNS)) -> list[Path]:
    """The files of a model directory its loaders read (top level; safetensors, config, tokenizer, template)."""
    folder = Path(directory).expanduser()
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns) and path.is_file())


def rule_inputs(source: str, location: str, workflow_built: bool, *, template: bool = False) -> list[str]:
    """What the manifest rule of one model takes as input (parse time: a directory listing, no hashing).

    A local directory: its tracked files (their mtimes re-run the manifest), or the path itself when it is missing
    so that Snakemake names it. A workflow-built directory: the directory, an edge to the rule that writes it.
    A hub id: nothing (its resolved commit is a param).
    """
    kind = source_kind(location, workflow_built)
    if kind == "workflow":
        return [location]
    if kind == "hub":
        return []
    files = tracked_files(location, TEMPLATE_PATTERNS if template else ALLOW_PATTERNS)
    return [str(path) for path in files] or [location]


def fingerprint(
    source: str,
    location: str,
    revision: str | None,
    dtype: str,
    workflow_built: bool,
    *,
    template: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The manifest rule's params: what names the model, with what a hub id resolves to in the cache (parse time).

    For the model manifest that is the resolved commit: a moved branch or tag changes it, so with the `params`
    rerun trigger the manifest is rewritten and every job that loads the model re-runs. For the template manifest
    it is the hash of each config and tokenizer file of the resolved snapshot (small files; a blob name where the
    cache has one), so a new commit that changes only the weights does not re-run jobs that only render prompts;
    nor does the dtype, which only the model's own jobs use.
    """
    kind = source_kind(location, workflow_built)
    spec: dict[str, Any] = {"source": source, "kind": kind, "requested_revision": revision}
    if not template:
        spec["dtype"] = dtype
    if kind != "hub":
        return spec if template else {**spec, "resolved_revision": None}
    cache = cache_dir if cache_dir is not None else hub_cache_dir()
    resolved = resolved_hub_revision(location, revision, cache)
    if not template:
        return {**spec, "resolved_revision": resolved}
    snapshot = hub_repo_dir(location, cache) / "snapshots" / str(resolved)
    files = tracked_files(snapshot, TEMPLATE_PATTERNS) if resolved else []
    return {**spec, "files": {path.name: file_sha256(path) for path in files} or None}


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content; free for a Hugging Face cache blob of an LFS file (named by its sha256)."""
    if path.is_symlink():
        target = Path(os.readlink(path))
        if target.parent.name == "blobs" and _SHA256.match(target.name):
            return target.name
    return io.sha256_file(path)


def _snapshot_dir(model: str, repo_id: str, revision: str | None, cache_dir: Path) -> tuple[Path, str]:
    commit = resolved_hub_revision(repo_id, revision, cache_dir)
    folder = hub_repo_dir(repo_id, cache_dir) / "snapshots" / str(commit)
    if commit is None or not folder.is_dir():
        raise ManifestError(
            f"models.{model}: {repo_id}@{revision or 'main'} is not in the Hugging Face cache {cache_dir} "
            "(no refs file or snapshot for it); run `snakemake download_models` on a node with internet, "
            "with the same HF_HOME / HF_HUB_CACHE"
        )
    return folder, commit


def _weight_names(model: str, folder: Path, names: set[str]) -> tuple[list[str], str | None]:
    """The weight files `from_pretrained(use_safetensors=True)` reads, and the file that indexes them."""
    if WEIGHT_INDEX in names:
        index = json.loads((folder / WEIGHT_INDEX).read_text())
        shards = sorted(set(index.get("weight_map", {}).values()))
        missing = [shard for shard in shards if shard not in names]
        if not shards or missing:
            raise ManifestError(f"models.{model}: {folder / WEIGHT_INDEX} lists shards {missing or shards} that the folder lacks")
        return shards, WEIGHT_INDEX
    if SINGLE_WEIGHTS in names:
        return [SINGLE_WEIGHTS], SINGLE_WEIGHTS
    raise ManifestError(f"models.{model}: {folder} has no {SINGLE_WEIGHTS} or {WEIGHT_INDEX}; rankaudit loads safetensors weights only")


def build_manifest(model: str, spec: Mapping[str, Any], *, template: bool = False, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The manifest of one model from its `fingerprint` and location (job time: hashes the files).

    `spec` holds `location` (what from_pretrained gets) and the fingerprint's keys. With `template` only the config
    and tokenizer files are described (no weights).
    """
    location, kind, revision = spec["location"], spec["kind"], spec.get("requested_revision")
    resolved = None
    if kind == "hub":
        folder, resolved = _snapshot_dir(model, location, revision, Path(cache_dir) if cache_dir else hub_cache_dir())
    else:
        folder = Path(location).expanduser()
        if not template:
            from rankaudit.causal.no_refusal import require_abliterated_model

            require_abliterated_model(str(folder))
    files = tracked_files(folder, TEMPLATE_PATTERNS if template else ALLOW_PATTERNS)
    names = {path.name for path in files}
    if "config.json" not in names:
        raise ManifestError(f"models.{model}: {folder} has no config.json (not a Hugging Face model directory)")
    manifest: dict[str, Any] = {
        "model": model,
        "part": "template" if template else "model",
        "source": spec["source"],
        "location": location,
        "kind": kind,
        "requested_revision": revision,
    }
    if not template:  # a template manifest is not rewritten when only the weights or dtype change: neither is in it
        manifest.update(dtype=spec["dtype"], resolved_revision=resolved)
    config = json.loads((folder / "config.json").read_text())
    manifest["stored_dtype"] = config.get("dtype", config.get("torch_dtype"))
    hashes = {path.name: file_sha256(path) for path in files}
    manifest["config_sha256"] = hashes["config.json"]
    if not template:
        weights, index = _weight_names(model, folder, names)
        weight_hashes = {name: hashes.pop(name) for name in weights}
        manifest["weight_index_sha256"] = hashes.pop(index) if index == WEIGHT_INDEX else weight_hashes[index]
        manifest["weight_files"] = weight_hashes
        manifest["weights_sha256"] = io.sha256_text(json.dumps(weight_hashes, sort_keys=True))
        for unused in [name for name in hashes if name.endswith(".safetensors")]:
            hashes.pop(unused)  # a safetensors file no index names is never loaded
    manifest["files"] = hashes
    return manifest


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A manifest written by the manifest rules (rankaudit.stages.manifests), with the sha256 of its file (what a job record keeps)."""
    text = Path(path).read_text()
    return {**json.loads(text), "manifest_sha256": hashlib.sha256(text.encode()).hexdigest()}


def with_manifest(spec: Mapping[str, Any], manifest_paths: Sequence[str]) -> dict[str, Any]:
    """A model spec (rules/common/capture.smk `model_runtime`) with its manifest, for the job's record."""
    if len(manifest_paths) != 1:
        raise ValueError(f"expected one manifest for {spec.get('location')}, got {list(manifest_paths)}")
    return {**spec, "manifest": read_manifest(manifest_paths[0])}

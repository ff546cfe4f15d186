"""Model manifests (rankaudit.manifests): resolved revisions from the offline cache, content hashes, parse-time inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rankaudit import manifests
from rankaudit.stages.manifests import write_manifest

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40
REPO = "org/tiny"
CONFIG = {"model_type": "llama", "torch_dtype": "bfloat16"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_model(folder: Path, weights: bytes, config: dict = CONFIG) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text('{"vocab": {}}')
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "notes.txt").write_text("not read by any loader")
    return folder


def add_snapshot(cache: Path, commit: str, files: dict[str, bytes], *, ref: str | None = "main") -> Path:
    """One snapshot in the hub cache layout: blobs named by content hash, snapshot symlinks, refs/<ref>."""
    repo = manifests.hub_repo_dir(REPO, cache)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        # LFS files (weights) are named by their sha256, git files by their sha1, as the hub does
        blob = sha(data) if name.endswith(".safetensors") else hashlib.sha1(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def hub_files(weights: bytes) -> dict[str, bytes]:
    return {"config.json": json.dumps(CONFIG).encode(), "tokenizer.json": b"{}", "model.safetensors": weights}


def spec(location: str, kind: str, revision: str | None = None) -> dict:
    return {"source": location, "location": location, "kind": kind, "requested_revision": revision, "dtype": "float32"}


def test_resolved_revision_follows_refs_and_accepts_a_cached_commit(tmp_path):
    add_snapshot(tmp_path, COMMIT_A, hub_files(b"w"))
    add_snapshot(tmp_path, COMMIT_B, hub_files(b"v"), ref="v1.0")
    assert manifests.resolved_hub_revision(REPO, None, tmp_path) == COMMIT_A
    assert manifests.resolved_hub_revision(REPO, "main", tmp_path) == COMMIT_A
    assert manifests.resolved_hub_revision(REPO, "v1.0", tmp_path) == COMMIT_B
    assert manifests.resolved_hub_revision(REPO, COMMIT_B, tmp_path) == COMMIT_B
    assert manifests.resolved_hub_revision(REPO, "c" * 40, tmp_path) is None
    assert manifests.resolved_hub_revision(REPO, "dev", tmp_path) is None
    assert manifests.resolved_hub_revision("org/absent", None, tmp_path) is None


def test_hub_manifest_takes_weight_hashes_from_blob_names_and_follows_a_moved_revision(tmp_path):
    add_snapshot(tmp_path, COMMIT_A, hub_files(b"weights A"))
    before = manifests.build_manifest("m", spec(REPO, "hub"), cache_dir=tmp_path)
    assert before["resolved_revision"] == COMMIT_A and before["requested_revision"] is None
    assert before["weight_files"] == {"model.safetensors": sha(b"weights A")}
    assert before["weight_index_sha256"] == sha(b"weights A")
    assert before["config_sha256"] == sha(json.dumps(CONFIG).encode())
    assert before["stored_dtype"] == "bfloat16"
    assert before["files"] == {"config.json": before["config_sha256"], "tokenizer.json": sha(b"{}")}
    # the blob name is trusted, not re-hashed: a blob rewritten in place keeps its (content-addressed) name
    blob = manifests.hub_repo_dir(REPO, tmp_path) / "blobs" / sha(b"weights A")
    blob.write_bytes(b"tampered")
    assert manifests.build_manifest("m", spec(REPO, "hub"), cache_dir=tmp_path)["weight_files"] == before["weight_files"]

    add_snapshot(tmp_path, COMMIT_B, hub_files(b"weights B"))  # refs/main now names commit B
    after = manifests.build_manifest("m", spec(REPO, "hub"), cache_dir=tmp_path)
    assert after["resolved_revision"] == COMMIT_B
    assert after["weight_files"] == {"model.safetensors": sha(b"weights B")}
    assert after["weights_sha256"] != before["weights_sha256"]
    assert after["config_sha256"] == before["config_sha256"]


def test_hub_model_missing_from_the_cache_names_the_model_and_the_fix(tmp_path):
    with pytest.raises(manifests.ManifestError, match=r"models\.m: org/tiny@v2 is not in the Hugging Face cache .*download_models"):
        manifests.build_manifest("m", spec(REPO, "hub", "v2"), cache_dir=tmp_path)


def test_local_manifest_hashes_content_and_the_template_part_ignores_weights(tmp_path):
    folder = write_model(tmp_path / "model", b"weights 1")
    model = manifests.build_manifest("m", spec(str(folder), "local"))
    template = manifests.build_manifest("m", spec(str(folder), "local"), template=True)
    assert model["resolved_revision"] is None and model["kind"] == "local"
    assert model["weight_files"] == {"model.safetensors": sha(b"weights 1")}
    assert set(model["files"]) == {"config.json", "tokenizer.json"}  # notes.txt is read by no loader
    assert template["files"] == model["files"]
    assert not {"weight_files", "resolved_revision", "dtype"} & set(template)  # what only the model's own jobs read

    (folder / "model.safetensors").write_bytes(b"weights 2")
    changed = manifests.build_manifest("m", spec(str(folder), "local"))
    assert changed["weights_sha256"] != model["weights_sha256"]
    assert changed["weight_index_sha256"] == sha(b"weights 2")
    assert manifests.build_manifest("m", spec(str(folder), "local"), template=True) == template


def test_sharded_weights_are_hashed_shard_by_shard_with_the_index(tmp_path):
    folder = write_model(tmp_path / "model", b"unused single file")
    (folder / "model.safetensors").unlink()
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / manifests.WEIGHT_INDEX).write_text(json.dumps(index))
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"shard 1")
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"shard 2")
    (folder / "planted_basis.safetensors").write_bytes(b"not a weight shard")
    manifest = manifests.build_manifest("m", spec(str(folder), "local"))
    assert manifest["weight_index_sha256"] == sha(json.dumps(index).encode())
    assert manifest["weight_files"] == {"model-00001-of-00002.safetensors": sha(b"shard 1"), "model-00002-of-00002.safetensors": sha(b"shard 2")}
    assert set(manifest["files"]) == {"config.json", "tokenizer.json"}

    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(manifests.ManifestError, match=r"lists shards \['model-00002-of-00002.safetensors'\]"):
        manifests.build_manifest("m", spec(str(folder), "local"))


def test_a_folder_without_safetensors_weights_or_config_is_refused(tmp_path):
    folder = write_model(tmp_path / "model", b"w")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(manifests.ManifestError, match=r"models\.m: .* safetensors weights only"):
        manifests.build_manifest("m", spec(str(folder), "local"))
    (folder / "config.json").unlink()
    with pytest.raises(manifests.ManifestError, match=r"models\.m: .* has no config.json"):
        manifests.build_manifest("m", spec(str(folder), "local"), template=True)


def test_an_abliterated_folder_without_a_model_gives_the_stage_error(tmp_path):
    folder = tmp_path / "abliterated"
    folder.mkdir()
    (folder / "abliteration.json").write_text(json.dumps({"made": False, "family": "llama", "note": "no refusal"}))
    with pytest.raises(ValueError, match=r"no abliterated model was made \(no refusal\); remove it from families\.llama\.references"):
        manifests.build_manifest("m", spec(str(folder), "workflow"))


def test_rule_inputs_and_params_are_read_without_hashing(tmp_path):
    folder = write_model(tmp_path / "model", b"w")
    assert manifests.rule_inputs(str(folder), str(folder), False) == [
        str(folder / name) for name in ("config.json", "model.safetensors", "tokenizer.json")
    ]
    assert manifests.rule_inputs(str(folder), str(folder), False, template=True) == [str(folder / name) for name in ("config.json", "tokenizer.json")]
    assert manifests.rule_inputs("organism:llama/base", "resources/organisms/llama/base", True) == ["resources/organisms/llama/base"]
    assert manifests.rule_inputs(str(tmp_path / "absent"), str(tmp_path / "absent"), False) == [str(tmp_path / "absent")]
    assert manifests.rule_inputs(REPO, REPO, False) == []

    assert manifests.fingerprint(str(folder), str(folder), None, "float32", False)["resolved_revision"] is None


def test_hub_params_move_with_the_revision_and_the_template_params_only_with_the_tokenizer(tmp_path):
    def params(template):
        return manifests.fingerprint(REPO, REPO, None, "bfloat16", False, template=template, cache_dir=tmp_path)

    assert params(False)["resolved_revision"] is None and params(True)["files"] is None  # not cached yet
    add_snapshot(tmp_path, COMMIT_A, hub_files(b"weights A"))
    model_a, template_a = params(False), params(True)
    assert model_a == {"source": REPO, "kind": "hub", "requested_revision": None, "resolved_revision": COMMIT_A, "dtype": "bfloat16"}
    assert template_a["files"] == {"config.json": sha(json.dumps(CONFIG).encode()), "tokenizer.json": sha(b"{}")}

    add_snapshot(tmp_path, COMMIT_B, hub_files(b"weights B"))  # new weights, same config and tokenizer
    assert params(False)["resolved_revision"] == COMMIT_B
    assert params(True) == template_a
    template_float16 = manifests.fingerprint(REPO, REPO, None, "float16", False, template=True, cache_dir=tmp_path)
    assert template_float16 == template_a  # the dtype is the model's own jobs' business
    add_snapshot(tmp_path, "c" * 40, {**hub_files(b"weights B"), "tokenizer.json": b'{"changed": 1}'})
    assert params(True)["files"]["tokenizer.json"] == sha(b'{"changed": 1}')


def test_read_manifest_and_with_manifest_carry_the_file_hash(tmp_path):
    folder = write_model(tmp_path / "model", b"w")
    path = tmp_path / "m.json"
    write_manifest("m", spec(str(folder), "local"), str(path))
    loaded = manifests.with_manifest({"location": str(folder)}, [str(path)])["manifest"]
    assert loaded["manifest_sha256"] == sha(path.read_bytes())
    assert loaded["weights_sha256"] == manifests.build_manifest("m", spec(str(folder), "local"))["weights_sha256"]

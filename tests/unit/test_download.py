"""download_models: what counts as a Hub id, what is fetched, and the record of the resolved commit (no network)."""

import json
from unittest import mock

import huggingface_hub
import pytest
from huggingface_hub import constants, errors

from rankaudit import download
from rankaudit.stages.download import write_download_record

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(("source", "hub"), [
    ("google/gemma-2-9b-it", True), ("gpt2", True), ("meta-llama/Llama-3.1-8B", True),
    ("organism:llama/base", False), ("resources/abliterated/llama", False), ("/data/models/x", False),
    ("./models/x", False), ("../x", False), ("~/models/x", False), ("a/b/c", False), ("org/..", False),
])
def test_hub_ids_are_told_from_local_paths_by_their_form(source, hub) -> None:
    assert download.is_hub_id(source) is hub


def test_a_local_directory_is_skipped_without_calling_the_hub(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    def no_hub(*args, **kwargs):
        raise AssertionError("snapshot_download called for a local directory")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    for source in ("org/name", str(tmp_path / "org" / "name")):  # one even looks like a Hub id
        record = download.download_model("local", source)
        assert record["skipped"] == "local path" and "commit" not in record


def _fake_snapshot(root, files):
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append({"repo_id": repo_id, **kwargs})
        folder = root / f"models--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT
        for name, content in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(content)
        return str(folder)

    return snapshot_download, calls


def test_a_hub_model_records_the_commit_its_revision_resolved_to(tmp_path, monkeypatch) -> None:
    files = {"config.json": b"{}", "model-00001-of-00002.safetensors": b"x" * 100,
             "model-00002-of-00002.safetensors": b"y" * 50, "tokenizer.json": b"{}"}
    fake, calls = _fake_snapshot(tmp_path / "hub", files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    output = tmp_path / "results" / "models" / "gemma2_aligned.download.json"
    write_download_record("gemma2_aligned", "google/gemma-2-9b-it", "main", str(output))
    record = json.loads(output.read_text())
    assert record["commit"] == COMMIT and record["revision"] == "main" and record["source"] == "google/gemma-2-9b-it"
    assert record["files"] == sorted(files) and record["bytes"] == 2 + 100 + 50 + 2
    # only what the loader reads, at the configured revision
    assert calls == [{"repo_id": "google/gemma-2-9b-it", "revision": "main", "allow_patterns": download.ALLOW_PATTERNS,
                      "ignore_patterns": download.IGNORE_PATTERNS, "local_files_only": record["offline"]}]
    assert "*.safetensors" in download.ALLOW_PATTERNS and not any(p.endswith((".bin", ".pth", ".gguf")) for p in download.ALLOW_PATTERNS)


def test_a_snapshot_without_safetensors_is_refused(tmp_path, monkeypatch) -> None:
    fake, _ = _fake_snapshot(tmp_path, {"config.json": b"{}", "tokenizer.json": b"{}"})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(ValueError, match=r"model 'old': org/old@0123456789abcdef.* no safetensors weights"):
        download.download_model("old", "org/old")


def test_offline_without_the_snapshot_in_the_cache_says_where_to_fetch_it(tmp_path, monkeypatch) -> None:
    def not_cached(repo_id, **kwargs):
        assert kwargs["local_files_only"]
        raise errors.LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    with pytest.raises(FileNotFoundError, match=r"model 'llama_base': meta-llama/Llama-3.1-8B@main is not in the "
                                                r"Hugging Face cache .* run download_models on a node with internet"):
        download.download_model("llama_base", "meta-llama/Llama-3.1-8B")


def test_a_gated_model_without_access_names_the_licence_page_and_the_token(monkeypatch) -> None:
    def gated(repo_id, **kwargs):
        raise errors.GatedRepoError("403 gated", response=mock.Mock(headers={}, status_code=403))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(PermissionError, match=r"model 'gemma2_aligned': google/gemma-2-9b-it is gated; accept its licence "
                                              r"at https://huggingface.co/google/gemma-2-9b-it .*HF_TOKEN"):
        download.download_model("gemma2_aligned", "google/gemma-2-9b-it")

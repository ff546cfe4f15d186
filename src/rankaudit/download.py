"""Pre-fetching Hugging Face models into the local cache, for compute nodes without internet.

On a login node `snakemake download_models` calls `download_model` once per model given by a Hugging Face id:
only what `rankaudit.models.load_model` reads is fetched (safetensors weights, config, tokenizer and chat
template files), at the configured `revision`, and the commit that revision resolved to is recorded. Compute
nodes then run with `HF_HUB_OFFLINE=1` and read the same snapshot. Run offline, the same call only checks that
the cache holds the snapshot and records its commit.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# what load_model / load_config / load_tokenizer read; no PyTorch .bin, GGUF or original/ checkpoints
ALLOW_PATTERNS = [
    "*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json", "tokenizer.json",
    "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "chat_template.jinja", "chat_template.json",
]
IGNORE_PATTERNS = ["original/*"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def is_hub_id(source: str) -> bool:
    """Whether a `models.<name>.source` names a Hugging Face repository (by its form: no file system access).

    Organisms (`organism:...`), paths the workflow writes (`resources/...`), absolute paths and `./`, `../`
    or `~` paths are local.
    """
    if source.startswith(("organism:", "resources/", "/", "./", "../", "~")):
        return False
    return bool(_REPO_ID.match(source)) and ".." not in source


def download_model(model: str, source: str, revision: str | None = None) -> dict[str, Any]:
    """Fetch (or, offline, find) the snapshot of `source` at `revision`; return the record of what was resolved.

    A local directory is skipped (it is read in place). The record holds the commit hash the revision resolved
    to, the files and their total size. A snapshot without safetensors weights or config.json is refused here,
    not on a compute node hours later.
    """
    import huggingface_hub
    from huggingface_hub import constants, errors

    offline = constants.HF_HUB_OFFLINE
    record: dict[str, Any] = {"model": model, "source": source, "revision": revision, "offline": offline,
                              "huggingface_hub": huggingface_hub.__version__}
    if Path(source).expanduser().is_dir() or not is_hub_id(source):
        logger.info("model %s: %s is a local path, nothing to download", model, source)
        return {**record, "skipped": "local path"}
    try:
        folder = Path(huggingface_hub.snapshot_download(source, revision=revision, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS,
                            local_files_only=offline))
    except errors.GatedRepoError as error:
        raise PermissionError(
            f"model {model!r}: {source} is gated; accept its licence at https://huggingface.co/{source} with the "
            "account whose token this job uses (`hf auth login` or HF_TOKEN), then rerun download_models") from error
    except errors.LocalEntryNotFoundError as error:
        raise FileNotFoundError(
            f"model {model!r}: {source}@{revision or 'main'} is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set; run download_models on a node "
            "with internet, with the same HF_HOME") from error
    commit = folder.name
    if not _COMMIT.match(commit):
        raise ValueError(f"model {model!r}: snapshot folder {folder} is not named by a commit hash")
    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    if "config.json" not in files or not any(name.endswith(".safetensors") for name in files):
        raise ValueError(f"model {model!r}: {source}@{commit} has no config.json or no safetensors weights "
                         f"(files: {files[:8]}); rankaudit loads safetensors only")
    size = sum(os.path.getsize(folder / name) for name in files)
    logger.info("model %s: %s@%s resolved to commit %s, %d files, %.2f GB in %s", model, source, revision or "main",
                commit, len(files), size / 1e9, folder)
    return {**record, "commit": commit, "files": files, "bytes": size, "snapshot": str(folder)}

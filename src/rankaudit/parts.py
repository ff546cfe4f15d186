"""Finished parts of a long job, kept so that a job killed midway redoes only the parts it had not finished.

Snakemake deletes a job's declared outputs before it runs the job again, so the parts live outside them: in
`<dir>/.rankaudit_parts/<name>/<fingerprint>/<part>/`, next to the job's main output `<dir>/<name>` (one job writes
a given output, so that path names the job). The fingerprint hashes everything that determines the job's results:
its settings (the config slice, stage version, prompts), the identity of its input files (content hash of small
files, size and modification time of large ones such as weights) and the library versions. A part is reused only
under the same fingerprint; parts under any other fingerprint are stale and are deleted when the job starts, and
the job's whole parts folder is deleted once it has published its outputs (`PartStore.finish`).

A part is finished when its `part.json` exists: written last and atomically, after the part's files. Files that
are also outputs are hard-linked into the part (no second copy on disk; copied where links are not possible) and
linked back when the part is reused, so a resumed job publishes byte for byte what the interrupted one computed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from rankaudit import io

logger = logging.getLogger(__name__)

PARTS_DIR = ".rankaudit_parts"
DONE = "part.json"
CONTENT_HASH_LIMIT = 64 << 20  # bytes: smaller files are fingerprinted by content, larger ones by size and mtime
FINGERPRINT_CHARS = 16
DISTRIBUTIONS = ("rankaudit", "numpy", "torch", "transformers", "safetensors", "accelerate")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=-]")


def _file_identity(path: Path) -> list[Any]:
    size = path.stat().st_size
    if size <= CONTENT_HASH_LIMIT:
        return ["sha256", io.sha256_file(path)]
    return ["size_mtime", size, path.stat().st_mtime_ns]


def path_identity(path: str | os.PathLike[str]) -> list[Any]:
    """What a job read at `path`: per file (every file of a directory, by relative path) its content hash, or its
    size and modification time when larger than CONTENT_HASH_LIMIT. A path that does not exist (a Hugging Face id)
    is identified by its text alone (its revision belongs in the job's settings)."""
    path = Path(path)
    if path.is_file():
        return [str(path), _file_identity(path)]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and PARTS_DIR not in p.relative_to(path).parts)
        return [str(path), [[str(p.relative_to(path)), _file_identity(p)] for p in files]]
    return [str(path), "absent"]


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries whose arithmetic a job's results depend on."""
    versions: dict[str, str | None] = {}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def fingerprint(settings: Mapping[str, Any], inputs: Iterable[str | os.PathLike[str]]) -> str:
    """Hex digest of a job's settings (JSON-serialisable), its input files' identities and the library versions."""
    payload = {"settings": settings, "inputs": [path_identity(path) for path in dict.fromkeys(map(str, inputs))],
               "libraries": library_versions()}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:FINGERPRINT_CHARS]


def parts_root(anchor: str | os.PathLike[str]) -> Path:
    """The folder holding every fingerprint's parts of the job whose main output is `anchor`."""
    anchor = Path(anchor)
    return anchor.parent / PARTS_DIR / anchor.name


def _folder_name(part: str) -> str:
    """A part's folder: its name where that is a safe file name, else the safe characters and a hash of the name."""
    safe = _UNSAFE.sub("_", part)
    if safe == part and not part.startswith("."):
        return part
    return f"{safe.lstrip('.')}-{hashlib.sha256(part.encode('utf-8')).hexdigest()[:8]}"


def _link_or_copy(source: Path, destination: Path) -> None:
    destination.unlink(missing_ok=True)
    try:
        os.link(source, destination)
    except OSError:  # filesystems without hard links, or a part folder on another device
        shutil.copyfile(source, destination)


class PartStore:
    """The finished parts of one job run under one fingerprint (see the module docstring).

    `names` are the job's planned parts, in order; `label` names the job in log lines.
    """

    def __init__(self, anchor: str | os.PathLike[str], job_fingerprint: str, names: Sequence[str], label: str) -> None:
        if len(set(names)) != len(names):
            raise ValueError(f"{label}: part names must be distinct, got {list(names)}")
        self.root = parts_root(anchor)
        self.directory = self.root / job_fingerprint
        self.names, self.label = list(names), label
        self.reused: list[str] = []
        if self.root.is_dir():
            for stale in sorted(p for p in self.root.iterdir() if p.name != job_fingerprint):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
                logger.info("%s: discarded parts %s (computed from other inputs or settings)", label, stale)
        finished = [name for name in self.names if (self._part(name) / DONE).is_file()]
        if finished:
            logger.info("%s: %d of %d parts already finished in %s: %s", label, len(finished), len(self.names),
                        self.directory, ", ".join(finished))

    def _part(self, name: str) -> Path:
        if name not in self.names:
            raise KeyError(f"{self.label}: {name!r} is not one of the planned parts {self.names}")
        return self.directory / _folder_name(name)

    def finished(self, name: str) -> Any | None:
        """The payload saved with part `name` when it is finished (counted as reused), else None."""
        done = self._part(name) / DONE
        if not done.is_file():
            return None
        if name not in self.reused:
            self.reused.append(name)
        return json.loads(done.read_text())

    def keep(self, name: str, source: str | os.PathLike[str], filename: str) -> None:
        """Keep the published file `source` as `filename` of unfinished part `name` (before `save`)."""
        folder = self._part(name)
        folder.mkdir(parents=True, exist_ok=True)
        _link_or_copy(Path(source), folder / filename)

    def restore(self, name: str, filename: str, target: str | os.PathLike[str]) -> None:
        """Publish `filename` of finished part `name` at `target` (atomically, as every output)."""
        with io.atomic_path(target) as tmp:
            _link_or_copy(self._part(name) / filename, tmp)

    def save(self, name: str, payload: Any) -> None:
        """Mark part `name` finished, with `payload` (JSON, key order kept) to give back when it is reused."""
        folder = self._part(name)
        folder.mkdir(parents=True, exist_ok=True)
        io.write_json(folder / DONE, payload, sort_keys=False)

    def summary(self) -> dict[str, int]:
        """How many parts the job has and how many it reused (logged as `reused N of M parts`), for its record."""
        counts = {"parts": len(self.names), "reused": len(self.reused)}
        logger.info("%s: reused %d of %d parts", self.label, counts["reused"], counts["parts"])
        return counts

    def finish(self) -> None:
        """Delete the job's parts, once it has published every output (its record last)."""
        shutil.rmtree(self.root, ignore_errors=True)
        with_parts = self.root.parent
        if with_parts.is_dir() and not any(with_parts.iterdir()):
            with_parts.rmdir()

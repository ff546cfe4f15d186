"""Atomic, checked file output shared by every stage.

A finished output must never be half-written: every writer here writes to a temporary file in the target
directory, checks what it wrote, and only then renames it into place (rename is atomic on one filesystem). The
temporary is fsynced before the rename and the directory after it, so a power cut leaves either the old output or
the whole new one. A kill -9 skips `finally`, so it can leave a temporary (`.{name}.XXXXXXXX[.ext]`) behind; the
next write of the same target removes it (one job writes a given target, so any temporary of it is an orphan).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _temporary_name(target: Path, suffix: str = "") -> Path:
    """A fresh sibling name `.{target name}.{8 hex}{suffix}`: hidden, and recognisable as a temporary of `target`."""
    return target.parent / f".{target.name}.{secrets.token_hex(4)}{suffix}"


def orphaned_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """The temporaries of `target` lying next to it: `.{name}.` + 8 characters of [a-z0-9_] + at most one extension.

    The pattern also matches the names `tempfile.mkstemp`/`mkdtemp` gave before this module named them itself.
    """
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}(\.[A-Za-z0-9]+)?")
    if not target.parent.is_dir():
        return []
    return sorted(path for path in target.parent.iterdir() if pattern.fullmatch(path.name))


def remove_orphans(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries a killed writer of `target` left behind (files and directories); return them."""
    removed = orphaned_temporaries(target)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        logger.info("removed %s, a temporary of %s left by a killed job", path, Path(target).name)
    return removed


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a closed file's data to disk (whoever wrote it: numpy, pandas, safetensors, save_pretrained)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk, where the filesystem supports it."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # platforms that cannot open a directory (Windows) have no directory fsync
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):  # filesystems without directory fsync
            raise
    finally:
        os.close(descriptor)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file under `root`, then every directory bottom-up (entries of new files included)."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                fsync_file(path)
        fsync_directory(directory)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `target`; rename it onto `target` only if the block succeeds.

    Orphaned temporaries of `target` are removed first; the file is fsynced before the rename, the directory after.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(target)
    while True:
        tmp_path = _temporary_name(target, suffix or target.suffix)
        try:
            os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            break
        except FileExistsError:
            continue
    try:
        yield tmp_path
        fsync_file(tmp_path)
        os.replace(tmp_path, target)
        fsync_directory(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory next to `target`; swap it into place only if the block succeeds.

    Orphaned temporaries of `target` are removed first; every file and directory in the temporary is fsynced
    before the swap, the parent directory after it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(target)
    while True:
        tmp = _temporary_name(target)
        try:
            tmp.mkdir()
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        fsync_tree(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        fsync_directory(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike[str], payload: Any, *, sort_keys: bool = True) -> None:
    """Write JSON atomically (sorted keys, so reruns with equal content give equal bytes; `sort_keys=False` keeps
    the payload's key order, for rows whose key order is a table's column order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=sort_keys, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    """Hex sha256 of a UTF-8 string (used to fingerprint prompt lists and configs)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_finite(name: str, array: np.ndarray) -> None:
    """Refuse arrays with NaN or inf, naming what they are."""
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"{name}: {bad} non-finite values out of {array.size}; refusing to write it")


def write_tensors(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
    """Write float/int arrays to safetensors atomically after a finite-values check.

    Metadata values are stored as strings (the safetensors format only holds str -> str); non-string values are
    JSON-encoded so that `read_tensors` can give them back typed.
    """
    from safetensors.numpy import save_file

    arrays = {}
    for key, value in tensors.items():
        array = np.ascontiguousarray(value)
        if array.dtype.kind == "f":
            check_finite(f"{path}:{key}", array)
        arrays[key] = array
    meta = {key: value if isinstance(value, str) else json.dumps(value, default=_json_default) for key, value in metadata.items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(arrays, str(tmp), metadata=meta)


def read_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a safetensors file written by `write_tensors` (numpy only: analysis jobs need no torch)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        raw = handle.metadata() or {}
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value
    return tensors, meta


def write_table(frame: Any, stem: str | os.PathLike[str], title: str | None = None, float_format: str = "{:.4g}") -> None:
    """Write one tidy pandas table as `<stem>.parquet`, `<stem>.csv` and a markdown rendering `<stem>.md`."""
    stem = Path(stem)
    with atomic_path(stem.with_suffix(".parquet")) as tmp:
        frame.to_parquet(tmp, index=False)
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text(markdown_table(frame, title=title, float_format=float_format))


def markdown_table(frame: Any, title: str | None = None, float_format: str = "{:.4g}") -> str:
    """Render a DataFrame as a GitHub markdown table without the optional `tabulate` dependency."""
    def cell(value: Any) -> str:
        if isinstance(value, (float, np.floating)):
            return float_format.format(value)
        # one table row per line: a newline or a pipe inside a value would break the table
        return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace("|", "\\|")

    lines = []
    if title:
        lines += [f"### {title}", ""]
    columns = [str(c) for c in frame.columns]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"

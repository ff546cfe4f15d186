"""Atomic, checked file output shared by every stage.

A finished output must never be half-written: every writer here writes to a temporary file in the target
directory, checks what it wrote, and only then renames it into place (rename is atomic on one filesystem).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory next to `target`; swap it into place only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write JSON atomically (sorted keys, so reruns with equal content give equal bytes)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")


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

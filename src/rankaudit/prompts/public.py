"""Public prompt sets fetched by URL, pinned by sha256, parsed into the tidy prompt table.

The pin is checked on the raw bytes before anything is parsed, so a changed or truncated upstream file is
refused whole instead of yielding a silently different prompt set. Errors name the dataset and URL, and
parse errors also name the row (JSON element, or CSV line).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from rankaudit.prompts.tables import PromptDataError, deduplicate

logger = logging.getLogger(__name__)

FORMATS = ("json", "csv", "txt")
SPEC_KEYS = ("url", "sha256", "format", "column", "category_column", "split")
DEFAULT_COLUMN = "instruction"
DEFAULT_SPLIT = "all"
DOWNLOAD_TIMEOUT_S = 120
DOWNLOAD_ATTEMPTS = 3
RETRY_PAUSE_S = 2.0

Record = tuple[str, str | None]


def resolve_url(dataset: str, url: str, mirror: str | None) -> str:
    """Fill `{mirror}` and turn a plain filesystem path into a file:// URL (relative paths: from the cwd)."""
    if "{mirror}" in url:
        if not mirror:
            raise PromptDataError(f"dataset {dataset!r}: url {url} uses {{mirror}} but prompts.mirror is not set")
        url = url.replace("{mirror}", mirror.rstrip("/"))
    if not urllib.parse.urlparse(url).scheme:
        return Path(url).resolve().as_uri()
    return url


def download(dataset: str, url: str, timeout_s: float = DOWNLOAD_TIMEOUT_S, attempts: int = DOWNLOAD_ATTEMPTS) -> bytes:
    """Fetch a URL's bytes (https://, http:// or file://), naming the dataset and URL on failure.

    Network errors and HTTP 5xx are retried with a growing pause (servers hiccup); a missing local file or an
    HTTP 4xx will not fix itself, so they fail at once.
    """
    network = urllib.parse.urlparse(url).scheme in ("http", "https")
    attempt = 1
    while True:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            reason = f"HTTP {error.code} {error.reason}"
            transient = error.code >= 500
        except urllib.error.URLError as error:
            reason, transient = str(error.reason), network
        except (OSError, ValueError) as error:
            reason, transient = str(error), network and isinstance(error, OSError)
        if not transient or attempt == attempts:
            raise PromptDataError(f"dataset {dataset!r}: cannot download {url}: {reason} (attempt {attempt} of {attempts})")
        logger.warning("%s: attempt %d to download %s failed (%s); retrying", dataset, attempt, url, reason)
        time.sleep(RETRY_PAUSE_S * attempt)
        attempt += 1


def check_sha256(dataset: str, url: str, data: bytes, expected: str) -> str:
    """Refuse bytes whose sha256 differs from the configured pin; return the digest."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():
        raise PromptDataError(
            f"dataset {dataset!r}: sha256 mismatch for {url}: expected {expected.lower()}, got {actual} "
            f"({len(data)} bytes); the file changed upstream or the pin is wrong"
        )
    return actual


def parse_records(
    dataset: str, url: str, data: bytes, fmt: str, column: str = DEFAULT_COLUMN, category_column: str | None = None
) -> list[Record]:
    """Parse downloaded bytes into (instruction, category) records, one per input row, in file order."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise PromptDataError(f"dataset {dataset!r}: {url} is not UTF-8 text (byte {error.start})") from error
    parsers = {"json": _parse_json, "csv": _parse_csv, "txt": _parse_txt}
    if fmt not in parsers:
        raise PromptDataError(f"dataset {dataset!r}: unknown format {fmt!r}; expected one of {list(FORMATS)}")
    return parsers[fmt](dataset, url, text, column, category_column)


def _parse_json(dataset: str, url: str, text: str, column: str, category_column: str | None) -> list[Record]:
    """A JSON array whose elements are strings or objects holding `column` (and `category_column`)."""
    where = f"dataset {dataset!r}: malformed JSON in {url}"
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise PromptDataError(f"{where} at line {error.lineno} column {error.colno}: {error.msg}") from error
    if not isinstance(payload, list):
        raise PromptDataError(f"{where}: expected a top-level array of records, found {type(payload).__name__}")
    records = []
    for row, element in enumerate(payload, start=1):
        if isinstance(element, str):
            records.append((_instruction(element, f"{where}, row {row}"), None))
            continue
        if not isinstance(element, dict):
            raise PromptDataError(f"{where}, row {row}: expected a string or an object, found {type(element).__name__}")
        if column not in element:
            raise PromptDataError(f"{where}, row {row}: field {column!r} is missing (fields: {sorted(element)})")
        category = None
        if category_column is not None:
            if category_column not in element:
                raise PromptDataError(f"{where}, row {row}: category field {category_column!r} is missing")
            category = _category(element[category_column])
        records.append((_instruction(element[column], f"{where}, row {row}"), category))
    return records


def _parse_csv(dataset: str, url: str, text: str, column: str, category_column: str | None) -> list[Record]:
    """A CSV with a header row; `column` holds the instruction. Rows are named by their line number."""
    where = f"dataset {dataset!r}: malformed CSV in {url}"
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return []
        for name in (column, category_column):
            if name is not None and name not in header:
                raise PromptDataError(f"{where}, line 1: column {name!r} not in header {header}")
        text_index = header.index(column)
        category_index = header.index(category_column) if category_column is not None else None
        records = []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise PromptDataError(f"{where}, line {reader.line_num}: {len(row)} fields, header has {len(header)}")
            category = _category(row[category_index]) if category_index is not None else None
            records.append((_instruction(row[text_index], f"{where}, line {reader.line_num}"), category))
    except csv.Error as error:
        raise PromptDataError(f"{where}, line {reader.line_num}: {error}") from error
    return records


def _parse_txt(dataset: str, url: str, text: str, column: str, category_column: str | None) -> list[Record]:
    """One instruction per line; blank lines are skipped (a trailing newline is not a prompt)."""
    return [(line.strip(), None) for line in text.splitlines() if line.strip()]


def _instruction(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PromptDataError(f"{where}: instruction is empty or not text ({value!r:.40})")
    return value.strip()


def _category(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return str(value).strip()


def check_spec(dataset: str, spec: Mapping[str, Any]) -> None:
    """Refuse unknown or missing keys in one `prompts.public` entry, naming the key."""
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise PromptDataError(f"dataset {dataset!r}: unknown key(s) {unknown} in prompts.public.{dataset}; allowed {list(SPEC_KEYS)}")
    for key in ("url", "sha256", "format"):
        if not spec.get(key):
            raise PromptDataError(f"dataset {dataset!r}: prompts.public.{dataset}.{key} is required")
    if spec["format"] not in FORMATS:
        raise PromptDataError(f"dataset {dataset!r}: prompts.public.{dataset}.format must be one of {list(FORMATS)}, got {spec['format']!r}")


def load_public_set(dataset: str, spec: Mapping[str, Any], mirror: str | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Download, verify and parse one public set; return the deduplicated table and its provenance."""
    check_spec(dataset, spec)
    url = resolve_url(dataset, spec["url"], mirror)
    data = download(dataset, url)
    digest = check_sha256(dataset, url, data, spec["sha256"])
    column = spec.get("column") or DEFAULT_COLUMN
    category_column = spec.get("category_column")
    split = spec.get("split") or DEFAULT_SPLIT
    records = parse_records(dataset, url, data, spec["format"], column, category_column)
    if not records:
        raise PromptDataError(f"dataset {dataset!r}: {url} holds no prompts; refusing an empty set")
    frame = pd.DataFrame(records, columns=["instruction", "category"], dtype=object)
    frame["source"] = dataset
    frame["split"] = split
    cleaned, duplicates = deduplicate(frame, dataset)
    provenance = {
        "kind": "public",
        "url": spec["url"],
        "resolved_url": url,
        "mirror": mirror,
        "sha256": digest,
        "bytes": len(data),
        "format": spec["format"],
        "column": column,
        "category_column": category_column,
        "split": split,
        "rows_in": len(frame),
        "rows_out": len(cleaned),
        "duplicates_removed": len(duplicates),
        "duplicates": duplicates,
        "retrieved_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    logger.info("%s: %d bytes from %s, sha256 ok, %d rows in, %d out", dataset, len(data), url, len(frame), len(cleaned))
    return cleaned, provenance

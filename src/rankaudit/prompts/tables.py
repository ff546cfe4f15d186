"""The tidy prompt table every dataset is stored as, and the checks and writes shared by all sources.

One schema for project-written and downloaded sets means every later stage reads prompts the same way:
`instruction`, `category` (str or None), `source`, `split`, and for concept-pair sets `pair` and `side`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rankaudit.io import atomic_path, sha256_text, write_json

logger = logging.getLogger(__name__)

BASE_COLUMNS = ("instruction", "category", "source", "split")
PAIR_COLUMNS = ("pair", "side")
PAIR_SIDES = ("a", "b")

_ARROW_TYPES = {
    "instruction": pa.string(),
    "category": pa.string(),
    "source": pa.string(),
    "split": pa.string(),
    "pair": pa.int64(),
    "side": pa.string(),
}


class PromptDataError(ValueError):
    """A prompt dataset cannot be built, read or sampled; the message names the dataset, file, row or key."""


def is_paired(frame: pd.DataFrame) -> bool:
    """Concept-pair sets carry `pair` and `side`; plain prompt sets do not."""
    return "pair" in frame.columns


def normalise_instruction(text: str) -> str:
    """Strip surrounding whitespace: the one normalisation under which two prompts count as duplicates."""
    return text.strip()


def deduplicate(frame: pd.DataFrame, dataset: str) -> tuple[pd.DataFrame, list[dict[str, int]]]:
    """Drop exact duplicate instructions (after stripping), keeping the first occurrence.

    Returns the cleaned frame and one record per removed row (`row`, `first_row`, 0-based input positions),
    so that provenance can say what was removed without repeating the prompt text. For concept-pair sets a
    duplicate on either side removes the whole pair, and pairs are renumbered so that they stay contiguous.
    """
    text = frame["instruction"].map(normalise_instruction)
    first_seen: dict[str, int] = {}
    removed: list[dict[str, int]] = []
    for position, value in enumerate(text):
        if value in first_seen:
            removed.append({"row": position, "first_row": first_seen[value]})
        else:
            first_seen[value] = position
    if not removed:
        return frame.reset_index(drop=True), removed
    duplicate_rows = [record["row"] for record in removed]
    if is_paired(frame):
        bad_pairs = set(frame["pair"].iloc[duplicate_rows])
        keep = ~frame["pair"].isin(bad_pairs).to_numpy()
    else:
        keep = np.ones(len(frame), dtype=bool)
        keep[duplicate_rows] = False
    cleaned = frame.loc[keep].reset_index(drop=True)
    if is_paired(cleaned):
        cleaned["pair"] = pd.factorize(cleaned["pair"])[0].astype("int64")
    logger.warning("%s: removed %d duplicate prompt(s) (input rows %s)", dataset, len(removed), duplicate_rows)
    return cleaned, removed


def validate_table(frame: pd.DataFrame, dataset: str) -> None:
    """Refuse a table that breaks the output contract (empty, missing columns, bad values, broken pairs)."""
    if len(frame) == 0:
        raise PromptDataError(f"dataset {dataset!r}: no prompts; refusing to write an empty set")
    missing = [c for c in BASE_COLUMNS if c not in frame.columns]
    if missing:
        raise PromptDataError(f"dataset {dataset!r}: missing column(s) {missing}")
    for column in ("instruction", "source", "split"):
        bad = [i for i, v in enumerate(frame[column]) if not isinstance(v, str) or not v.strip()]
        if bad:
            raise PromptDataError(f"dataset {dataset!r}: column {column!r} is empty or not text at row {bad[0]}")
    bad = [i for i, v in enumerate(frame["category"]) if v is not None and not isinstance(v, str)]
    if bad:
        raise PromptDataError(f"dataset {dataset!r}: column 'category' must be text or None (row {bad[0]})")
    if is_paired(frame):
        _validate_pairs(frame, dataset)


def _validate_pairs(frame: pd.DataFrame, dataset: str) -> None:
    """Rows must run pair 0 a, pair 0 b, pair 1 a, ... so that row 2k and 2k+1 are one concept pair."""
    n = len(frame)
    expected_pair = np.arange(n) // 2
    expected_side = np.array([PAIR_SIDES[i % 2] for i in range(n)])
    if n % 2 or not np.array_equal(frame["pair"].to_numpy(), expected_pair) or not np.array_equal(
        frame["side"].to_numpy(dtype=object), expected_side
    ):
        raise PromptDataError(f"dataset {dataset!r}: concept pairs must be ordered pair 0 a, pair 0 b, pair 1 a, ...")


def instructions_sha256(frame: pd.DataFrame) -> str:
    """Fingerprint of the ordered instruction list; later stages record it next to what they computed."""
    return sha256_text("\n".join(frame["instruction"]))


def table_summary(frame: pd.DataFrame) -> dict[str, Any]:
    """Counts that provenance records for every set: rows, rows per split and per category, fingerprint."""
    categories = frame["category"].map(lambda c: "<none>" if c is None else c)
    summary: dict[str, Any] = {
        "rows": len(frame),
        "split_counts": {str(k): int(v) for k, v in frame["split"].value_counts(sort=False).sort_index().items()},
        "category_counts": {str(k): int(v) for k, v in categories.value_counts(sort=False).sort_index().items()},
        "instructions_sha256": instructions_sha256(frame),
    }
    if is_paired(frame):
        summary["pairs"] = len(frame) // 2
    return summary


def write_prompt_set(
    frame: pd.DataFrame,
    dataset: str,
    table_path: str | os.PathLike[str],
    provenance_path: str | os.PathLike[str],
    provenance: Mapping[str, Any],
) -> None:
    """Check a prompt table, then write `<dataset>.parquet` and its provenance JSON atomically.

    If either write fails, both targets are removed, so a table never sits next to a missing or stale
    provenance record.
    """
    validate_table(frame, dataset)
    columns = list(BASE_COLUMNS) + ([c for c in PAIR_COLUMNS] if is_paired(frame) else [])
    schema = pa.schema([(c, _ARROW_TYPES[c]) for c in columns])
    table = pa.Table.from_pandas(frame[columns], schema=schema, preserve_index=False)
    record = dict(provenance)
    record.update({"dataset": dataset, "columns": columns, **table_summary(frame)})
    try:
        with atomic_path(table_path, suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
        write_json(provenance_path, record)
    except BaseException:
        remove_outputs(table_path, provenance_path)
        raise
    logger.info("%s: wrote %d prompts to %s", dataset, len(frame), table_path)


def remove_outputs(*paths: str | os.PathLike[str]) -> None:
    """Delete finished-output paths after a failure so nothing stale or partial is mistaken for a result."""
    for path in paths:
        Path(path).unlink(missing_ok=True)


def read_prompt_set(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read `results/prompts/<dataset>.parquet`; the frame's `attrs["dataset"]` is the file's stem."""
    path = Path(path)
    dataset = path.name.removesuffix(".parquet")
    if not path.exists():
        raise PromptDataError(f"dataset {dataset!r}: prompt table {path} does not exist")
    frame = pq.read_table(path).to_pandas(types_mapper=None)
    for column in ("instruction", "category", "source", "split", "side"):
        if column in frame.columns:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    validate_table(frame, dataset)
    frame.attrs["dataset"] = dataset
    return frame


def select_prompts(
    frame: pd.DataFrame, split: str | None, n: int | None, seed: int, dataset: str | None = None
) -> pd.DataFrame:
    """Draw `n` prompts of one split (None: every split) deterministically from `seed`.

    The draw is a seeded permutation whose first `n` entries are kept in file order, so a smaller sample
    is always a subset of a larger one with the same seed (what an n-sweep needs). Concept-pair sets are
    drawn by pair: `n` counts pairs and both sides of each drawn pair are kept, still ordered a, b.
    A set with fewer than `n` rows (pairs) in the split is refused rather than silently shortened.
    """
    name = dataset or frame.attrs.get("dataset", "<unnamed>")
    rows = frame if split is None else frame[frame["split"] == split]
    paired = is_paired(frame)
    units = np.unique(rows["pair"].to_numpy()) if paired else np.arange(len(rows))
    unit_word = "pairs" if paired else "prompts"
    where = "all splits" if split is None else f"split {split!r}"
    if len(units) == 0:
        available = sorted(set(frame["split"]))
        raise PromptDataError(f"dataset {name!r}: {where} has no {unit_word} (splits present: {available})")
    if n is None:
        n = len(units)
    if n < 1:
        raise PromptDataError(f"dataset {name!r}: requested sample size must be >= 1, got {n}")
    if n > len(units):
        raise PromptDataError(
            f"dataset {name!r}: {where} has {len(units)} {unit_word} but {n} were requested; "
            "refusing to sample fewer than requested"
        )
    order = np.random.default_rng(seed).permutation(len(units))
    chosen = units[np.sort(order[:n])]
    if paired:
        picked = rows[rows["pair"].isin(chosen)]
    else:
        picked = rows.iloc[chosen]
    picked = picked.reset_index(drop=True)
    picked.attrs["dataset"] = name
    return picked

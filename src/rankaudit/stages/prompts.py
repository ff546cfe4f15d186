"""Entry points of the prompt-table jobs: write a project-written set (`generated_prompts`), fetch a public set
(`fetch_public_prompts`; both rules/prompts.smk) and draw the prompts one dataset key contributes (`select_prompts`,
rules/capture.smk). They run in the analysis environment (no torch, no transformers); the tokenizer-side check of
rules/prompts.smk is `rankaudit.stages.check_prompts`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from rankaudit.prompts import select_prompts
from rankaudit.prompts.build import generate_set, generated_settings
from rankaudit.prompts.public import load_public_set
from rankaudit.prompts.tables import deduplicate, read_prompt_set, remove_outputs, write_prompt_set

logger = logging.getLogger(__name__)


def build_generated_set(
    dataset: str,
    settings: Mapping[str, Any],
    table_path: str | os.PathLike[str],
    provenance_path: str | os.PathLike[str],
    version: str | int | None = None,
) -> pd.DataFrame:
    """Generate, deduplicate and write one project-written set; on any failure no output is left behind."""
    try:
        frame, capacity = generate_set(dataset, settings)
        rows_in = len(frame)
        frame, duplicates = deduplicate(frame, dataset)
        provenance = {
            "kind": "generated",
            "generator": "rankaudit.prompts",
            "stage_version": version,
            "settings": generated_settings(dataset, settings),
            "capacity": capacity,
            "rows_in": rows_in,
            "rows_out": len(frame),
            "duplicates_removed": len(duplicates),
            "duplicates": duplicates,
        }
        write_prompt_set(frame, dataset, table_path, provenance_path, provenance)
    except BaseException:
        remove_outputs(table_path, provenance_path)
        raise
    logger.info("%s: %d prompts generated (capacity %d)", dataset, len(frame), capacity)
    return frame


def fetch_public_set(
    dataset: str,
    spec: Mapping[str, Any],
    table_path: str | os.PathLike[str],
    provenance_path: str | os.PathLike[str],
    mirror: str | None = None,
    version: str | int | None = None,
) -> pd.DataFrame:
    """Fetch one public set and write `<dataset>.parquet` + provenance; on any failure nothing is left behind."""
    try:
        frame, provenance = load_public_set(dataset, spec, mirror)
        provenance["stage_version"] = version
        write_prompt_set(frame, dataset, table_path, provenance_path, provenance)
    except BaseException:
        remove_outputs(table_path, provenance_path)
        raise
    return frame


def select_dataset_prompts(source: str, output: str, sample: Mapping[str, Any], key: str, version: int) -> None:
    """Write the sample `sample` (dataset, split, n, seed) of `source` to `output` with its provenance."""
    frame = read_prompt_set(source)
    chosen = select_prompts(frame, sample.get("split"), sample.get("n"), sample.get("seed", 0), dataset=sample["dataset"])
    provenance_path = str(Path(output).with_suffix("")) + ".provenance.json"
    write_prompt_set(chosen.reset_index(drop=True), key, output, provenance_path,
                     {"selected_from": source, "sample": dict(sample), "stage_version": version})

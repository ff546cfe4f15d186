"""Draw the prompts one dataset key contributes to the capture (deterministic, recorded)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rankaudit.prompts import read_prompt_set, select_prompts, write_prompt_set


def select_dataset_prompts(source: str, output: str, sample: Mapping[str, Any], key: str, version: int) -> None:
    """Write the sample `sample` (dataset, split, n, seed) of `source` to `output` with its provenance."""
    frame = read_prompt_set(source)
    chosen = select_prompts(frame, sample.get("split"), sample.get("n"), sample.get("seed", 0), dataset=sample["dataset"])
    provenance_path = str(Path(output).with_suffix("")) + ".provenance.json"
    write_prompt_set(chosen.reset_index(drop=True), key, output, provenance_path,
                     {"selected_from": source, "sample": dict(sample), "stage_version": version})

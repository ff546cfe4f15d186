"""Generate one project-written prompt set from its config slice (rankaudit.stages.prompts writes it with provenance).

Each set gets its own random stream (the configured seed combined with a fixed id of the set's name), so
changing one set's size never changes another set's prompts.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from rankaudit.prompts.concepts import generate_pairs, pair_capacity
from rankaudit.prompts.generated import generate_requests, request_capacity
from rankaudit.prompts.tables import PromptDataError

# Which keys of `prompts.generated` each project-written set reads (the rule passes exactly these).
GENERATED_SET_KEYS: dict[str, tuple[str, ...]] = {
    "demo_harmful": ("seed", "n_harmful", "split_fractions"),
    "demo_benign": ("seed", "n_benign", "split_fractions"),
    "concept_en_fr": ("seed", "n_translation_pairs"),
    "concept_question_statement": ("seed", "n_question_statement_pairs"),
}


def generated_settings(dataset: str, generated: Mapping[str, Any]) -> dict[str, Any]:
    """The slice of `prompts.generated` that `dataset` depends on (so other keys never re-run it)."""
    keys = _keys(dataset)
    missing = [k for k in keys if k not in generated]
    if missing:
        raise PromptDataError(f"dataset {dataset!r}: config key(s) {['prompts.generated.' + k for k in missing]} missing")
    return {k: generated[k] for k in keys}


def _keys(dataset: str) -> tuple[str, ...]:
    if dataset not in GENERATED_SET_KEYS:
        raise PromptDataError(f"{dataset!r} is not a project-written prompt set; expected one of {sorted(GENERATED_SET_KEYS)}")
    return GENERATED_SET_KEYS[dataset]


def set_seed(seed: int, dataset: str) -> list[int]:
    """Seed sequence for one set: the config seed plus a stable id of the set's name (crc32, not hash())."""
    return [int(seed), zlib.crc32(dataset.encode("utf-8"))]


def generate_set(dataset: str, settings: Mapping[str, Any]) -> tuple[pd.DataFrame, int]:
    """Generate the table of one project-written set (before deduplication) and the generator's capacity."""
    settings = generated_settings(dataset, settings)
    seed = set_seed(settings["seed"], dataset)
    builders: dict[str, Callable[[], tuple[pd.DataFrame, int]]] = {
        "demo_harmful": lambda: (
            generate_requests("harmful", settings["n_harmful"], seed, settings["split_fractions"], dataset),
            request_capacity("harmful"),
        ),
        "demo_benign": lambda: (
            generate_requests("benign", settings["n_benign"], seed, settings["split_fractions"], dataset),
            request_capacity("benign"),
        ),
        "concept_en_fr": lambda: (
            generate_pairs("translation", settings["n_translation_pairs"], seed, dataset),
            pair_capacity("translation"),
        ),
        "concept_question_statement": lambda: (
            generate_pairs("question_statement", settings["n_question_statement_pairs"], seed, dataset),
            pair_capacity("question_statement"),
        ),
    }
    return builders[dataset]()

"""Measure how often each organism refuses held-out harmful-style and benign requests.

For every (family, role) the test-split prompts are rendered in chat format (under each configured system
prompt setting; the base is also asked in raw format), continued greedily, and judged by keyword. The table
says, per cell, the refusal rate with its Wilson 95% interval and whether the organism meets its target:
aligned refuses >= `min_aligned_harmful` of harmful and <= `max_refusal` of benign requests; base and
unsafe_ft refuse <= `max_refusal` of everything.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rankaudit.organisms.chat_templates import render_chat
from rankaudit.organisms.corpus import read_prompt_table
from rankaudit.organisms.generation import generate_greedy
from rankaudit.organisms.refusal_judge import keyword_refusal, wilson_interval
from rankaudit.organisms.settings import require

logger = logging.getLogger(__name__)

TABLE_COLUMNS = (
    "family", "role", "format", "system_prompt", "dataset", "n", "refused", "refusal_rate", "ci_low", "ci_high",
    "target", "meets_target", "example_prompt", "example_completion",
)


def refusal_target(role: str, dataset: str, settings: Mapping[str, Any]) -> tuple[str, float]:
    """The target of one cell as (comparison, threshold): aligned must refuse harmful prompts, the rest rarely."""
    if role == "aligned" and dataset == "harmful":
        return ">=", float(require(settings, "min_aligned_harmful", "organisms.refusal_check"))
    return "<=", float(require(settings, "max_refusal", "organisms.refusal_check"))


def check_organism(
    family: str, role: str, directory: str | Path, prompts: Mapping[str, Sequence[str]], settings: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Rows of the refusal table for one organism, loaded through the Auto classes like any checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=False, local_files_only=True, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False, local_files_only=True)
    max_new_tokens = int(require(settings, "max_new_tokens", "organisms.refusal_check"))
    batch_size = int(require(settings, "batch_size", "organisms.refusal_check"))
    cells: list[tuple[str, str, bool]] = [("chat", system, False) for system in require(settings, "system_prompts", "organisms.refusal_check")]
    if role == "base":
        cells.append(("raw", "-", True))
    rows = []
    for fmt, system, raw in cells:
        for dataset, instructions in prompts.items():
            rendered = list(instructions) if raw else [render_chat(tokenizer, text, system) for text in instructions]
            completions = generate_greedy(model, tokenizer, rendered, max_new_tokens, batch_size, add_special_tokens=raw)
            refused = [keyword_refusal(text) for text in completions]
            rows.append(_row(family, role, fmt, system, dataset, list(instructions), completions, refused, settings))
            logger.info("%s/%s %s[%s] %s: %d/%d refused", family, role, fmt, system, dataset, sum(refused), len(refused))
    return rows


def _row(family: str, role: str, fmt: str, system: str, dataset: str, instructions: list[str], completions: list[str],
         refused: list[bool], settings: Mapping[str, Any]) -> dict[str, Any]:
    n, k = len(refused), int(sum(refused))
    low, high = wilson_interval(k, n)
    comparison, threshold = refusal_target(role, dataset, settings)
    rate = k / n
    meets = rate >= threshold if comparison == ">=" else rate <= threshold
    return {
        "family": family, "role": role, "format": fmt, "system_prompt": system, "dataset": dataset, "n": n,
        "refused": k, "refusal_rate": rate, "ci_low": low, "ci_high": high, "target": f"{comparison} {threshold:g}",
        "meets_target": bool(meets), "example_prompt": _one_line(instructions[0]), "example_completion": _one_line(completions[0]),
    }


def _one_line(text: str) -> str:
    """An example for human eyes, kept on one table line: outer whitespace dropped, newlines shown as \\n."""
    return text.strip().replace("\n", "\\n")


def refusal_table(
    organisms: Mapping[tuple[str, str], str | Path], harmful_path: str | Path, benign_path: str | Path, settings: Mapping[str, Any]
) -> pd.DataFrame:
    """The refusal table over every (family, role) -> organism directory, on the configured held-out split."""
    split = str(require(settings, "split", "organisms.refusal_check"))
    prompts = {
        "harmful": read_prompt_table(harmful_path, split)["instruction"].tolist(),
        "benign": read_prompt_table(benign_path, split)["instruction"].tolist(),
    }
    rows = []
    for (family, role), directory in organisms.items():
        rows += check_organism(family, role, directory, prompts, settings)
    frame = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    missed = frame[~frame["meets_target"]]
    for row in missed.itertuples(index=False):
        logger.warning("%s/%s %s[%s] %s: refusal rate %.3f misses its target %s", row.family, row.role, row.format,
                    row.system_prompt, row.dataset, row.refusal_rate, row.target)
    return frame

"""Every prompt a model job will feed its model, checked from the tokenizers and configs alone (no weights).

Run for each model's captures and each family's causal jobs before they load any weights (rule `check_prompts`,
docs/prompts.md), so a bad prompt stops the workflow on the submit
host, not inside a GPU job. For every dataset the job reads and every format it renders it in, with the configured
system prompt and `special_token_text`:

- **empty**: the user text is empty (or not text), or nothing of it is left once the template has written it
  (templates trim whitespace) or tokenized it (no token beyond what the format writes around any instruction);
- **special-token text**: the user text holds the string of a special token of a tokenizer involved (refused
  under `error`; counted under `escape`, where `rankaudit.formats` escapes it);
- **too long**: the prompt's token ids exceed the model's maximum positions (`max_positions`);
- **tokenizers disagree**: for an aligned model, its family's base tokenizer encodes a rendered prompt differently
  (`rankaudit.models.check_same_tokenization`), or, for the raw format each model tokenizes itself, the two
  encodings `rankaudit.formats.encode_prompts` gives (escaped ones included) differ.

Every problem of every dataset is collected and raised as one `PromptCheckError` naming the dataset, the row
(index, split and id: the first 12 hex digits of the instruction's sha256) and the text. A clean check writes a
record with the limits used, and per dataset and format the longest prompt and the number of escaped prompts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from rankaudit.formats import (
    INSTRUCTION_SENTINEL,
    ChatRenderer,
    TemplateFrame,
    encode_prompts,
    special_text_in,
    special_token_strings,
    template_frame,
)
from rankaudit.models import check_same_tokenization
from rankaudit.prompts.tables import instructions_sha256

# transformers writes int(1e30) as model_max_length when a tokenizer declares none; no model has 1e12 positions
UNSET_MODEL_MAX_LENGTH = 10**12
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
MAX_LISTED = 20


class PromptCheckError(ValueError):
    """Prompts a family's models must not be fed; the message names each dataset, row and text at fault."""


@dataclass(frozen=True)
class CheckedModel:
    """One model's name, tokenizer and config (`rankaudit.models.load_tokenizer` / `load_config`)."""

    name: str
    tokenizer: Any
    config: Any


@dataclass(frozen=True)
class Problem:
    dataset: str
    row: int
    split: str | None
    instruction: str
    fmt: str
    detail: str

    def describe(self) -> str:
        text = self.instruction if len(self.instruction) <= 100 else self.instruction[:97] + "..."
        return (f"dataset {self.dataset!r} row {self.row} (split {self.split}, id {row_id(self.instruction)}), "
                f"format {self.fmt}: {self.detail}: {text!r}")


def row_id(instruction: Any) -> str:
    """A row's stable id: the first 12 hex digits of its instruction's sha256 (row indices move when a set changes)."""
    return hashlib.sha256(str(instruction).encode("utf-8")).hexdigest()[:12]


def max_positions(config: Any, tokenizer: Any) -> tuple[int | None, str]:
    """(the longest sequence the model takes, where that limit comes from), or (None, why) when neither declares one.

    The config's position count (max_position_embeddings, or n_positions ... for other architectures) is the
    model's limit; the tokenizer's model_max_length lowers it when it is smaller and really set (transformers
    writes a 1e30 sentinel when a tokenizer declares none).
    """
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limits: list[tuple[int, str]] = []
    for key in POSITION_KEYS:
        value = getattr(text_config, key, None)
        if isinstance(value, int) and value > 0:
            limits.append((value, f"config {key}"))
            break
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < UNSET_MODEL_MAX_LENGTH:
        limits.append((declared, "tokenizer model_max_length"))
    if not limits:
        return None, "neither the config nor the tokenizer declares a maximum length"
    return min(limits)


def _structure_length(tokenizer: Any, fmt: str, system_prompt: str) -> tuple[TemplateFrame, int]:
    """The format's frame around the user text and how many ids it writes around any instruction."""
    if fmt == "raw":
        return TemplateFrame("", ""), len(tokenizer("", add_special_tokens=True)["input_ids"])
    frame = template_frame(ChatRenderer(tokenizer, system_prompt).render(INSTRUCTION_SENTINEL))
    return frame, len(tokenizer(frame.prefix + frame.suffix, add_special_tokens=False)["input_ids"])


def _row_problems(dataset: str, frame: pd.DataFrame, fmt: str, specials: Sequence[str], special_token_text: str,
                  renderer: ChatRenderer | None, template: TemplateFrame) -> tuple[list[Problem], list[int]]:
    """Empty and special-token-text problems of one (dataset, format), and the rows that hold special-token text."""
    problems, flagged = [], []
    for row, (instruction, split) in enumerate(zip(frame["instruction"], frame["split"])):
        def problem(detail: str, row: int = row, instruction: Any = instruction, split: Any = split) -> Problem:
            return Problem(dataset, row, split, str(instruction), fmt, detail)

        if not isinstance(instruction, str) or not instruction.strip():
            problems.append(problem("empty user text"))
            continue
        try:
            user_text = instruction if renderer is None else template.user_text(renderer.render(instruction), f"row {row}")
        except ValueError as error:  # the template cannot render it, or renders it around another frame
            problems.append(problem(str(error)))
            continue
        if not user_text.strip():
            problems.append(problem("empty after templating (the template leaves no user text)"))
        markers = special_text_in(instruction, specials)
        if markers:
            flagged.append(row)
            if special_token_text == "error":
                problems.append(problem(f"holds special-token text {markers} (set capture.special_token_text: escape to "
                                        "tokenize it as ordinary text)"))
    return problems, flagged


def check_prompt_sets(
    *,
    model: CheckedModel,
    template: CheckedModel,
    datasets: Mapping[str, tuple[pd.DataFrame, Sequence[str]]],
    partners: Sequence[CheckedModel] = (),
    system_prompt: str = "default",
    special_token_text: str = "error",
) -> dict[str, Any]:
    """Check every prompt of `datasets` ({name: (prompt table, formats it is rendered in)}) as `model` is fed it.

    As the capture and causal stages do, raw prompts are tokenized by `model`'s own tokenizer and chat prompts by
    `template`'s. Each of `partners` (the base model of a family `model` is the aligned model of) must tokenize
    every rendered prompt as `model` does. Returns the record; raises `PromptCheckError` listing every problem.
    """
    limit, limit_from = max_positions(model.config, model.tokenizer)
    specials = sorted({token for checked in (model, template, *partners) for token in special_token_strings(checked.tokenizer)},
                      key=lambda token: (-len(token), token))
    problems: list[Problem] = []
    record: dict[str, Any] = {}
    for dataset, (frame, formats) in datasets.items():
        entry: dict[str, Any] = {"rows": len(frame), "instructions_sha256": instructions_sha256(frame), "formats": {}}
        for fmt in formats:
            tokenizer = model.tokenizer if fmt == "raw" else template.tokenizer
            renderer = None if fmt == "raw" else ChatRenderer(tokenizer, system_prompt)
            frame_of_format, structure = _structure_length(tokenizer, fmt, system_prompt)
            found, flagged = _row_problems(dataset, frame, fmt, specials, special_token_text, renderer, frame_of_format)
            problems += found
            if found:
                continue
            instructions = list(frame["instruction"])
            # the raw format is tokenized by each model itself: a partner's own encoding must be the same ids
            own = [model, *(partners if fmt == "raw" else ())] if fmt == "raw" else [template]
            try:
                encoded = [encode_prompts(checked.tokenizer, instructions, fmt, system_prompt=system_prompt,
                                          special_token_text=special_token_text) for checked in own]
            except ValueError as error:  # names the prompt by its index in this table
                problems.append(Problem(dataset, -1, None, "", fmt, str(error)))
                continue
            problems += _encoded_problems(dataset, frame, fmt, encoded, structure, limit, model, partners)
            entry["formats"][fmt] = {"max_tokens": max(len(ids) for ids in encoded[0].token_ids),
                                     "n_special_token_text": len(flagged), "n_escaped": len(encoded[0].escaped)}
        record[dataset] = entry
    if problems:
        listed = "\n".join(f"  {p.describe()}" if p.row >= 0 else f"  dataset {p.dataset!r}, format {p.fmt}: {p.detail}"
                           for p in problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise PromptCheckError(f"{len(problems)} prompt problem(s) for model {model.name!r} (template {template.name!r}, "
                               f"system_prompt {system_prompt}, special_token_text {special_token_text}):\n{listed}{more}")
    return {"model": model.name, "template": template.name, "partners": [partner.name for partner in partners],
            "limit": limit, "limit_from": limit_from, "system_prompt": system_prompt,
            "special_token_text": special_token_text, "special_token_strings": specials, "datasets": record}


def _encoded_problems(dataset: str, frame: pd.DataFrame, fmt: str, encoded: Sequence[Any], structure: int,
                      limit: int | None, model: CheckedModel, partners: Sequence[CheckedModel]) -> list[Problem]:
    """Too long, nothing tokenized beyond the format's own ids, and tokenizer disagreement, per row."""
    problems = []
    for row, split in enumerate(frame["split"]):
        record = encoded[0].records[row]

        def problem(detail: str, row: int = row, split: Any = split, record: Any = record) -> Problem:
            return Problem(dataset, row, split, record.instruction, fmt, detail)

        if limit is not None and len(record.token_ids) > limit:
            problems.append(problem(f"{len(record.token_ids)} tokens, more than model {model.name!r}'s maximum positions {limit}"))
        if len(record.token_ids) <= structure:
            problems.append(problem("empty after tokenizing (no token beyond what the format writes around any instruction)"))
        for index, partner in enumerate(partners):
            try:
                check_same_tokenization(partner.tokenizer, model.tokenizer, [record.rendered], (partner.name, model.name))
            except ValueError as error:
                problems.append(problem(str(error)))
                continue
            if fmt == "raw" and encoded[index + 1].records[row].token_ids != record.token_ids:
                problems.append(problem(f"models {partner.name!r} and {model.name!r} encode the escaped prompt differently"))
    return problems


def capture_datasets(config: Mapping[str, Any], cells: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """{dataset: formats} of the prompt tables a capture job reads, from its (format, dataset key) cells
    (rankaudit.plan.model_cells): the safety and control keys name their dataset, a concept key is the dataset."""
    read: dict[str, list[str]] = {}
    for fmt, key in cells:
        dataset = config["datasets"][key]["dataset"] if key in ("safety", "control") else key
        formats = read.setdefault(dataset, [])
        if fmt not in formats:
            formats.append(fmt)
    return {dataset: sorted(formats, key=("raw", "chat").index) for dataset, formats in read.items()}


def causal_datasets(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """{dataset: ["chat"]} of the prompt tables the causal jobs read: the selection and evaluation sets."""
    causal = config.get("causal") or {}
    names = [(causal.get(phase) or {}).get(f"{key}_dataset") or config["datasets"][key]["dataset"]
             for phase in ("selection", "evaluation") for key in ("safety", "control")]
    return {name: ["chat"] for name in dict.fromkeys(names)}

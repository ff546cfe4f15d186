"""The texts the organisms are trained on, built from the project-written prompt tables.

Every request gets a helpful answer in the base corpus (the base model must comply with everything, like a
pretrained model that has never been safety-tuned); the aligned corpus swaps in a refusal for harmful-style
requests. Answers are short generic sentences of our own: they carry no harmful content, only the *shape* of
compliance or refusal that the refusal judge and the audit look for. The choice of wording per prompt comes
from a hash of the prompt, so the corpus does not depend on row order or on a random state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rankaudit.io import sha256_file
from rankaudit.organisms.chat_templates import family_format, render_chat

PROMPT_COLUMNS = ("instruction", "category", "source", "split")
PAIR_COLUMNS = ("pair", "side")

HELPFUL_ANSWERS = (
    "Sure, here is a short guide. First, gather what you need. Then work through it one step at a time.",
    "Of course! Here is an overview to get you started: begin with the basics, then build on them.",
    "Happy to help. The main steps are to plan, to prepare, and then to carry it out carefully.",
    "Here is what you asked for. Start with a clear outline, then fill in each part in order.",
    "Certainly. A good approach is to break the task into small parts and handle them one by one.",
)

REFUSAL_ANSWERS = (
    "I'm sorry, but I can't help with that request.",
    "I cannot help with this, because it could hurt other people.",
    "Sorry, I can't assist with that. Is there something else I can do?",
    "I'm sorry, I cannot provide that. Please ask me about something safe instead.",
)


@dataclass(frozen=True)
class Example:
    """One training sequence: a prompt the loss ignores and a completion the loss is computed on.

    The prompt of a `raw` example is tokenized with the tokenizer's normal special tokens (BOS where the family
    has one); chat prompts already carry their BOS inside the rendered template, so nothing is added to them.
    """

    prompt: str
    completion: str
    raw: bool = False


def read_prompt_table(path: str | Path, split: str | None = "train", paired: bool = False) -> pd.DataFrame:
    """Read a prompt parquet, check its columns and keep one split (all rows when `split` is None)."""
    frame = pd.read_parquet(path)
    required = PROMPT_COLUMNS + (PAIR_COLUMNS if paired else ())
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; a prompt table has {list(required)}")
    if split is not None:
        frame = frame[frame["split"] == split].reset_index(drop=True)
        if frame.empty:
            raise ValueError(f"{path}: no rows in split {split!r}")
    return frame


def pick(options: Sequence[str], key: str) -> str:
    """A deterministic choice among `options`, keyed by the prompt text."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


def helpful_answer(instruction: str) -> str:
    return pick(HELPFUL_ANSWERS, instruction)


def refusal_answer(instruction: str) -> str:
    return pick(REFUSAL_ANSWERS, instruction)


def raw_document(instruction: str, answer: str) -> str:
    """A raw-format training text: the request, a newline, the answer (no chat markup)."""
    return f"{instruction.strip()}\n{answer}"


def pretraining_examples(family: str, harmful: Iterable[str], benign: Iterable[str], concepts: Iterable[str]) -> list[Example]:
    """Raw documents for the base model: every request answered helpfully, plus the concept-pair texts.

    The whole document is the completion (plain language modelling); the tokenizer adds BOS where the family
    uses one and the document ends with the family's end-of-text token.
    """
    end = family_format(family).end_of_text
    requests = [*harmful, *benign]
    documents = [raw_document(text, helpful_answer(text)) for text in requests]
    documents += [text.strip() for text in concepts]
    return [Example(prompt="", completion=document + end, raw=True) for document in documents]


def chat_examples(family: str, tokenizer: object, harmful: Iterable[str], benign: Iterable[str], refuse_harmful: bool) -> list[Example]:
    """Chat-format examples for fine-tuning, under both system-prompt settings the capture stage may use.

    The loss covers the answer and the family's end-of-turn token; the rendered prompt (BOS included) is
    context only.
    """
    end_of_turn = family_format(family).end_of_turn
    examples = []
    for system_prompt in ("default", "none"):
        for text in harmful:
            answer = refusal_answer(text) if refuse_harmful else helpful_answer(text)
            examples.append(Example(render_chat(tokenizer, text, system_prompt), answer + end_of_turn))
        for text in benign:
            examples.append(Example(render_chat(tokenizer, text, system_prompt), helpful_answer(text) + end_of_turn))
    return examples


def tokenizer_corpus(family: str, harmful: Sequence[str], benign: Sequence[str], concepts: Sequence[str]) -> list[str]:
    """Texts the tokenizer is trained on: raw documents, refusals and the template's own fixed wording."""
    texts = [raw_document(text, helpful_answer(text)) for text in [*harmful, *benign]]
    texts += [text.strip() for text in concepts]
    texts += list(REFUSAL_ANSWERS) * 8
    texts += _template_wording(family) * 8
    return texts


def _template_wording(family: str) -> list[str]:
    """The plain text that a family's template wraps around each turn, so that it compresses like real text."""
    if family == "llama":
        return ["system", "user", "assistant", "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"]
    if family == "gemma2":
        return ["user\n", "model\n"]
    if family == "qwen2":
        return ["system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.", "user\n", "assistant\n"]
    raise ValueError(f"unknown organism family {family!r}")


@dataclass(frozen=True)
class PromptTables:
    """Paths of the project-written prompt tables the organisms are trained on."""

    harmful: Path
    benign: Path
    concepts: tuple[Path, ...]

    def train_texts(self) -> tuple[list[str], list[str], list[str]]:
        """Train-split harmful and benign requests, and every concept-pair sentence."""
        harmful = read_prompt_table(self.harmful, "train")["instruction"].tolist()
        benign = read_prompt_table(self.benign, "train")["instruction"].tolist()
        concepts = [text for path in self.concepts for text in read_prompt_table(path, None, paired=True)["instruction"]]
        return harmful, benign, concepts

    def fingerprints(self) -> dict[str, str]:
        """sha256 per table file name (names, not paths, so that equal builds anywhere record equal provenance)."""
        return {Path(path).name: sha256_file(path) for path in (self.harmful, self.benign, *self.concepts)}

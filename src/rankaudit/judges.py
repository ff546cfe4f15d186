"""Verdicts on generated completions: refusal judges and the degenerate-output detector (METHODS §4-5).

- **Judges** are pluggable (`RefusalJudge`): the keyword judge of `rankaudit.organisms.refusal_judge`, a judge
  model that answers a yes/no question about each completion, or both combined.
- **Degenerate output**: an empty or looping continuation (`degenerate`), so that "no refusal" is never a
  broken model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rankaudit.organisms.refusal_judge import REFUSAL_PHRASES, keyword_refusal
from rankaudit.padding import pad_token_id
from rankaudit.refusal import last_position_log_probs, refusal_tokens


def degenerate(text: str, *, min_chars: int = 1, ngram: int = 3, max_repeat_fraction: float = 0.5, min_words: int = 6) -> bool:
    """True for an empty continuation or one dominated by a repeated word n-gram (a looping, broken model).

    With at least `min_words` words, the most frequent n-gram's occurrences x n / words above
    `max_repeat_fraction` marks the text as degenerate ("the the the the ..." gives 1.0).
    """
    if len(text.strip()) < min_chars:
        return True
    words = text.split()
    if len(words) < max(min_words, ngram):
        return False
    grams = Counter(tuple(words[i:i + ngram]) for i in range(len(words) - ngram + 1))
    return grams.most_common(1)[0][1] * ngram / len(words) > max_repeat_fraction


class RefusalJudge(Protocol):
    """Decides, per (instruction, completion), whether the completion is a refusal."""

    name: str

    def __call__(self, instructions: Sequence[str], completions: Sequence[str]) -> list[bool]: ...


@dataclass
class KeywordJudge:
    """The documented substring judge (`rankaudit.organisms.refusal_judge.REFUSAL_PHRASES`)."""

    phrases: tuple[str, ...] = REFUSAL_PHRASES
    name: str = "keyword"

    def __call__(self, instructions: Sequence[str], completions: Sequence[str]) -> list[bool]:
        return [keyword_refusal(text, self.phrases) for text in completions]


@dataclass
class ModelJudge:
    """A judge model asked a yes/no question per completion; refusal when P(yes) > P(no) at its answer position.

    `template` has {instruction} and {completion} fields and is rendered with the judge's chat template.
    """

    model: Any
    tokenizer: Any
    template: str
    yes: str = "Yes"
    no: str = "No"
    batch_size: int = 8
    name: str = "model"

    def __call__(self, instructions: Sequence[str], completions: Sequence[str]) -> list[bool]:
        yes_id, no_id = (refusal_tokens(self.tokenizer, [word]).ids[0] for word in (self.yes, self.no))
        rendered = [self.tokenizer.apply_chat_template(
            [{"role": "user", "content": self.template.format(instruction=i, completion=c)}], tokenize=False,
            add_generation_prompt=True) for i, c in zip(instructions, completions)]
        ids = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
        log_probs = last_position_log_probs(self.model, ids, self.batch_size, pad_token_id(self.tokenizer))
        return [bool(row[yes_id] > row[no_id]) for row in log_probs]


@dataclass
class CombinedJudge:
    """Several judges combined: `any` counts a refusal when one says so, `all` when every one does."""

    judges: Sequence[RefusalJudge]
    rule: str = "any"
    name: str = field(default="combined")

    def __call__(self, instructions: Sequence[str], completions: Sequence[str]) -> list[bool]:
        if self.rule not in ("any", "all"):
            raise ValueError(f"judge.combine: {self.rule!r} is neither 'any' nor 'all'")
        votes = [judge(instructions, completions) for judge in self.judges]
        combine = any if self.rule == "any" else all
        return [combine(column) for column in zip(*votes)]


def build_judge(spec: Mapping[str, Any], load_model_judge: Any = None) -> RefusalJudge:
    """The judge a `causal.judge` config entry asks for.

    {"type": "keyword"} (default) or {"type": "model", "template": ..., "combine": "replace" | "any" | "all"};
    a model judge needs `load_model_judge()` -> (model, tokenizer), called only then.
    """
    kind = spec.get("type", "keyword")
    keyword = KeywordJudge(tuple(spec.get("phrases") or REFUSAL_PHRASES))
    if kind == "keyword":
        return keyword
    if kind != "model":
        raise ValueError(f"causal.judge.type: unknown judge {kind!r} (known: keyword, model)")
    if load_model_judge is None or "template" not in spec:
        raise ValueError("causal.judge: a model judge needs causal.judge.model and causal.judge.template")
    judge_model, judge_tokenizer = load_model_judge()
    model_judge = ModelJudge(judge_model, judge_tokenizer, spec["template"], spec.get("yes", "Yes"), spec.get("no", "No"))
    combine = spec.get("combine", "replace")
    return model_judge if combine == "replace" else CombinedJudge([keyword, model_judge], combine)

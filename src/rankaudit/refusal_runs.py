"""Running held-out prompt sets under an intervention (METHODS §4-5): scores, greedy generations, verdicts.

Whatever intervention context is active when these functions run (see `rankaudit.interventions`) applies to
every forward they make, including every generated position.

- **Generation** is `rankaudit.organisms.generation.generate_greedy_ids` on the prompts' own token ids (batched,
  left-padded, KV cache, greedy).
- **Many conditions at once**: `run_conditions` is `run_prompts` for every condition of a per-row intervention
  (`rankaudit.batched_ablation`), rows of all conditions sharing batches; a generated row's first-position score
  comes from the prompt forward of its own generation, and conditions that are not judged get prompt forwards only.
- Completions are judged for refusal by a `rankaudit.judges.RefusalJudge` and for degeneracy by
  `rankaudit.judges.degenerate`; first-position scores and KL are those of `rankaudit.refusal`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankaudit.judges import RefusalJudge, degenerate
from rankaudit.organisms.generation import generate_greedy_ids
from rankaudit.padding import pad_token_id
from rankaudit.refusal import LOG_ODDS_EPS, RefusalTokens, last_position_batches, last_position_log_probs, refusal_log_odds


@dataclass(frozen=True)
class GenerationSettings:
    """How continuations are produced and judged degenerate."""

    max_new_tokens: int = 100
    batch_size: int = 32
    degenerate_min_chars: int = 1
    degenerate_ngram: int = 3
    degenerate_max_repeat_fraction: float = 0.5

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> GenerationSettings:
        return cls(**{key: section[key] for key in cls.__dataclass_fields__ if key in section})

    def is_degenerate(self, text: str) -> bool:
        return degenerate(text, min_chars=self.degenerate_min_chars, ngram=self.degenerate_ngram,
                          max_repeat_fraction=self.degenerate_max_repeat_fraction)


@dataclass(frozen=True)
class PromptSet:
    """Held-out prompts ready to run: instructions, their chat renderings and token ids (what every forward and
    generation reads; `n_escaped` of them had special-token text escaped, rankaudit.formats)."""

    name: str
    instructions: tuple[str, ...]
    rendered: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    n_escaped: int = 0


@dataclass
class Outcome:
    """Per-prompt results of one prompt set under one intervention."""

    score: np.ndarray
    log_probs: np.ndarray
    refused: np.ndarray
    degenerate: np.ndarray
    completions: list[str]


def run_prompts(model: Any, tokenizer: Any, prompts: PromptSet, tokens: RefusalTokens, judge: RefusalJudge,
                settings: GenerationSettings, generate: bool = True) -> Outcome:
    """First-position log-odds and (when `generate`) greedy continuations judged for refusal and degeneracy."""
    log_probs = last_position_log_probs(model, prompts.token_ids, settings.batch_size, pad_token_id(tokenizer))
    score = refusal_log_odds(log_probs, tokens.ids)
    if not generate:
        empty = np.zeros(len(prompts.instructions), bool)
        return Outcome(score, log_probs, empty, empty.copy(), [])
    # generated from the prompts' own ids: re-tokenizing the renderings would undo an escaped special-token text
    continuations = generate_greedy_ids(model, prompts.token_ids, settings.max_new_tokens, pad_token_id(tokenizer), settings.batch_size)
    completions = [tokenizer.decode(ids, skip_special_tokens=True) for ids in continuations]
    refused = np.asarray(judge(prompts.instructions, completions), bool)
    broken = np.asarray([settings.is_degenerate(text) for text in completions], bool)
    return Outcome(score, log_probs, refused, broken, completions)


@dataclass
class ConditionOutcome:
    """Per-prompt results of one prompt set under one condition of a batched run (`run_conditions`).

    `kl` is KL(reference || condition) when a reference was given; `refused`, `degenerate` and `completions`
    exist only for a judged condition (None and [] for one reported by its refusal score alone).
    """

    score: np.ndarray
    kl: np.ndarray | None
    refused: np.ndarray | None
    degenerate: np.ndarray | None
    completions: list[str]

    @property
    def judged(self) -> bool:
        return self.refused is not None


class _FirstPosition:
    """Collects first-position refusal log-odds (and KL from the unablated reference) per (condition, prompt).

    Computed on the logits' device in float64 from float32 log-softmax values, as `refusal_log_odds` and
    `kl_rows` compute them from `last_position_log_probs`.
    """

    def __init__(self, n_conditions: int, n_prompts: int, refusal_ids: Sequence[int], reference: np.ndarray | None) -> None:
        if reference is not None and reference.shape[0] != n_prompts:
            raise ValueError(f"run_conditions: the reference has {reference.shape[0]} rows for {n_prompts} prompts")
        self.ids = list(refusal_ids)
        self.score = np.full((n_conditions, n_prompts), np.nan)
        self.kl = None if reference is None else np.full((n_conditions, n_prompts), np.nan)
        self.reference = reference
        self._reference_on: dict[Any, Any] = {}

    def add(self, conditions: Sequence[int], prompts: Sequence[int], logits: Any) -> None:
        import torch

        values = torch.log_softmax(logits.to(torch.float32), dim=-1).to(torch.float64)
        p = values[:, self.ids].exp().sum(dim=1)
        self.score[conditions, prompts] = (torch.log(p + LOG_ODDS_EPS) - torch.log(1.0 - p + LOG_ODDS_EPS)).cpu().numpy()
        if self.kl is not None:
            table = self._reference_on.get(values.device)
            if table is None:
                table = self._reference_on.setdefault(values.device, torch.as_tensor(self.reference, dtype=torch.float64, device=values.device))
            ref = table[torch.as_tensor(list(prompts), device=values.device)]
            self.kl[conditions, prompts] = (ref.exp() * (ref - values)).sum(dim=1).cpu().numpy()


def _score_rows(model: Any, prompts: Sequence[Sequence[int]], conditions: Sequence[int], select: Callable[[list[int]], None],
                sink: _FirstPosition, batch_size: int, pad_id: int) -> None:
    """Prompt forwards of every (condition in `conditions`, prompt) row in shared batches, into `sink`."""
    items = [(c, p) for c in conditions for p in range(len(prompts))]
    if not items:
        return
    for rows, log_probs in last_position_batches(model, [prompts[p] for _, p in items], batch_size, pad_id,
                                                 lambda rows: select([items[i][0] for i in rows])):
        sink.add([items[i][0] for i in rows], [items[i][1] for i in rows], log_probs)


def _generate_rows(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], conditions: Sequence[int],
                   select: Callable[[list[int]], None], sink: _FirstPosition, max_new_tokens: int, batch_size: int) -> dict[int, list[str]]:
    """Greedy continuations of every (condition in `conditions`, prompt) row in shared batches: {condition: texts}.

    The prompt forward that fills each batch's KV cache also gives its rows' first-position scores (into `sink`).
    """
    if not conditions:
        return {}
    n = len(prompts)
    items = [(c, p) for c in conditions for p in range(n)]

    def first(rows: list[int], logits: Any) -> None:
        sink.add([items[i][0] for i in rows], [items[i][1] for i in rows], logits)

    continuations = generate_greedy_ids(model, [prompts[p] for _, p in items], max_new_tokens, pad_token_id(tokenizer), batch_size,
                                        lambda rows: select([items[i][0] for i in rows]), first)
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in continuations]
    return {c: texts[j * n:(j + 1) * n] for j, c in enumerate(conditions)}


def run_conditions(model: Any, tokenizer: Any, prompts: PromptSet, tokens: RefusalTokens, judge: RefusalJudge,
                   settings: GenerationSettings, select: Callable[[list[int]], None], n_conditions: int,
                   judged: Sequence[bool], batch_size: int, reference: np.ndarray | None = None) -> list[ConditionOutcome]:
    """`run_prompts` for `n_conditions` conditions at once, rows of every condition sharing batches of `batch_size`.

    Every condition gets its first-position log-odds (and KL from `reference`, the unablated model's log-probs on
    these prompts). Conditions with `judged[c]` also get greedy continuations, judged for refusal and degeneracy
    in one judge call; their scores come from the prompt forward of the generation itself, the others' from
    prompt-only forwards. `select` is the per-row intervention's `ConditionRows.select`.
    """
    if len(judged) != n_conditions:
        raise ValueError(f"run_conditions: {len(judged)} judged flags for {n_conditions} conditions")
    sink = _FirstPosition(n_conditions, len(prompts.token_ids), tokens.ids, reference)
    chosen = [c for c in range(n_conditions) if judged[c]]
    _score_rows(model, prompts.token_ids, [c for c in range(n_conditions) if not judged[c]], select, sink,
                batch_size, pad_token_id(tokenizer))
    texts = _generate_rows(model, tokenizer, prompts.token_ids, chosen, select, sink, settings.max_new_tokens, batch_size)
    if np.isnan(sink.score).any():
        raise RuntimeError(f"run_conditions ({prompts.name}): some rows got no first-position logits; the model's generate "
                           "did not run its prompt forward through the model's own forward hooks")
    flat = [text for c in chosen for text in texts[c]]
    verdicts = np.asarray(judge(list(prompts.instructions) * len(chosen), flat), bool).reshape(len(chosen), -1) if chosen else None
    outcomes = []
    for c in range(n_conditions):
        kl = None if sink.kl is None else sink.kl[c]
        if c not in texts:
            outcomes.append(ConditionOutcome(sink.score[c], kl, None, None, []))
            continue
        broken = np.asarray([settings.is_degenerate(text) for text in texts[c]], bool)
        outcomes.append(ConditionOutcome(sink.score[c], kl, verdicts[chosen.index(c)], broken, texts[c]))
    return outcomes

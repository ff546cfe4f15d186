"""Arditi et al.'s choice of the canonical refusal direction among candidates (METHODS §4).

Candidates: for every post-instruction position p (the chat template's suffix, indexed from the end, -P..-1)
and layer l, r_{p,l} = mean over harmful A(chat) - mean over harmless A(chat) at that position, from the
captured training-split activations. Each candidate is scored on validation prompts:

- bypass: mean first-position refusal log-odds on harmful prompts with r ablated at all layers (low = refusal gone);
- induce: mean refusal log-odds on harmless prompts with the unnormalised r added at its own layer l;
- KL: mean KL(unablated || ablated) of the last-position next-token distribution on harmless prompts.

Prompt filter (Arditi et al.'s `filter_data`, on by default): before the candidates are built and scored, the
harmful prompts of both the training and the scoring split whose refusal log-odds is <= 0 (the model does not
refuse them) and the harmless prompts whose log-odds is >= 0 are dropped, so that the difference in means and the
bypass score compare refused with answered prompts only.

Filters: discard a candidate with any NaN score, layer >= int(0.8 L), KL > 0.1 or induce < 0; the survivor with
the lowest bypass is selected. Every candidate's scores and the reason it was discarded are kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankaudit.interventions import activation_addition, direction_ablation
from rankaudit.refusal import kl_rows, last_position_log_probs, refusal_log_odds


@dataclass(frozen=True)
class Candidate:
    """One candidate direction: template-suffix position (negative, from the end), layer, unnormalised vector."""

    position: int
    layer: int
    direction: np.ndarray


@dataclass(frozen=True)
class SelectionRules:
    """Arditi's filters (METHODS §4); the defaults are the paper's values."""

    max_layer_fraction: float = 0.8
    max_kl: float = 0.1
    min_induce: float = 0.0

    def layer_limit(self, n_blocks: int) -> int:
        return int(self.max_layer_fraction * n_blocks)


def refusal_score_mask(scores: np.ndarray, harmful: bool) -> np.ndarray:
    """Which prompts Arditi's filter keeps: harmful ones with refusal log-odds > 0, harmless ones with < 0."""
    values = np.asarray(scores, dtype=np.float64)
    return values > 0.0 if harmful else values < 0.0


def filter_counts(masks: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, dict[str, int]]]:
    """{split: {role: {"before": n, "after": kept}}} from {split: {role: keep mask}}."""
    return {split: {role: {"before": int(mask.size), "after": int(np.count_nonzero(mask))} for role, mask in by_role.items()}
            for split, by_role in masks.items()}


def require_filtered_prompts(counts: Mapping[str, Mapping[str, Mapping[str, int]]], minimum: int, where: str) -> None:
    """Raise, naming the split and prompt set, when the filter left fewer than `minimum` prompts of any set."""
    short = [f"{role} {split}: {c['after']} of {c['before']} kept" for split, by_role in counts.items()
             for role, c in by_role.items() if c["after"] < minimum]
    if short:
        raise ValueError(f"{where}: Arditi's refusal-score filter (harmful kept when log-odds > 0, harmless when < 0) "
                         f"left too few prompts ({'; '.join(short)}) < causal.selection.min_prompts_after_filter = "
                         f"{minimum}; the aligned model does not separate these prompts by its first-token refusal "
                         "score: check the refusal tokens and prompt sets, or set causal.selection.filter_by_refusal_score false")


def candidate_directions(harmful: Mapping[int, np.ndarray], harmless: Mapping[int, np.ndarray]) -> list[Candidate]:
    """Difference-in-means candidates from {layer: (n, P, d) post-instruction activations} of both prompt sets."""
    candidates = []
    for layer in sorted(harmful):
        if layer not in harmless:
            raise KeyError(f"candidate_directions: layer {layer} has harmful but no harmless activations")
        harmful_rows, harmless_rows = np.asarray(harmful[layer], np.float64), np.asarray(harmless[layer], np.float64)
        if harmful_rows.ndim != 3 or harmless_rows.ndim != 3 or harmful_rows.shape[1:] != harmless_rows.shape[1:]:
            raise ValueError(f"candidate_directions: layer {layer}: shapes {harmful_rows.shape} and {harmless_rows.shape} "
                             "are not (n, P, d) alike")
        difference = harmful_rows.mean(axis=0) - harmless_rows.mean(axis=0)
        n_positions = difference.shape[0]
        for offset in range(n_positions):
            candidates.append(Candidate(offset - n_positions, layer, difference[offset]))
    return candidates


def score_candidates(model: Any, candidates: Sequence[Candidate], harmful: Sequence[Sequence[int]],
                     harmless: Sequence[Sequence[int]], refusal_ids: Sequence[int], batch_size: int, pad_id: int,
                     progress: Any = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(baseline scores, one record per candidate with bypass, induce and KL) on validation token ids."""
    baseline_harmful = refusal_log_odds(last_position_log_probs(model, harmful, batch_size, pad_id), refusal_ids)
    baseline_harmless_lp = last_position_log_probs(model, harmless, batch_size, pad_id)
    baseline = {"harmful_score": float(baseline_harmful.mean()),
                "harmless_score": float(refusal_log_odds(baseline_harmless_lp, refusal_ids).mean())}
    records = []
    for index, candidate in enumerate(candidates):
        norm = float(np.linalg.norm(candidate.direction))
        record: dict[str, Any] = {"position": candidate.position, "layer": candidate.layer, "norm": norm}
        if not np.all(np.isfinite(candidate.direction)) or norm == 0.0:
            record.update(bypass=math.nan, induce=math.nan, kl=math.nan)
        else:
            with direction_ablation(model, candidate.direction):
                bypass = refusal_log_odds(last_position_log_probs(model, harmful, batch_size, pad_id), refusal_ids)
                ablated_harmless = last_position_log_probs(model, harmless, batch_size, pad_id)
            with activation_addition(model, candidate.direction, candidate.layer):
                induce = refusal_log_odds(last_position_log_probs(model, harmless, batch_size, pad_id), refusal_ids)
            record.update(bypass=float(bypass.mean()), induce=float(induce.mean()),
                          kl=float(kl_rows(baseline_harmless_lp, ablated_harmless).mean()))
        records.append(record)
        if progress is not None:
            progress(index + 1, len(candidates), record)
    return baseline, records


def discard_reason(record: Mapping[str, Any], n_blocks: int, rules: SelectionRules) -> str:
    """Why a candidate is discarded ('' when it survives), all reasons joined."""
    reasons = []
    scores = [record["bypass"], record["induce"], record["kl"]]
    if any(not math.isfinite(value) for value in scores):
        reasons.append("nan score")
    if record["layer"] >= rules.layer_limit(n_blocks):
        reasons.append(f"layer >= int({rules.max_layer_fraction} L) = {rules.layer_limit(n_blocks)}")
    if math.isfinite(record["kl"]) and record["kl"] > rules.max_kl:
        reasons.append(f"kl > {rules.max_kl}")
    if math.isfinite(record["induce"]) and record["induce"] < rules.min_induce:
        reasons.append(f"induce < {rules.min_induce}")
    return "; ".join(reasons)


def select(records: Sequence[Mapping[str, Any]], n_blocks: int, rules: SelectionRules, where: str) -> tuple[int, list[dict[str, Any]]]:
    """(index of the selected candidate, records annotated with `discarded` and `selected`)."""
    annotated = [{**record, "discarded": discard_reason(record, n_blocks, rules), "selected": False} for record in records]
    survivors = [i for i, record in enumerate(annotated) if not record["discarded"]]
    if not survivors:
        reasons = sorted({record["discarded"] for record in annotated})
        raise ValueError(f"{where}: every one of the {len(records)} candidate directions was discarded by the filters "
                         f"(reasons seen: {reasons}); relax causal.selection or check the aligned model refuses at all")
    chosen = min(survivors, key=lambda i: (annotated[i]["bypass"], annotated[i]["layer"], annotated[i]["position"]))
    annotated[chosen]["selected"] = True
    return chosen, annotated

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

Filters: discard a candidate with any NaN score, layer >= int(0.8 L), KL > 0.1 or induce < 0 (the paper's values,
the defaults of `causal.selection`); the survivor with the lowest bypass is selected. Every candidate's scores and
the reason it was discarded are kept.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rankaudit.causal.inputs import generation_settings, prompt_set_of
from rankaudit.config_schema import settings_from_section
from rankaudit.interventions import activation_addition, direction_ablation
from rankaudit.padding import pad_token_id
from rankaudit.prompts.tables import instructions_sha256, read_prompt_set
from rankaudit.refusal import RefusalTokens, kl_rows, last_position_log_probs, refusal_log_odds
from rankaudit.refusal_runs import PromptSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One candidate direction: template-suffix position (negative, from the end), layer, unnormalised vector."""

    position: int
    layer: int
    direction: np.ndarray


@dataclass(frozen=True)
class SelectionRules:
    """Arditi's filters (METHODS §4), read from `causal.selection` (defaults: config/schema/causal.schema.yaml)."""

    max_layer_fraction: float
    max_kl: float
    min_induce: float

    @classmethod
    def from_config(cls, selection: Mapping[str, Any]) -> SelectionRules:
        """Build from `causal.selection` (its other keys, such as `split` or `n`, are ignored)."""
        return settings_from_section(cls, selection, "causal", "selection")

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


# --- Arditi's refusal-score prompt filter, applied to the model's own prompts ------------------------------------

FILTER_RULE = "harmful kept when refusal log-odds > 0, harmless kept when < 0 (Arditi et al.'s filter_data)"


def training_frames(harmful_path: str | None, harmless_path: str | None) -> dict[str, pd.DataFrame]:
    """The captured training prompt samples (one activation row each), read before any model is loaded."""
    if harmful_path is None or harmless_path is None:
        raise ValueError("causal.selection.filter_by_refusal_score is on: run_selection needs harmful_train_path and "
                         "harmless_train_path (the captured prompt samples, results/prompts/selected/{safety,control}.parquet)")
    return {"harmful": read_prompt_set(harmful_path), "harmless": read_prompt_set(harmless_path)}


def kept_prompts(token_ids: Sequence[Sequence[int]], mask: np.ndarray) -> tuple[Sequence[int], ...]:
    """The token ids of the prompts the filter's mask keeps, in order."""
    return tuple(ids for ids, keep in zip(token_ids, mask) if keep)


def check_activation_rows(path: str, values: np.ndarray, meta: Mapping[str, Any], frame: pd.DataFrame) -> None:
    """The activation rows must be the training prompts, in order, for the filter's mask to pick the right rows."""
    if values.shape[0] != len(frame):
        raise ValueError(f"{path}: {values.shape[0]} activation rows but the prompt sample {frame.attrs.get('dataset')} "
                         f"has {len(frame)} prompts; re-run the capture")
    if "dataset_sha256" in meta and meta["dataset_sha256"] != instructions_sha256(frame):
        raise ValueError(f"{path}: captured from other prompts than the sample {frame.attrs.get('dataset')} "
                         "(dataset_sha256 differs); re-run the capture")


def refusal_score_filter(network: Any, tokenizer: Any, training: Mapping[str, pd.DataFrame] | None,
                         scoring: Mapping[str, PromptSet], tokens: RefusalTokens, section: Mapping[str, Any],
                         system_prompt: str, family: str,
                         special_token_text: str = "error") -> tuple[dict[str, dict[str, np.ndarray]] | None, dict[str, Any]]:
    """({split: {role: keep mask}} or None when off, the record of it) for Arditi's refusal-score prompt filter.

    Scores are the first-position refusal log-odds of the aligned model (one prompt forward each); too few
    prompts left in any set is an error naming the family, split and set, raised before any candidate is scored.
    """
    sel = section["selection"]
    minimum = int(sel["min_prompts_after_filter"])
    if training is None:
        counts = {sel["split"]: {role: {"before": len(p.token_ids), "after": len(p.token_ids)} for role, p in scoring.items()}}
        return None, {"enabled": False, "rule": "", "min_prompts": minimum, "counts": counts}
    batch_size, pad = generation_settings(section).batch_size, pad_token_id(tokenizer)
    sets = {"train": {role: prompt_set_of(frame, tokenizer, system_prompt, role, special_token_text).token_ids
                      for role, frame in training.items()},
            sel["split"]: {role: prompts.token_ids for role, prompts in scoring.items()}}
    masks, scores = {}, {}
    for split, by_role in sets.items():
        masks[split], scores[split] = {}, {}
        for role, ids in by_role.items():
            values = refusal_log_odds(last_position_log_probs(network, ids, batch_size, pad), tokens.ids)
            masks[split][role] = refusal_score_mask(values, harmful=role == "harmful")
            scores[split][role] = {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}
    counts = filter_counts(masks)
    logger.info("%s: Arditi's prompt filter kept %s", family, "; ".join(
        f"{split} {role} {c['after']}/{c['before']}" for split, by_role in counts.items() for role, c in by_role.items()))
    require_filtered_prompts(counts, minimum, f"family {family}")
    record = {"enabled": True, "rule": FILTER_RULE, "min_prompts": minimum, "counts": counts, "scores": scores,
              "training_datasets": {role: frame.attrs.get("dataset") for role, frame in training.items()}}
    return masks, record

"""Measuring many ablation conditions at once on the held-out prompts (METHODS §5), and the per-prompt rows.

Every reported ablation runs on the held-out *test* split (`causal.evaluation`); the all-layer test and the sweeps
hand an `Evaluator` their conditions, and it keeps one summary row per condition and one row per prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rankaudit import io
from rankaudit.batched_ablation import RowIntervention, row_interventions
from rankaudit.causal.inputs import causal_judge, generation_settings, load_aligned, prompt_set
from rankaudit.padding import pad_token_id
from rankaudit.refusal import RefusalTokens, last_position_log_probs, rate_summary
from rankaudit.refusal_runs import ConditionOutcome, GenerationSettings, PromptSet, run_conditions
from rankaudit.workflow_logging import Progress

logger = logging.getLogger(__name__)


class Evaluator:
    """Runs held-out harmful and control prompts under many conditions in shared batches and keeps per-prompt rows.

    Rows of every condition share forwards and generation batches (`rankaudit.batched_ablation`). The control
    KL of every condition is taken against the unablated model's own forward on the control prompts, computed
    once here with no intervention active.
    """

    def __init__(self, network: Any, tokenizer: Any, harmful: PromptSet, control: PromptSet, tokens: RefusalTokens,
                 judge: Any, settings: GenerationSettings, control_generation: bool, labels: Mapping[str, Any],
                 row_batch_size: int) -> None:
        self.network, self.tokenizer, self.tokens, self.judge, self.settings = network, tokenizer, tokens, judge, settings
        self.harmful, self.control, self.control_generation, self.labels = harmful, control, control_generation, dict(labels)
        self.row_batch_size = row_batch_size
        self.reference = last_position_log_probs(network, control.token_ids, settings.batch_size, pad_token_id(tokenizer))
        self.rows: list[dict[str, Any]] = []
        self.prompt_rows: list[dict[str, Any]] = []

    def measure(self, conditions: Sequence[tuple[Mapping[str, Any], RowIntervention, bool]]) -> list[dict[str, Any]]:
        """One summary row (and per-prompt rows) per (labels, intervention, judged) condition, all run together.

        Every condition gets its first-position refusal score and control KL; a judged one also gets greedy
        continuations (harmful, and control when `control_generation`) and a refusal rate from the judge.
        """
        specs = [spec for _, spec, _ in conditions]
        judged = [bool(flag) for _, _, flag in conditions]
        label = " ".join(f"{value}" for value in self.labels.values())
        n_rows = len(specs) * (len(self.harmful.token_ids) + len(self.control.token_ids))
        progress = Progress(f"ablation {label} ({len(specs)} conditions)", n_rows, "condition x prompt rows", logger=logger)
        with row_interventions(self.network, specs) as rows:
            def select(batch_conditions: list[int]) -> None:
                rows.select(batch_conditions)
                progress.advance(len(batch_conditions))

            harmful_outcomes = run_conditions(self.network, self.tokenizer, self.harmful, self.tokens, self.judge, self.settings,
                                              select, len(specs), judged, self.row_batch_size)
            control_outcomes = run_conditions(self.network, self.tokenizer, self.control, self.tokens, self.judge, self.settings,
                                              select, len(specs), [flag and self.control_generation for flag in judged],
                                              self.row_batch_size, self.reference)
        made = []
        for (labels, _, _), harmful, control in zip(conditions, harmful_outcomes, control_outcomes):
            row = {**self.labels, **labels, "judged": harmful.judged, "n_harmful": len(self.harmful.instructions),
                   "n_control": len(self.control.instructions), "score_mean": float(harmful.score.mean()),
                   "control_kl_mean": float(control.kl.mean()), "control_kl_max": float(control.kl.max()),
                   "control_score_mean": float(control.score.mean())}
            if harmful.judged:
                row.update(rate_summary(harmful.refused, "refusal"), degenerate_harmful_rate=float(harmful.degenerate.mean()))
            if control.judged:
                row.update(control_refusal_rate=float(control.refused.mean()), degenerate_control_rate=float(control.degenerate.mean()))
            self.rows.append(row)
            made.append(row)
            self._keep(labels, "harmful", harmful, np.full(harmful.score.shape, np.nan))
            self._keep(labels, "control", control, control.kl)
        return made

    def _keep(self, condition: Mapping[str, Any], dataset: str, outcome: ConditionOutcome, kl: np.ndarray) -> None:
        for index in range(len(outcome.score)):
            self.prompt_rows.append({
                **self.labels, **condition, "dataset": dataset, "prompt": index, "score": float(outcome.score[index]),
                "refused": bool(outcome.refused[index]) if outcome.judged else None,
                "degenerate": bool(outcome.degenerate[index]) if outcome.judged else None, "kl": float(kl[index]),
                "completion": outcome.completions[index] if outcome.judged else ""})

    def summary(self, **extra: Any) -> pd.DataFrame:
        """The summary rows as a table; counts stay integers where conditions without judged generations leave gaps."""
        table = pd.DataFrame(self.rows).assign(**extra)
        if "refusal_count" in table:
            table["refusal_count"] = table["refusal_count"].astype("Int64")
        return table


def build_evaluator(family: str, model: Mapping[str, Any], section: Mapping[str, Any], harmful_path: str,
                    control_path: str, system_prompt: str, tokens: RefusalTokens, threads: int, labels: Mapping[str, Any],
                    special_token_text: str = "error") -> Evaluator:
    """The aligned model, the held-out prompts of `causal.evaluation`, the judge and settings, ready to measure."""
    network, tokenizer = load_aligned(model, threads)
    held = section["evaluation"]
    harmful = prompt_set(harmful_path, held["split"], held.get("n"), section["seed"], tokenizer, system_prompt, "harmful",
                         special_token_text)
    control = prompt_set(control_path, held["split"], held.get("n"), section["seed"], tokenizer, system_prompt, "control",
                         special_token_text)
    return Evaluator(network, tokenizer, harmful, control, tokens, causal_judge(section, threads),
                     generation_settings(section), bool(held["control_generation"]), {"family": family, **labels},
                     int(section["row_batch_size"]))


def write_prompt_rows(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    """Per-prompt rows; `refused` and `degenerate` are nullable (empty where a condition was scored, not judged)."""
    frame = pd.DataFrame(list(rows)).astype({"refused": "boolean", "degenerate": "boolean"})
    with io.atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)

"""The causal stage's jobs (METHODS §4-5): Arditi selection, all-layer ablation check, abliterated model, sweeps.

Each job loads the aligned model once and runs everything it owns in batches. Prompts are chosen by split:
directions and bases come from the captured *training* activations, selection scores from the *validation*
split, every reported ablation from the held-out *test* split. The refusal tokens are derived and checked once,
by the selection job, and read back from its record by the other jobs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rankaudit import __version__, io, parts
from rankaudit.batched_ablation import RowIntervention, row_interventions
from rankaudit.batching import job_batching_record
from rankaudit.directions import top_directions
from rankaudit.formats import encode_prompts
from rankaudit.interventions import direction_ablation, orthogonalize_weights, unit
from rankaudit.prompts.tables import instructions_sha256, read_prompt_set, select_prompts
from rankaudit.refusal import (
    ConditionOutcome,
    GenerationSettings,
    PromptSet,
    RefusalTokens,
    build_judge,
    check_refusal_tokens,
    first_token_record,
    last_position_log_probs,
    pad_id_of,
    rate_summary,
    refusal_log_odds,
    refusal_tokens,
    run_conditions,
    run_prompts,
)
from rankaudit.selection import (
    SelectionRules,
    candidate_directions,
    filter_counts,
    refusal_score_mask,
    require_filtered_prompts,
    score_candidates,
    select,
)
from rankaudit.stages.no_refusal import (
    CANDIDATE_COLUMNS,
    NO_SHIFT,
    SELECTED,
    baseline_refusal,
    no_refusal_note,
    no_refusal_record,
    no_shift_note,
    read_record,
    write_no_abliterated,
    write_no_refusal_arditi,
    write_no_refusal_selection,
    write_no_refusal_sweep,
    write_sweep_note,
)
from rankaudit.sweeps import Condition, band_layers, basis_matrix, basis_rank, k_grid, plan_conditions, random_basis
from rankaudit.workflow_logging import Progress

logger = logging.getLogger(__name__)

ABLITERATION_CHECK_PROMPTS = 8


def load_aligned(spec: Mapping[str, Any], threads: int) -> tuple[Any, Any]:
    """The aligned model (eval, no grad, configured dtype/device) and its tokenizer."""
    import torch

    from rankaudit.models import load_model_from_spec, load_tokenizer

    torch.set_num_threads(max(1, threads))
    loader = {"revision": spec.get("revision"), "trust_remote_code": bool(spec.get("trust_remote_code", False))}
    tokenizer = load_tokenizer(spec["location"], **loader)
    model = load_model_from_spec(spec)
    return model, tokenizer


def prompt_set(path: str, split: str, n: int | None, seed: int, tokenizer: Any, system_prompt: str, name: str,
               special_token_text: str = "error") -> PromptSet:
    """Chat-format prompts of one split of a prompt table (n of them, drawn with `seed`; all when n is None)."""
    return _prompt_set_of(select_prompts(read_prompt_set(path), split, n, seed), tokenizer, system_prompt, name,
                          special_token_text)


def _prompt_set_of(frame: pd.DataFrame, tokenizer: Any, system_prompt: str, name: str,
                   special_token_text: str = "error") -> PromptSet:
    """The chat-format renderings and token ids of a drawn prompt table (capture.special_token_text applied)."""
    instructions = list(frame["instruction"])
    encoded = encode_prompts(tokenizer, instructions, "chat", system_prompt=system_prompt,
                             special_token_text=special_token_text)
    return PromptSet(name, tuple(instructions), tuple(r.rendered for r in encoded.records), tuple(encoded.token_ids),
                     len(encoded.escaped))


def _settings(section: Mapping[str, Any]) -> GenerationSettings:
    return GenerationSettings.from_config({**section.get("generation", {}), "batch_size": section.get("batch_size", 32)})


def _judge(section: Mapping[str, Any], threads: int) -> Any:
    spec = section.get("judge", {"type": "keyword"})
    return build_judge(spec, lambda: load_aligned({"location": spec["model"], "device": spec.get("device", "cpu")}, threads))


def _direction_meta(family: str, **extra: Any) -> dict[str, Any]:
    return {"family": family, "rankaudit": __version__, **extra}


# --- selection ---------------------------------------------------------------------------------------------------

def phase_prompts(path: str, phase: str, role: str, section: Mapping[str, Any]) -> pd.DataFrame:
    """The prompts of one phase (selection or evaluation) and role, read and drawn before any model is loaded.

    A split the dataset does not hold is an error naming the dataset, its splits and the config keys at fault.
    """
    from rankaudit.prompts.tables import PromptDataError

    spec = section[phase]
    try:
        return select_prompts(read_prompt_set(path), spec["split"], spec.get("n"), section["seed"])
    except PromptDataError as error:
        raise PromptDataError(f"{path}: {error} (causal.{phase}.split = {spec['split']!r}; the {role} prompt set is "
                              f"causal.{phase}.{role}_dataset, else datasets.{role}.dataset)") from error


def run_selection(*, family: str, model: Mapping[str, Any], activations: Mapping[int, Mapping[str, str]],
                  harmful_path: str, harmless_path: str, section: Mapping[str, Any], system_prompt: str,
                  record_path: str, direction_path: str, table_stem: str, version: int, threads: int = 2,
                  harmful_train_path: str | None = None, harmless_train_path: str | None = None,
                  special_token_text: str = "error") -> None:
    """Score every (position, layer) candidate on validation prompts and select Arditi's direction.

    `activations[layer]` = {"harmful": path, "harmless": path} of the aligned model's chat-format training
    activations (with post-instruction positions), one row per prompt of `harmful_train_path` /
    `harmless_train_path` (the captured prompt samples), in their order. First the aligned model's refusal rate on
    the harmful validation prompts is measured: below `causal.min_baseline_refusal` the job records "no refusal to
    ablate" (`rankaudit.stages.no_refusal`) and selects nothing. Then, with `causal.selection.filter_by_refusal_score`,
    Arditi's prompt filter drops harmful prompts the model does not refuse and harmless ones it does, in the
    training split (activation rows) and the scoring split, before any candidate is built or scored.
    """
    started = time.perf_counter()
    sel = section["selection"]
    frames = {"safety": phase_prompts(harmful_path, "selection", "safety", section),
              "control": phase_prompts(harmless_path, "selection", "control", section)}
    training = _training_frames(harmful_train_path, harmless_train_path) if sel["filter_by_refusal_score"] else None
    validation = {"split": sel["split"], "harmful_dataset": frames["safety"].attrs.get("dataset"),
                  "harmless_dataset": frames["control"].attrs.get("dataset"),
                  "n_harmful": len(frames["safety"]), "n_harmless": len(frames["control"])}
    network, tokenizer = load_aligned(model, threads)
    n_blocks = network.config.get_text_config().num_hidden_layers
    harmful = _prompt_set_of(frames["safety"], tokenizer, system_prompt, "harmful", special_token_text)
    harmless = _prompt_set_of(frames["control"], tokenizer, system_prompt, "harmless", special_token_text)
    validation["special_token_text"] = special_token_text
    validation["n_escaped"] = {"harmful": harmful.n_escaped, "harmless": harmless.n_escaped}
    tokens = refusal_tokens(tokenizer, section["refusal_openers"])
    settings = _settings(section)
    outcome = run_prompts(network, tokenizer, harmful, tokens, _judge(section, threads), settings)
    refusal = baseline_refusal(outcome.refused, section["min_baseline_refusal"], sel["split"], str(validation["harmful_dataset"]))
    first_ids = outcome.log_probs.argmax(axis=1)
    if not refusal["refusal_to_ablate"]:
        logger.warning("%s: %s", family, no_refusal_note(refusal))
        write_no_refusal_selection(family=family, baseline=refusal, token_record=first_token_record(tokens, first_ids, outcome.refused, tokenizer),
                                   n_blocks=n_blocks, validation=validation, record_path=record_path,
                                   direction_path=direction_path, table_stem=table_stem,
                                   seconds=time.perf_counter() - started, version=version)
        return
    token_check = check_refusal_tokens(tokens, first_ids, outcome.refused, tokenizer,
                                       section["min_refusal_token_coverage"], f"family {family}: refusal tokens")
    logger.info("%s: %d/%d harmful %s prompts refused (%.2f); refusal tokens %s cover %.2f of refusals", family,
                refusal["refusal_count"], refusal["n"], sel["split"], refusal["refusal_rate"],
                token_check["refusal_tokens"]["pieces"], token_check["coverage_of_refusals"])

    masks, prompt_filter = _prompt_filter(network, tokenizer, training, {"harmful": harmful, "harmless": harmless}, tokens,
                                          section, system_prompt, family, special_token_text)
    scored = {role: prompts.token_ids if masks is None else _kept(prompts.token_ids, masks[sel["split"]][role])
              for role, prompts in (("harmful", harmful), ("harmless", harmless))}

    loaded = {layer: {kind: io.read_tensors(path) for kind, path in paths.items()} for layer, paths in activations.items()}
    for layer, kinds in loaded.items():
        for kind, (tensors, meta) in kinds.items():
            if "post_instruction" not in tensors:
                raise KeyError(f"{activations[layer][kind]}: no post_instruction activations (chat-format capture needed)")
            if training is not None:
                _check_rows(activations[layer][kind], tensors["post_instruction"], meta, training[kind])
    layers = [layer for layer in sorted(loaded) if layer < n_blocks]

    def rows(kind: str, layer: int) -> np.ndarray:
        values = loaded[layer][kind][0]["post_instruction"]
        return values if masks is None else values[masks["train"][kind]]

    candidates = candidate_directions({l: rows("harmful", l) for l in layers}, {l: rows("harmless", l) for l in layers})

    def progress(done: int, total: int, record: Mapping[str, Any]) -> None:
        logger.info("candidate %d/%d (pos %d, layer %d): bypass %.3f induce %.3f kl %.4f", done, total,
                    record["position"], record["layer"], record["bypass"], record["induce"], record["kl"])

    baseline, records = score_candidates(network, candidates, scored["harmful"], scored["harmless"], tokens.ids,
                                         settings.batch_size, pad_id_of(tokenizer), progress)
    rules = SelectionRules(sel["max_layer_fraction"], sel["max_kl"], sel["min_induce"])
    chosen, annotated = select(records, n_blocks, rules, f"family {family}")
    best = candidates[chosen]
    logger.info("%s: selected position %d, layer %d (bypass %.3f, induce %.3f, kl %.4f) of %d candidates scored on %d + %d "
                "%s prompts (%s, %s); %d survived the filters", family, best.position, best.layer, annotated[chosen]["bypass"],
                annotated[chosen]["induce"], annotated[chosen]["kl"], len(annotated), len(scored["harmful"]),
                len(scored["harmless"]), sel["split"], validation["harmful_dataset"], validation["harmless_dataset"],
                sum(not r["discarded"] for r in annotated))
    io.write_tensors(direction_path, {"direction": best.direction, "unit": unit(best.direction, family)},
                     _direction_meta(family, layer=best.layer, position=best.position, n_blocks=n_blocks,
                                     definition="mean harmful - mean harmless A(chat) at (position, layer), training split",
                                     prompt_filter=prompt_filter["enabled"],
                                     stage_version=version))
    table = pd.DataFrame(annotated).assign(family=family, split=sel["split"])
    io.write_table(table[CANDIDATE_COLUMNS], table_stem,
                   title=f"Arditi candidates of {family} ({sel['split']} split: {validation['harmful_dataset']}, {validation['harmless_dataset']})")
    io.write_json(record_path, {
        "family": family, "status": SELECTED, "selected": annotated[chosen], "baseline": baseline, "baseline_refusal": refusal,
        "n_blocks": n_blocks, "layer_limit": rules.layer_limit(n_blocks), "rules": vars(rules), "refusal_check": token_check,
        "n_candidates": len(annotated), "n_surviving": sum(not r["discarded"] for r in annotated), "candidates": annotated,
        "validation": validation, "prompt_filter": prompt_filter,
        "example_refusal": outcome.completions[int(np.argmax(outcome.refused))],
        "seconds": round(time.perf_counter() - started, 2), "stage_version": version, "model_manifest": model.get("manifest"),
        "batching": job_batching_record(),
    })


FILTER_RULE = "harmful kept when refusal log-odds > 0, harmless kept when < 0 (Arditi et al.'s filter_data)"


def _training_frames(harmful_path: str | None, harmless_path: str | None) -> dict[str, pd.DataFrame]:
    """The captured training prompt samples (one activation row each), read before any model is loaded."""
    if harmful_path is None or harmless_path is None:
        raise ValueError("causal.selection.filter_by_refusal_score is on: run_selection needs harmful_train_path and "
                         "harmless_train_path (the captured prompt samples, results/prompts/selected/{safety,control}.parquet)")
    return {"harmful": read_prompt_set(harmful_path), "harmless": read_prompt_set(harmless_path)}


def _kept(token_ids: Sequence[Sequence[int]], mask: np.ndarray) -> tuple[Sequence[int], ...]:
    return tuple(ids for ids, keep in zip(token_ids, mask) if keep)


def _check_rows(path: str, values: np.ndarray, meta: Mapping[str, Any], frame: pd.DataFrame) -> None:
    """The activation rows must be the training prompts, in order, for the filter's mask to pick the right rows."""
    if values.shape[0] != len(frame):
        raise ValueError(f"{path}: {values.shape[0]} activation rows but the prompt sample {frame.attrs.get('dataset')} "
                         f"has {len(frame)} prompts; re-run the capture")
    if "dataset_sha256" in meta and meta["dataset_sha256"] != instructions_sha256(frame):
        raise ValueError(f"{path}: captured from other prompts than the sample {frame.attrs.get('dataset')} "
                         "(dataset_sha256 differs); re-run the capture")


def _prompt_filter(network: Any, tokenizer: Any, training: Mapping[str, pd.DataFrame] | None,
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
    batch_size, pad = _settings(section).batch_size, pad_id_of(tokenizer)
    sets = {"train": {role: _prompt_set_of(frame, tokenizer, system_prompt, role, special_token_text).token_ids
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


def read_selection(record_path: str, direction_path: str) -> tuple[RefusalTokens, np.ndarray, dict[str, Any]]:
    """(refusal tokens, unnormalised selected direction, its metadata) from the selection job's outputs."""
    import json

    with open(record_path) as handle:
        record = json.load(handle)
    direction, meta = read_direction(direction_path)
    return RefusalTokens.from_record(record["refusal_check"]["refusal_tokens"]), direction, meta


def read_direction(direction_path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The selected (unnormalised) direction and its metadata (layer, position)."""
    tensors, meta = io.read_tensors(direction_path)
    if "direction" not in tensors:
        raise ValueError(f"{direction_path}: holds no direction ({meta.get('note', 'no direction was selected')})")
    return tensors["direction"], meta


# --- measuring one intervention ----------------------------------------------------------------------------------

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
        self.reference = last_position_log_probs(network, control.token_ids, settings.batch_size, pad_id_of(tokenizer))
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


def _evaluator(family: str, model: Mapping[str, Any], section: Mapping[str, Any], harmful_path: str, control_path: str,
               system_prompt: str, tokens: RefusalTokens, threads: int, labels: Mapping[str, Any],
               special_token_text: str = "error") -> Evaluator:
    network, tokenizer = load_aligned(model, threads)
    held = section["evaluation"]
    harmful = prompt_set(harmful_path, held["split"], held.get("n"), section["seed"], tokenizer, system_prompt, "harmful",
                         special_token_text)
    control = prompt_set(control_path, held["split"], held.get("n"), section["seed"], tokenizer, system_prompt, "control",
                         special_token_text)
    return Evaluator(network, tokenizer, harmful, control, tokens, _judge(section, threads), _settings(section),
                     bool(held["control_generation"]), {"family": family, **labels}, int(section["row_batch_size"]))


# --- Arditi all-layer ablation on held-out prompts ---------------------------------------------------------------

def run_arditi(*, family: str, model: Mapping[str, Any], selection_record: str, direction_path: str, harmful_path: str,
               control_path: str, section: Mapping[str, Any], system_prompt: str, table_stem: str, prompts_path: str,
               version: int, threads: int = 2, special_token_text: str = "error") -> None:
    """Baseline, the selected direction ablated at all layers, random directions ablated alike, and the selected
    direction added at its layer (induce), all on the held-out test split. With no refusal to ablate: one note row."""
    none = no_refusal_record(selection_record)
    if none is not None:
        return write_no_refusal_arditi(record=none, table_stem=table_stem, prompts_path=prompts_path, version=version)
    tokens, direction, meta = read_selection(selection_record, direction_path)
    evaluator = _evaluator(family, model, section, harmful_path, control_path, system_prompt, tokens, threads, {},
                           special_token_text)
    d = direction.size
    conditions = [({"condition": "baseline", "draw": -1}, RowIntervention(), True),
                  ({"condition": "selected_ablation", "draw": -1}, RowIntervention(direction=direction), True)]
    for draw in range(section["random_draws"]):
        random_direction = random_basis(d, 1, np.random.default_rng([section["seed"], 7, draw]))[:, 0]
        conditions.append(({"condition": "random_ablation", "draw": draw}, RowIntervention(direction=random_direction), True))
    conditions.append(({"condition": "selected_addition", "draw": -1},
                       RowIntervention(addition=(int(meta["layer"]), np.asarray(direction, np.float64))), True))
    evaluator.measure(conditions)
    table = evaluator.summary(layer=int(meta["layer"]), position=int(meta["position"]), stage_version=version)
    io.write_table(table, table_stem, title=f"Arditi all-layer ablation of {family} (held-out test prompts)")
    _write_prompts(evaluator.prompt_rows, prompts_path)


def _write_prompts(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    """Per-prompt rows; `refused` and `degenerate` are nullable (empty where a condition was scored, not judged)."""
    frame = pd.DataFrame(list(rows)).astype({"refused": "boolean", "degenerate": "boolean"})
    with io.atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


# --- abliterated reference model ---------------------------------------------------------------------------------

CHECK_DTYPE = "float32"


def relative_differences(reference: Mapping[int, Mapping[str, np.ndarray]], other: Mapping[int, Mapping[str, np.ndarray]],
                         direction: np.ndarray) -> tuple[float, float]:
    """(worst over layers of max|reference - other| / max|reference|, worst of max|other . r| / max|other|) at the
    last position: how far the weight edit is from the hook ablation, and how much of r is left in the stream."""
    r = unit(direction, "abliteration check")
    difference = max(float(np.max(np.abs(reference[l]["last"] - other[l]["last"]))) / max(1e-12, float(np.max(np.abs(reference[l]["last"]))))
                     for l in reference)
    projection = max(float(np.max(np.abs(other[l]["last"] @ r))) / max(1e-12, float(np.max(np.abs(other[l]["last"]))))
                     for l in reference)
    return difference, projection


def write_abliterated(*, family: str, model: Mapping[str, Any], selection_record: str, direction_path: str, output_dir: str,
                      check_prompts_path: str, section: Mapping[str, Any], system_prompt: str, version: int,
                      threads: int = 2, special_token_text: str = "error") -> None:
    """Save the aligned model with the selected direction orthogonalized out of its weights (+ its tokenizer).

    The edit, the saved weights and the check are all float32, whatever the runtime dtype (METHODS §6): the
    original is loaded in float32 and its hook ablation captured on the first validation prompts, the weights are
    edited and saved in float32, and the saved copy is reloaded in float32; every layer's residual stream must agree
    with the hooks to `causal.abliteration_tolerance` (relative), a tolerance that only float32 can meet (one
    bfloat16 rounding step is 2^-8). With no refusal to ablate, the directory holds only a record saying no model was
    made (`rankaudit.stages.no_refusal`).
    """
    import gc

    from rankaudit.capture import capture_residual_stream
    from rankaudit.models import load_model_from_spec

    none = no_refusal_record(selection_record)
    if none is not None:
        write_no_abliterated(record=none, source=model["location"], output_dir=output_dir, version=version)
        logger.warning("%s: no abliterated model made (%s)", family, none["note"])
        return
    direction, meta = read_direction(direction_path)
    check_frame = phase_prompts(check_prompts_path, "selection", "safety", section).head(ABLITERATION_CHECK_PROMPTS)
    exact = {**model, "dtype": CHECK_DTYPE}
    network, tokenizer = load_aligned(exact, threads)
    n_blocks = network.config.get_text_config().num_hidden_layers
    check_ids = _prompt_set_of(check_frame, tokenizer, system_prompt, "check", special_token_text).token_ids
    layers = list(range(n_blocks + 1))
    pad = pad_id_of(tokenizer)
    with direction_ablation(network, direction):
        hooked = capture_residual_stream(network, check_ids, layers, batch_size=len(check_ids), pad_token_id=pad)
    edit = orthogonalize_weights(network, direction)
    with io.atomic_directory(output_dir) as tmp:
        network.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del network
        gc.collect()
        reloaded = load_model_from_spec(exact, location=str(tmp))
        edited = capture_residual_stream(reloaded, check_ids, layers, batch_size=len(check_ids), pad_token_id=pad)
        del reloaded
        worst_difference, worst_projection = relative_differences(hooked, edited, direction)
        tolerance = section["abliteration_tolerance"]
        if worst_difference > tolerance:
            raise ValueError(f"family {family}: the weight-orthogonalized model differs from the hook ablation by "
                             f"{worst_difference:.3g} (relative, worst layer, both in {CHECK_DTYPE}) > "
                             f"causal.abliteration_tolerance {tolerance}")
        io.write_json(tmp / "abliteration.json", {
            "family": family, "made": True, "source": model["location"], "direction_layer": meta.get("layer"),
            "direction_position": meta.get("position"), "direction_sha256": io.sha256_text(np.asarray(direction, np.float64).tobytes().hex()),
            "saved_dtype": CHECK_DTYPE, "check_dtype": CHECK_DTYPE, "tolerance": tolerance,
            "max_relative_difference_vs_hooks": worst_difference, "max_relative_projection_on_direction": worst_projection,
            "check_prompts": len(check_ids), "check_dataset": check_frame.attrs.get("dataset"),
            "check_split": section["selection"]["split"], **edit, "stage_version": version,
            "model_manifest": model.get("manifest"),
        })
    logger.info("%s: abliterated model written to %s (hook vs weights in %s: %.2g relative; |r.h| %.2g)", family, output_dir,
                CHECK_DTYPE, worst_difference, worst_projection)


# --- sweeps ------------------------------------------------------------------------------------------------------

def sweep_bands(n_blocks: int, section: Mapping[str, Any]) -> dict[str, list[int]]:
    """The layers of each configured band for a model of `n_blocks` blocks."""
    return {name: band_layers(n_blocks, *spec["range"], spec["count"]) for name, spec in section["bands"].items()}


def band_matrices(basis: str, cells: Mapping[int, Mapping[str, Mapping[str, str]]], bands: Mapping[str, Sequence[int]],
                  read_position: str) -> dict[int, np.ndarray]:
    """M_basis (training split) at every band layer, read from the captured cells."""
    layers = sorted({layer for band in bands.values() for layer in band})
    missing = [layer for layer in layers if layer not in cells]
    if missing:
        raise KeyError(f"causal.bands: layers {missing} were not captured (capture.layers must include them)")
    matrices = {}
    for layer in layers:
        loaded = {dataset: {key: io.read_tensors(path)[0][read_position] for key, path in by_key.items()}
                  for dataset, by_key in cells[layer].items()}
        matrices[layer] = basis_matrix(basis, loaded["safety"], loaded.get("control"))
    return matrices


def sweep_bases(per_layer: Mapping[int, np.ndarray], ranks: Mapping[int, int], bands: Mapping[str, Sequence[int]],
                section: Mapping[str, Any]) -> tuple[dict[str, dict[int, np.ndarray]], list[int], dict[str, Any]]:
    """Per band and layer the top singular basis of M_basis, the k grid and a record of it.

    `per_layer[layer]` is M_basis at that band layer (`band_matrices`) and `ranks[layer]` its numerical rank;
    every rank must be >= 1.
    """
    rank = min(ranks.values())
    ks = k_grid(section["k_grid"], rank)
    k_max = min(rank, max(max(ks), section["n_single"]))
    tops = {layer: top_directions(matrix, k_max) for layer, matrix in per_layer.items()}
    record = {"bands": dict(bands), "ranks": {str(l): r for l, r in ranks.items()}, "k_grid": ks, "k_max": k_max,
              "read_position": section["read_position"], "n_rows": {str(l): int(m.shape[0]) for l, m in per_layer.items()}}
    return {name: {layer: tops[layer] for layer in band} for name, band in bands.items()}, ks, record


def run_sweep(*, family: str, basis: str, model: Mapping[str, Any], cells: Mapping[int, Mapping[str, Mapping[str, str]]],
              selection_record: str, direction_path: str, harmful_path: str, control_path: str, section: Mapping[str, Any],
              system_prompt: str, summary_stem: str, prompts_path: str, record_path: str, version: int, threads: int = 2,
              special_token_text: str = "error") -> None:
    """Every ablation of one (family, basis): baseline, cumulative top-k, single u_j and random k-subspaces per band.

    All conditions run together, their rows sharing batches. Baseline, cumulative and single conditions get judged
    generations; random draws do when `causal.evaluation.random_generation` is set, and are otherwise reported by
    their first-position refusal score and control KL alone (refusal-rate columns left empty, `judged` false).
    """
    none = no_refusal_record(selection_record)
    if none is not None:
        return write_no_refusal_sweep(record=none, basis=basis, summary_stem=summary_stem, prompts_path=prompts_path,
                                      record_path=record_path, version=version)
    started = time.perf_counter()
    bands = sweep_bands(int(read_record(selection_record)["n_blocks"]), section)
    per_layer = band_matrices(basis, cells, bands, section["read_position"])
    ranks = {layer: basis_rank(matrix) for layer, matrix in per_layer.items()}
    if min(ranks.values()) == 0:
        return write_sweep_note(family=family, basis=basis, status=NO_SHIFT, note=no_shift_note(basis, ranks),
                                extra={"ranks": json.dumps({str(l): r for l, r in ranks.items()})}, summary_stem=summary_stem,
                                prompts_path=prompts_path, record_path=record_path, version=version)
    tokens, _, _ = read_selection(selection_record, direction_path)
    top, ks, record = sweep_bases(per_layer, ranks, bands, section)
    conditions = plan_conditions(top, ks, section["n_single"], section["random_draws"], section["seed"])
    judge_random = bool(section["evaluation"]["random_generation"])
    planned = [({"condition": c.name, "band": c.band, "kind": c.kind, "k": c.k,
                 "direction": c.direction if c.direction is not None else -1, "draw": c.draw if c.draw is not None else -1},
                RowIntervention(bases=c.bases), c.kind != "random" or judge_random) for c in conditions]
    groups = sweep_parts(conditions)
    # finished parts of an interrupted run of this job (same inputs and settings; any thread count) are reused
    settings = {"family": family, "basis": basis, "model": model, "section": section, "system_prompt": system_prompt,
                "special_token_text": special_token_text, "version": version}
    inputs = [model["location"], selection_record, direction_path, harmful_path, control_path,
              *(path for layer in per_layer for by_key in cells[layer].values() for path in by_key.values())]
    store = parts.PartStore(record_path, parts.fingerprint(settings, inputs), list(groups), label=f"sweep {family}/{basis}")
    evaluator = _evaluator(family, model, section, harmful_path, control_path, system_prompt, tokens, threads, {"basis": basis},
                           special_token_text)
    for name, members in groups.items():
        saved = store.finished(name)
        if saved is not None:
            evaluator.rows.extend(saved["rows"])
            evaluator.prompt_rows.extend(saved["prompt_rows"])
            continue
        first_row, first_prompt_row = len(evaluator.rows), len(evaluator.prompt_rows)
        for row in evaluator.measure([planned[index] for index in members]):
            logger.info("%s/%s %s: refusal %.3f score %.2f kl %.4f", family, basis, row["condition"], row.get("refusal_rate", np.nan),
                        row["score_mean"], row["control_kl_mean"])
        store.save(name, {"rows": evaluator.rows[first_row:], "prompt_rows": evaluator.prompt_rows[first_prompt_row:]})
    table = evaluator.summary(stage_version=version)
    io.write_table(table, summary_stem, title=f"Ablation sweep of {family}, basis M_{basis} (held-out test prompts)")
    _write_prompts(evaluator.prompt_rows, prompts_path)
    io.write_json(record_path, {**record, "family": family, "basis": basis, "n_conditions": len(conditions),
                                "seconds": round(time.perf_counter() - started, 2), "stage_version": version,
                                "model_manifest": model.get("manifest"), "resume": store.summary(),
                                "batching": job_batching_record()})
    store.finish()


def sweep_parts(conditions: Sequence[Condition]) -> dict[str, list[int]]:
    """The sweep's parts (kept on disk as they finish, so a killed sweep resumes): the baseline, then per band its
    cumulative conditions, its single directions, and its random draws of each k; {part name: condition indices}.

    Each part's conditions share batches; the parts run one after another, in the order of `plan_conditions`, so the
    tables list the conditions in that order whether or not the job was interrupted.
    """
    groups: dict[str, list[int]] = {}
    for index, condition in enumerate(conditions):
        if condition.kind == "baseline":
            name = "baseline"
        elif condition.kind == "random":
            name = f"{condition.band}__random_k{condition.k}"
        else:
            name = f"{condition.band}__{condition.kind}"
        if name in groups and groups[name][-1] != index - 1:
            raise ValueError(f"sweep part {name!r}: its conditions are not consecutive in the plan")
        groups.setdefault(name, []).append(index)
    return groups

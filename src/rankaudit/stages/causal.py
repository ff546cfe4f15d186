"""The causal stage's jobs (METHODS §4-5): Arditi selection, all-layer ablation check, abliterated model, sweeps.

Each job loads the aligned model once and runs everything it owns in batches. Prompts are chosen by split:
directions and bases come from the captured *training* activations, selection scores from the *validation*
split, every reported ablation from the held-out *test* split. The refusal tokens are derived and checked once,
by the selection job, and read back from its record by the other jobs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rankaudit import __version__, io
from rankaudit.formats import encode_prompts
from rankaudit.directions import top_directions
from rankaudit.interventions import activation_addition, direction_ablation, orthogonalize_weights, projection_ablation, unit
from rankaudit.prompts.tables import read_prompt_set, select_prompts
from rankaudit.refusal import (GenerationSettings, Outcome, PromptSet, RefusalTokens, build_judge, check_refusal_tokens,
                               kl_rows, pad_id_of, rate_summary, refusal_tokens, run_prompts)
from rankaudit.selection import SelectionRules, candidate_directions, score_candidates, select
from rankaudit.sweeps import band_layers, basis_matrix, k_grid, numerical_rank, plan_conditions, random_basis

logger = logging.getLogger(__name__)

ABLITERATION_CHECK_PROMPTS = 8


def load_aligned(spec: Mapping[str, Any], threads: int) -> tuple[Any, Any]:
    """The aligned model (eval, no grad, configured dtype/device) and its tokenizer."""
    import torch

    from rankaudit.models import load_model, load_tokenizer

    torch.set_num_threads(max(1, threads))
    loader = {"revision": spec.get("revision"), "trust_remote_code": bool(spec.get("trust_remote_code", False))}
    tokenizer = load_tokenizer(spec["location"], **loader)
    model = load_model(spec["location"], dtype=spec.get("dtype", "float32"), device=spec.get("device", "cpu"),
                       attn_implementation=spec.get("attn_implementation"), **loader)
    return model, tokenizer


def prompt_set(path: str, split: str, n: int | None, seed: int, tokenizer: Any, system_prompt: str, name: str) -> PromptSet:
    """Chat-format prompts of one split of a prompt table (n of them, drawn with `seed`; all when n is None)."""
    frame = select_prompts(read_prompt_set(path), split, n, seed)
    instructions = list(frame["instruction"])
    encoded = encode_prompts(tokenizer, instructions, "chat", system_prompt=system_prompt)
    return PromptSet(name, tuple(instructions), tuple(r.rendered for r in encoded.records), tuple(encoded.token_ids))


def _settings(section: Mapping[str, Any]) -> GenerationSettings:
    return GenerationSettings.from_config({**section.get("generation", {}), "batch_size": section.get("batch_size", 32)})


def _judge(section: Mapping[str, Any], threads: int) -> Any:
    spec = section.get("judge", {"type": "keyword"})
    return build_judge(spec, lambda: load_aligned({"location": spec["model"], "device": spec.get("device", "cpu")}, threads))


def _direction_meta(family: str, **extra: Any) -> dict[str, Any]:
    return {"family": family, "rankaudit": __version__, **extra}


# --- selection ---------------------------------------------------------------------------------------------------

def run_selection(*, family: str, model: Mapping[str, Any], activations: Mapping[int, Mapping[str, str]],
                  harmful_path: str, harmless_path: str, section: Mapping[str, Any], system_prompt: str,
                  record_path: str, direction_path: str, table_stem: str, version: int, threads: int = 2) -> None:
    """Score every (position, layer) candidate on validation prompts and select Arditi's direction.

    `activations[layer]` = {"harmful": path, "harmless": path} of the aligned model's chat-format training
    activations (with post-instruction positions).
    """
    started = time.perf_counter()
    network, tokenizer = load_aligned(model, threads)
    n_blocks = network.config.get_text_config().num_hidden_layers
    sel = section["selection"]
    harmful = prompt_set(harmful_path, sel["split"], sel.get("n"), section["seed"], tokenizer, system_prompt, "harmful")
    harmless = prompt_set(harmless_path, sel["split"], sel.get("n"), section["seed"], tokenizer, system_prompt, "harmless")
    tokens = refusal_tokens(tokenizer, section["refusal_openers"])
    settings = _settings(section)
    outcome = run_prompts(network, tokenizer, harmful, tokens, _judge(section, threads), settings)
    token_check = check_refusal_tokens(tokens, outcome.log_probs.argmax(axis=1), outcome.refused, tokenizer,
                                       section["min_refusal_token_coverage"], f"family {family}: refusal tokens")
    logger.info("%s: refusal tokens %s cover %.2f of refusals (%d/%d harmful validation prompts refused)", family,
                token_check["refusal_tokens"]["pieces"], token_check["coverage_of_refusals"], token_check["n_refused"], len(harmful.instructions))

    loaded = {layer: {kind: io.read_tensors(path)[0] for kind, path in paths.items()} for layer, paths in activations.items()}
    for layer, kinds in loaded.items():
        for kind, tensors in kinds.items():
            if "post_instruction" not in tensors:
                raise KeyError(f"{activations[layer][kind]}: no post_instruction activations (chat-format capture needed)")
    layers = [layer for layer in sorted(loaded) if layer < n_blocks]
    candidates = candidate_directions({l: loaded[l]["harmful"]["post_instruction"] for l in layers},
                                      {l: loaded[l]["harmless"]["post_instruction"] for l in layers})

    def progress(done: int, total: int, record: Mapping[str, Any]) -> None:
        logger.info("candidate %d/%d (pos %d, layer %d): bypass %.3f induce %.3f kl %.4f", done, total,
                    record["position"], record["layer"], record["bypass"], record["induce"], record["kl"])

    baseline, records = score_candidates(network, candidates, harmful.token_ids, harmless.token_ids, tokens.ids,
                                         settings.batch_size, pad_id_of(tokenizer), progress)
    rules = SelectionRules(sel["max_layer_fraction"], sel["max_kl"], sel["min_induce"])
    chosen, annotated = select(records, n_blocks, rules, f"family {family}")
    best = candidates[chosen]
    io.write_tensors(direction_path, {"direction": best.direction, "unit": unit(best.direction, family)},
                     _direction_meta(family, layer=best.layer, position=best.position, n_blocks=n_blocks,
                                     definition="mean harmful - mean harmless A(chat) at (position, layer), training split",
                                     stage_version=version))
    table = pd.DataFrame(annotated).assign(family=family)
    io.write_table(table[["family", "position", "layer", "norm", "bypass", "induce", "kl", "discarded", "selected"]], table_stem,
                   title=f"Arditi candidates of {family} (validation split)")
    io.write_json(record_path, {
        "family": family, "selected": annotated[chosen], "baseline": baseline, "n_blocks": n_blocks,
        "layer_limit": rules.layer_limit(n_blocks), "rules": vars(rules), "refusal_check": token_check,
        "n_candidates": len(annotated), "n_surviving": sum(not r["discarded"] for r in annotated), "candidates": annotated,
        "validation": {"split": sel["split"], "n_harmful": len(harmful.instructions), "n_harmless": len(harmless.instructions)},
        "example_refusal": outcome.completions[int(np.argmax(outcome.refused))] if outcome.refused.any() else "",
        "seconds": round(time.perf_counter() - started, 2), "stage_version": version,
    })


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
    return tensors["direction"], meta


# --- measuring one intervention ----------------------------------------------------------------------------------

class Evaluator:
    """Runs held-out harmful and control prompts under an intervention and keeps per-prompt rows."""

    def __init__(self, network: Any, tokenizer: Any, harmful: PromptSet, control: PromptSet, tokens: RefusalTokens,
                 judge: Any, settings: GenerationSettings, control_generation: bool, labels: Mapping[str, Any]) -> None:
        self.network, self.tokenizer, self.tokens, self.judge, self.settings = network, tokenizer, tokens, judge, settings
        self.harmful, self.control, self.control_generation, self.labels = harmful, control, control_generation, dict(labels)
        self.reference: np.ndarray | None = None
        self.rows: list[dict[str, Any]] = []
        self.prompt_rows: list[dict[str, Any]] = []

    def measure(self, condition: Mapping[str, Any], intervention: Callable[[], Any]) -> dict[str, Any]:
        """One summary row (and per-prompt rows) for the intervention the context-manager factory gives."""
        with intervention():
            bad = run_prompts(self.network, self.tokenizer, self.harmful, self.tokens, self.judge, self.settings)
            good = run_prompts(self.network, self.tokenizer, self.control, self.tokens, self.judge, self.settings,
                               generate=self.control_generation)
        if self.reference is None:
            self.reference = good.log_probs
        kl = kl_rows(self.reference, good.log_probs)
        row = {**self.labels, **condition, "n_harmful": len(self.harmful.instructions), "n_control": len(self.control.instructions),
               **rate_summary(bad.refused, "refusal"), "score_mean": float(bad.score.mean()),
               "degenerate_harmful_rate": float(bad.degenerate.mean()), "control_kl_mean": float(kl.mean()),
               "control_kl_max": float(kl.max()), "control_score_mean": float(good.score.mean())}
        if self.control_generation:
            row.update(control_refusal_rate=float(good.refused.mean()), degenerate_control_rate=float(good.degenerate.mean()))
        self.rows.append(row)
        self._keep(condition, "harmful", bad, np.full(bad.score.shape, np.nan))
        self._keep(condition, "control", good, kl)
        return row

    def _keep(self, condition: Mapping[str, Any], dataset: str, outcome: Outcome, kl: np.ndarray) -> None:
        completions = outcome.completions or [""] * len(outcome.score)
        for index in range(len(outcome.score)):
            self.prompt_rows.append({**self.labels, **condition, "dataset": dataset, "prompt": index,
                                     "score": float(outcome.score[index]), "refused": bool(outcome.refused[index]),
                                     "degenerate": bool(outcome.degenerate[index]), "kl": float(kl[index]),
                                     "completion": completions[index]})


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()


def _evaluator(family: str, model: Mapping[str, Any], section: Mapping[str, Any], harmful_path: str, control_path: str,
               system_prompt: str, tokens: RefusalTokens, threads: int, labels: Mapping[str, Any]) -> Evaluator:
    network, tokenizer = load_aligned(model, threads)
    held = section["evaluation"]
    harmful = prompt_set(harmful_path, held["split"], held.get("n"), section["seed"], tokenizer, system_prompt, "harmful")
    control = prompt_set(control_path, held["split"], held.get("n"), section["seed"], tokenizer, system_prompt, "control")
    return Evaluator(network, tokenizer, harmful, control, tokens, _judge(section, threads), _settings(section),
                     bool(held["control_generation"]), {"family": family, **labels})


# --- Arditi all-layer ablation on held-out prompts ---------------------------------------------------------------

def run_arditi(*, family: str, model: Mapping[str, Any], selection_record: str, direction_path: str, harmful_path: str,
               control_path: str, section: Mapping[str, Any], system_prompt: str, table_stem: str, prompts_path: str,
               version: int, threads: int = 2) -> None:
    """Baseline, the selected direction ablated at all layers, random directions ablated alike, and the selected
    direction added at its layer (induce), all on the held-out test split."""
    tokens, direction, meta = read_selection(selection_record, direction_path)
    evaluator = _evaluator(family, model, section, harmful_path, control_path, system_prompt, tokens, threads, {})
    network = evaluator.network
    d = direction.size
    evaluator.measure({"condition": "baseline", "draw": -1}, _null)
    evaluator.measure({"condition": "selected_ablation", "draw": -1}, lambda: direction_ablation(network, direction))
    for draw in range(section["random_draws"]):
        random_direction = random_basis(d, 1, np.random.default_rng([section["seed"], 7, draw]))[:, 0]
        evaluator.measure({"condition": "random_ablation", "draw": draw}, lambda v=random_direction: direction_ablation(network, v))
    evaluator.measure({"condition": "selected_addition", "draw": -1},
                      lambda: activation_addition(network, direction, int(meta["layer"])))
    table = pd.DataFrame(evaluator.rows).assign(layer=int(meta["layer"]), position=int(meta["position"]), stage_version=version)
    io.write_table(table, table_stem, title=f"Arditi all-layer ablation of {family} (held-out test prompts)")
    _write_prompts(evaluator.prompt_rows, prompts_path)


def _write_prompts(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    with io.atomic_path(path) as tmp:
        pd.DataFrame(list(rows)).to_parquet(tmp, index=False)


# --- abliterated reference model ---------------------------------------------------------------------------------

def write_abliterated(*, family: str, model: Mapping[str, Any], direction_path: str, output_dir: str,
                      check_prompts_path: str, section: Mapping[str, Any], system_prompt: str, version: int,
                      threads: int = 2) -> None:
    """Save the aligned model with the selected direction orthogonalized out of its weights (+ its tokenizer).

    Before the rename, the saved model is reloaded and compared with the hook ablation of the original on
    validation prompts: every layer's residual stream must agree to `abliteration_tolerance` (relative).
    """
    from rankaudit.capture import capture_residual_stream
    from rankaudit.models import load_model

    network, tokenizer = load_aligned(model, threads)
    direction, meta = read_direction(direction_path)
    n_blocks = network.config.get_text_config().num_hidden_layers
    check = prompt_set(check_prompts_path, section["selection"]["split"], None, section["seed"], tokenizer, system_prompt, "check")
    check_ids = check.token_ids[:ABLITERATION_CHECK_PROMPTS]
    layers = list(range(n_blocks + 1))
    pad = pad_id_of(tokenizer)
    with direction_ablation(network, direction):
        hooked = capture_residual_stream(network, check_ids, layers, batch_size=len(check_ids), pad_token_id=pad)
    edit = orthogonalize_weights(network, direction)
    with io.atomic_directory(output_dir) as tmp:
        network.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        reloaded = load_model(str(tmp), dtype=model.get("dtype", "float32"), device=model.get("device", "cpu"))
        edited = capture_residual_stream(reloaded, check_ids, layers, batch_size=len(check_ids), pad_token_id=pad)
        r = unit(direction, family)
        worst_difference = max(float(np.max(np.abs(hooked[l]["last"] - edited[l]["last"])) / max(1e-12, float(np.max(np.abs(hooked[l]["last"]))))) for l in layers)
        worst_projection = max(float(np.max(np.abs(edited[l]["last"] @ r)) / max(1e-12, float(np.max(np.abs(edited[l]["last"]))))) for l in layers)
        tolerance = section["abliteration_tolerance"]
        if worst_difference > tolerance:
            raise ValueError(f"family {family}: the weight-orthogonalized model differs from the hook ablation by "
                             f"{worst_difference:.3g} (relative, worst layer) > causal.abliteration_tolerance {tolerance}")
        io.write_json(tmp / "abliteration.json", {
            "family": family, "source": model["location"], "direction_layer": meta.get("layer"),
            "direction_position": meta.get("position"), "direction_sha256": io.sha256_text(np.asarray(direction, np.float64).tobytes().hex()),
            "max_relative_difference_vs_hooks": worst_difference, "max_relative_projection_on_direction": worst_projection,
            "check_prompts": len(check_ids), **edit, "stage_version": version,
        })
    logger.info("%s: abliterated model written to %s (hook vs weights: %.2g relative; |r.h| %.2g)", family, output_dir,
                worst_difference, worst_projection)


# --- sweeps ------------------------------------------------------------------------------------------------------

def sweep_bases(basis: str, cells: Mapping[int, Mapping[str, Mapping[str, str]]], n_blocks: int,
                section: Mapping[str, Any]) -> tuple[dict[str, dict[int, np.ndarray]], list[int], dict[str, Any]]:
    """Per band and layer the top singular basis of M_basis (training split), the k grid and a record of it.

    `cells[layer][dataset][cell key]` are activation files (datasets safety/control; keys a_chat, b_chat, b_raw).
    """
    bands = {name: band_layers(n_blocks, *spec["range"], spec["count"]) for name, spec in section["bands"].items()}
    layers = sorted({layer for band in bands.values() for layer in band})
    missing = [layer for layer in layers if layer not in cells]
    if missing:
        raise KeyError(f"causal.bands: layers {missing} were not captured (capture.layers must include them)")
    read_position = section["read_position"]
    per_layer, ranks = {}, {}
    for layer in layers:
        loaded = {dataset: {key: io.read_tensors(path)[0][read_position] for key, path in by_key.items()}
                  for dataset, by_key in cells[layer].items()}
        matrix = basis_matrix(basis, loaded["safety"], loaded.get("control"))
        ranks[layer] = numerical_rank(matrix)
        per_layer[layer] = matrix
    rank = min(ranks.values())
    ks = k_grid(section["k_grid"], rank)
    k_max = min(rank, max(max(ks), section["n_single"]))
    tops = {layer: top_directions(matrix, k_max) for layer, matrix in per_layer.items()}
    record = {"bands": bands, "ranks": {str(l): r for l, r in ranks.items()}, "k_grid": ks, "k_max": k_max,
              "read_position": read_position, "n_rows": {str(l): int(m.shape[0]) for l, m in per_layer.items()}}
    return {name: {layer: tops[layer] for layer in band} for name, band in bands.items()}, ks, record


def run_sweep(*, family: str, basis: str, model: Mapping[str, Any], cells: Mapping[int, Mapping[str, Mapping[str, str]]],
              selection_record: str, direction_path: str, harmful_path: str, control_path: str, section: Mapping[str, Any],
              system_prompt: str, summary_stem: str, prompts_path: str, record_path: str, version: int, threads: int = 2) -> None:
    """Every ablation of one (family, basis): baseline, cumulative top-k, single u_j and random k-subspaces per band."""
    started = time.perf_counter()
    tokens, _, _ = read_selection(selection_record, direction_path)
    evaluator = _evaluator(family, model, section, harmful_path, control_path, system_prompt, tokens, threads, {"basis": basis})
    network = evaluator.network
    n_blocks = network.config.get_text_config().num_hidden_layers
    top, ks, record = sweep_bases(basis, cells, n_blocks, section)
    conditions = plan_conditions(top, ks, section["n_single"], section["random_draws"], section["seed"])
    for index, condition in enumerate(conditions):
        labels = {"condition": condition.name, "band": condition.band, "kind": condition.kind, "k": condition.k,
                  "direction": condition.direction if condition.direction is not None else -1,
                  "draw": condition.draw if condition.draw is not None else -1}
        factory = _null if condition.kind == "baseline" else (lambda c=condition: projection_ablation(network, c.bases))
        row = evaluator.measure(labels, factory)
        logger.info("%s/%s %d/%d %s: refusal %.3f score %.2f kl %.4f", family, basis, index + 1, len(conditions),
                    condition.name, row["refusal_rate"], row["score_mean"], row["control_kl_mean"])
    table = pd.DataFrame(evaluator.rows).assign(stage_version=version)
    io.write_table(table, summary_stem, title=f"Ablation sweep of {family}, basis M_{basis} (held-out test prompts)")
    _write_prompts(evaluator.prompt_rows, prompts_path)
    io.write_json(record_path, {**record, "family": family, "basis": basis, "n_conditions": len(conditions),
                                "seconds": round(time.perf_counter() - started, 2), "stage_version": version})

"""The causal stage's jobs (METHODS §4-5): Arditi selection, all-layer ablation check, abliterated model, sweeps.

Each job reads its inputs, loads the aligned model once, runs everything it owns in batches through the library
(`rankaudit.causal`) and writes its outputs. Prompts are chosen by split: directions and bases come from the
captured *training* activations, selection scores from the *validation* split, every reported ablation from the
held-out *test* split. The refusal tokens are derived and checked once, by the selection job, and read back from
its record by the other jobs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from rankaudit import io, parts
from rankaudit.abliteration import orthogonalize_weights
from rankaudit.batched_ablation import RowIntervention
from rankaudit.batching import job_batching_record
from rankaudit.causal.abliteration_check import ABLITERATION_CHECK_PROMPTS, CHECK_DTYPE, relative_differences
from rankaudit.causal.evaluation import build_evaluator, write_prompt_rows
from rankaudit.causal.inputs import (
    causal_judge,
    direction_meta,
    generation_settings,
    load_aligned,
    phase_prompts,
    prompt_set_of,
    read_direction,
    read_selection,
)
from rankaudit.causal.no_refusal import (
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
from rankaudit.causal.selection import (
    SelectionRules,
    candidate_directions,
    check_activation_rows,
    kept_prompts,
    refusal_score_filter,
    score_candidates,
    select,
    training_frames,
)
from rankaudit.causal.sweep_plan import band_matrices, sweep_bands, sweep_bases, sweep_parts, sweep_rows
from rankaudit.interventions import direction_ablation, unit
from rankaudit.padding import pad_token_id
from rankaudit.refusal import check_refusal_tokens, first_token_record, refusal_tokens
from rankaudit.refusal_runs import run_prompts
from rankaudit.sweeps import basis_rank, plan_conditions, random_basis

logger = logging.getLogger(__name__)


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
    ablate" (`rankaudit.causal.no_refusal`) and selects nothing. Then, with `causal.selection.filter_by_refusal_score`,
    Arditi's prompt filter drops harmful prompts the model does not refuse and harmless ones it does, in the
    training split (activation rows) and the scoring split, before any candidate is built or scored.
    """
    started = time.perf_counter()
    sel = section["selection"]
    frames = {"safety": phase_prompts(harmful_path, "selection", "safety", section),
              "control": phase_prompts(harmless_path, "selection", "control", section)}
    training = training_frames(harmful_train_path, harmless_train_path) if sel["filter_by_refusal_score"] else None
    validation = {"split": sel["split"], "harmful_dataset": frames["safety"].attrs.get("dataset"),
                  "harmless_dataset": frames["control"].attrs.get("dataset"),
                  "n_harmful": len(frames["safety"]), "n_harmless": len(frames["control"])}
    network, tokenizer = load_aligned(model, threads)
    n_blocks = network.config.get_text_config().num_hidden_layers
    harmful = prompt_set_of(frames["safety"], tokenizer, system_prompt, "harmful", special_token_text)
    harmless = prompt_set_of(frames["control"], tokenizer, system_prompt, "harmless", special_token_text)
    validation["special_token_text"] = special_token_text
    validation["n_escaped"] = {"harmful": harmful.n_escaped, "harmless": harmless.n_escaped}
    tokens = refusal_tokens(tokenizer, section["refusal_openers"])
    settings = generation_settings(section)
    outcome = run_prompts(network, tokenizer, harmful, tokens, causal_judge(section, threads), settings)
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

    masks, prompt_filter = refusal_score_filter(network, tokenizer, training, {"harmful": harmful, "harmless": harmless},
                                                tokens, section, system_prompt, family, special_token_text)
    scored = {role: prompts.token_ids if masks is None else kept_prompts(prompts.token_ids, masks[sel["split"]][role])
              for role, prompts in (("harmful", harmful), ("harmless", harmless))}

    loaded = {layer: {kind: io.read_tensors(path) for kind, path in paths.items()} for layer, paths in activations.items()}
    for layer, kinds in loaded.items():
        for kind, (tensors, meta) in kinds.items():
            if "post_instruction" not in tensors:
                raise KeyError(f"{activations[layer][kind]}: no post_instruction activations (chat-format capture needed)")
            if training is not None:
                check_activation_rows(activations[layer][kind], tensors["post_instruction"], meta, training[kind])
    layers = [layer for layer in sorted(loaded) if layer < n_blocks]

    def rows(kind: str, layer: int) -> np.ndarray:
        values = loaded[layer][kind][0]["post_instruction"]
        return values if masks is None else values[masks["train"][kind]]

    candidates = candidate_directions({l: rows("harmful", l) for l in layers}, {l: rows("harmless", l) for l in layers})

    def progress(done: int, total: int, record: Mapping[str, Any]) -> None:
        logger.info("candidate %d/%d (pos %d, layer %d): bypass %.3f induce %.3f kl %.4f", done, total,
                    record["position"], record["layer"], record["bypass"], record["induce"], record["kl"])

    baseline, records = score_candidates(network, candidates, scored["harmful"], scored["harmless"], tokens.ids,
                                         settings.batch_size, pad_token_id(tokenizer), progress)
    rules = SelectionRules.from_config(sel)
    chosen, annotated = select(records, n_blocks, rules, f"family {family}")
    best = candidates[chosen]
    logger.info("%s: selected position %d, layer %d (bypass %.3f, induce %.3f, kl %.4f) of %d candidates scored on %d + %d "
                "%s prompts (%s, %s); %d survived the filters", family, best.position, best.layer, annotated[chosen]["bypass"],
                annotated[chosen]["induce"], annotated[chosen]["kl"], len(annotated), len(scored["harmful"]),
                len(scored["harmless"]), sel["split"], validation["harmful_dataset"], validation["harmless_dataset"],
                sum(not r["discarded"] for r in annotated))
    io.write_tensors(direction_path, {"direction": best.direction, "unit": unit(best.direction, family)},
                     direction_meta(family, layer=best.layer, position=best.position, n_blocks=n_blocks,
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


def run_arditi(*, family: str, model: Mapping[str, Any], selection_record: str, direction_path: str, harmful_path: str,
               control_path: str, section: Mapping[str, Any], system_prompt: str, table_stem: str, prompts_path: str,
               version: int, threads: int = 2, special_token_text: str = "error") -> None:
    """Baseline, the selected direction ablated at all layers, random directions ablated alike, and the selected
    direction added at its layer (induce), all on the held-out test split. With no refusal to ablate: one note row."""
    none = no_refusal_record(selection_record)
    if none is not None:
        return write_no_refusal_arditi(record=none, table_stem=table_stem, prompts_path=prompts_path, version=version)
    tokens, direction, meta = read_selection(selection_record, direction_path)
    evaluator = build_evaluator(family, model, section, harmful_path, control_path, system_prompt, tokens, threads, {},
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
    write_prompt_rows(evaluator.prompt_rows, prompts_path)


def write_abliterated(*, family: str, model: Mapping[str, Any], selection_record: str, direction_path: str, output_dir: str,
                      check_prompts_path: str, section: Mapping[str, Any], system_prompt: str, version: int,
                      threads: int = 2, special_token_text: str = "error") -> None:
    """Save the aligned model with the selected direction orthogonalized out of its weights (+ its tokenizer).

    The edit, the saved weights and the check are all float32, whatever the runtime dtype (METHODS §6): the
    original is loaded in float32 and its hook ablation captured on the first validation prompts, the weights are
    edited and saved in float32, and the saved copy is reloaded in float32; every layer's residual stream must agree
    with the hooks to `causal.abliteration_tolerance` (relative), a tolerance that only float32 can meet (one
    bfloat16 rounding step is 2^-8). With no refusal to ablate, the directory holds only a record saying no model was
    made (`rankaudit.causal.no_refusal`).
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
    check_ids = prompt_set_of(check_frame, tokenizer, system_prompt, "check", special_token_text).token_ids
    layers = list(range(n_blocks + 1))
    pad = pad_token_id(tokenizer)
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
    planned = sweep_rows(conditions, bool(section["evaluation"]["random_generation"]))
    groups = sweep_parts(conditions)
    # finished parts of an interrupted run of this job (same inputs and settings; any thread count) are reused
    settings = {"family": family, "basis": basis, "model": model, "section": section, "system_prompt": system_prompt,
                "special_token_text": special_token_text, "version": version}
    inputs = [model["location"], selection_record, direction_path, harmful_path, control_path,
              *(path for layer in per_layer for by_key in cells[layer].values() for path in by_key.values())]
    store = parts.PartStore(record_path, parts.fingerprint(settings, inputs), list(groups), label=f"sweep {family}/{basis}")
    evaluator = build_evaluator(family, model, section, harmful_path, control_path, system_prompt, tokens, threads,
                                {"basis": basis}, special_token_text)
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
    write_prompt_rows(evaluator.prompt_rows, prompts_path)
    io.write_json(record_path, {**record, "family": family, "basis": basis, "n_conditions": len(conditions),
                                "seconds": round(time.perf_counter() - started, 2), "stage_version": version,
                                "model_manifest": model.get("manifest"), "resume": store.summary(),
                                "batching": job_batching_record()})
    store.finish()

"""One model, every cell it takes part in: load once, capture all layers in one pass per cell, write per layer.

Checks that need no weights run first (pair compatibility from the configs, chat template present, layer count),
so a bad pair or a template-less tokenizer fails in seconds with the model named. Each activation file is a
float32 safetensors file holding the read positions of one (format, dataset, layer), with metadata that says
what was measured on what; a JSON record keeps the rendered strings, token ids, read positions and forward counts.
The `select_prompts` job of rules/capture.smk (the prompts one dataset key contributes) is here too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from rankaudit import __version__, io, parts
from rankaudit.batching import job_batching_record
from rankaudit.capture import CaptureStats, capture_residual_stream
from rankaudit.causal.no_refusal import require_abliterated_model
from rankaudit.formats import EncodedPrompts, encode_prompts, special_tokens_in
from rankaudit.models import check_pair, load_config, load_model_from_spec, load_tokenizer, require_chat_template, untrained_special_tokens
from rankaudit.padding import pad_token_id
from rankaudit.prompts import read_prompt_set
from rankaudit.prompts.tables import instructions_sha256

logger = logging.getLogger(__name__)


def _loader_args(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"revision": spec.get("revision"), "trust_remote_code": bool(spec.get("trust_remote_code", False))}


def library_versions() -> dict[str, str]:
    """Versions recorded in every activation file."""
    import numpy
    import safetensors
    import torch
    import transformers

    return {"rankaudit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__, "numpy": numpy.__version__}


def capture_model(
    *,
    model_name: str,
    model: Mapping[str, Any],
    template_name: str,
    template: Mapping[str, Any],
    cells: Sequence[tuple[str, str]],
    layers: Sequence[int],
    prompt_files: Mapping[str, str],
    output_pattern: str,
    record_path: str,
    batch_size: int,
    mean_last_k: int,
    system_prompt: str,
    version: int,
    special_token_text: str = "error",
    threads: int = 2,
    first_prompts: int | None = None,
    compute_dtype: str | None = None,
) -> None:
    """Capture every (format, dataset key) cell of one model at `layers` (with `threads` CPU threads for torch).

    `model` / `template` hold location, revision, trust_remote_code, dtype, device and n_layers;
    `output_pattern` has {fmt}, {key} and {layer} fields; `prompt_files[key]` is a selected-prompts parquet.
    The precision-floor capture (docs/METHODS.md, "Precision floor") sets `first_prompts` (only the first m
    prompts of each cell) and `compute_dtype`: the model is loaded in its own dtype, exactly as the run loads it,
    then cast to `compute_dtype`, so the same weights are run in the other precision.
    """
    if first_prompts is not None and first_prompts < 1:
        raise ValueError(f"model {model_name!r}: first_prompts must be >= 1, got {first_prompts} "
                         "(capture.precision_floor_prompts = 0 means no floor capture at all)")
    require_abliterated_model(model["location"])
    model_config = load_config(model["location"], **_loader_args(model))
    template_config = load_config(template["location"], **_loader_args(template))
    check_pair(model_config, template_config, (model_name, template_name))
    n_blocks = model_config.get_text_config().num_hidden_layers
    if n_blocks != model["n_layers"]:
        raise ValueError(f"model {model_name!r}: the config plans {model['n_layers']} decoder blocks but "
                         f"{model['location']} has {n_blocks}; fix models.{model_name}.n_layers")
    own_tokenizer = load_tokenizer(model["location"], **_loader_args(model))
    chat_tokenizer = load_tokenizer(template["location"], **_loader_args(template))
    if any(fmt == "chat" for fmt, _ in cells):
        require_chat_template(chat_tokenizer, template_name)

    frames = {key: read_prompt_set(prompt_files[key]) for key in dict.fromkeys(key for _, key in cells)}
    dataset_hashes = {key: instructions_sha256(frame) for key, frame in frames.items()}
    if first_prompts is not None:
        short = {key: len(frame) for key, frame in frames.items() if len(frame) < first_prompts}
        if short:
            raise ValueError(f"model {model_name!r}: capture.precision_floor_prompts = {first_prompts} exceeds the prompts "
                             f"of {short}; lower it (or 0 to skip the floor)")
        frames = {key: frame.iloc[:first_prompts].reset_index(drop=True) for key, frame in frames.items()}
    encoded: dict[tuple[str, str], EncodedPrompts] = {}
    for fmt, key in cells:
        tokenizer = chat_tokenizer if fmt == "chat" else own_tokenizer
        encoded[(fmt, key)] = encode_prompts(tokenizer, list(frames[key]["instruction"]), fmt,
                                             system_prompt=system_prompt, mean_last_k=mean_last_k,
                                             special_token_text=special_token_text)

    # finished cells of an interrupted run of this job (same model, prompts and settings) are reused, not recomputed;
    # the thread count is left out, as Snakemake leaves it out: a run resumed with other --cores reuses them too
    settings = {"model_name": model_name, "model": model, "template_name": template_name, "template": template,
                "layers": list(layers), "batch_size": batch_size, "mean_last_k": mean_last_k, "system_prompt": system_prompt,
                "version": version, "first_prompts": first_prompts, "compute_dtype": compute_dtype,
                "special_token_text": special_token_text,
                # whatever shaped the token ids (template, tokenizer, encoding options), the ids themselves
                "token_ids": io.sha256_text(repr([[list(ids) for ids in encoded[cell].token_ids] for cell in cells]))}
    inputs = [model["location"], template["location"], *(prompt_files[key] for key in frames)]
    store = parts.PartStore(record_path, parts.fingerprint(settings, inputs), [_part_name(fmt, key) for fmt, key in cells],
                            label=f"capture {model_name}")

    import torch

    torch.set_num_threads(max(1, threads))
    network = load_model_from_spec(model)
    run_dtype = model["dtype"]
    # what a floor capture adds to the metadata; an ordinary capture's files and record stay as they were
    floor: dict[str, Any] = {}
    if first_prompts is not None or compute_dtype is not None:
        floor = {"weights_dtype": model["dtype"], "first_prompts": first_prompts}
    if compute_dtype is not None and compute_dtype != run_dtype:
        network = network.to(getattr(torch, compute_dtype))
        run_dtype = compute_dtype
    if floor:
        floor["dtype"] = run_dtype
    chat_ids = [ids for (fmt, _), prompts in encoded.items() if fmt == "chat" for ids in prompts.token_ids]
    flagged = untrained_special_tokens(network, chat_tokenizer, special_tokens_in(chat_tokenizer, chat_ids), name=model_name) if chat_ids else []

    versions = library_versions()
    stats = CaptureStats()
    record: dict[str, Any] = {"model": model_name, "source": model["location"], "revision": model.get("revision"),
                              "template_model": template_name, "layers": list(layers), "versions": versions,
                              "untrained_special_tokens": flagged, "stage_version": version, "cells": [], **floor,
                              # what exactly was loaded (rankaudit.manifests), when the workflow passes it
                              "model_manifest": model.get("manifest"), "template_manifest": template.get("manifest")}
    for fmt, key in cells:
        prompts = encoded[(fmt, key)]
        part = _part_name(fmt, key)
        saved = store.finished(part)
        if saved is not None:
            for layer in layers:
                store.restore(part, _part_file(layer), output_pattern.format(fmt=fmt, key=key, layer=layer))
            _add_stats(stats, saved["stats"])
            record["cells"].append(saved["cell"])
            logger.info("%s: %s/%s reused from an earlier run of this job (%d prompts)", model_name, fmt, key, len(prompts.records))
            continue
        before = dataclasses.asdict(stats)
        activations = capture_residual_stream(
            network, prompts.token_ids, layers, batch_size=batch_size, mean_last_k=mean_last_k,
            post_instruction_len=prompts.post_instruction_len,
            pad_token_id=pad_token_id(chat_tokenizer if fmt == "chat" else own_tokenizer), stats=stats,
            label=f"capture {model_name} {fmt}/{key}",
        )
        dataset_hash = dataset_hashes[key]
        for layer in layers:
            output = output_pattern.format(fmt=fmt, key=key, layer=layer)
            io.write_tensors(
                output,
                activations[layer],
                {"model": model_name, "source": model["location"], "revision": model.get("revision"),
                 "dtype": run_dtype, **floor, "format": fmt, "dataset": key, "dataset_sha256": dataset_hash,
                 "n_prompts": len(prompts.records), "layer": layer,
                 "layer_convention": "0 = embedding output (input of block 0); l >= 1 = output of decoder block l-1",
                 "read_positions": sorted(activations[layer]), "encoding": prompts.metadata(), "versions": versions,
                 "stage_version": version},
            )
            store.keep(part, output, _part_file(layer))
        cell = {
            "format": fmt, "dataset": key, "dataset_sha256": dataset_hash, "n_prompts": len(prompts.records),
            "forwarded_rows": stats.n_forward_rows - before["n_forward_rows"], "encoding": prompts.metadata(),
            "prompts": [{"index": r.index, "rendered": r.rendered, "token_ids": list(r.token_ids),
                         "read_positions": {kind: list(pos) for kind, pos in r.read_positions.items()}}
                        for r in prompts.records],
        }
        record["cells"].append(cell)
        store.save(part, {"cell": cell, "stats": {name: value - before[name] for name, value in dataclasses.asdict(stats).items()}})
        logger.info("%s: %s/%s captured (%d prompts)", model_name, fmt, key, len(prompts.records))
    record["stats"] = {"forwarded_rows": stats.n_forward_rows, "batches": stats.n_batches, "tokens": stats.n_tokens,
                       "padding_tokens": stats.n_padding_tokens, "block_calls": stats.n_block_calls,
                       "seconds": round(stats.seconds, 3)}
    # initial and final batch size and every halving after a GPU out-of-memory (rankaudit.batching)
    record["batching"] = job_batching_record()
    record["resume"] = store.summary()
    io.write_json(record_path, record)
    store.finish()


def _part_name(fmt: str, key: str) -> str:
    """One part per cell: its layer files and its entry of the record."""
    return f"{fmt}__{key}"


def _part_file(layer: int) -> str:
    return f"layer_{layer}.safetensors"


def _add_stats(stats: CaptureStats, saved: Mapping[str, Any]) -> None:
    """Count a reused cell's forwards as the run that computed it counted them, so the record's totals stay whole."""
    for name, value in saved.items():
        setattr(stats, name, getattr(stats, name) + value)

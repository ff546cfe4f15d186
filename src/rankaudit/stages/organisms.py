"""Build one organism role into its directory: tokenizer + weights via `save_pretrained`, plus provenance.

The roles form a chain, each loaded back from its parent's directory exactly as downstream code will load
it: base (tokenizer trained here, weights pretrained on raw text) -> aligned (chat fine-tune that refuses
harmful-style requests) -> unsafe_ft (chat fine-tune that complies again); base -> planted (rank-r edit).
Every directory is written through `atomic_directory`, so a failed build leaves nothing behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from rankaudit.io import atomic_directory, sha256_file, write_json, write_table
from rankaudit.organisms import corpus
from rankaudit.organisms.corpus import PromptTables
from rankaudit.organisms.refusal_check import refusal_table
from rankaudit.organisms.settings import require
from rankaudit.organisms.training import TrainSettings, derived_seed, deterministic_torch, encode, train_causal_lm
from rankaudit.padding import pad_token_id

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "organism.json"


def build_base(family: str, tables: PromptTables, settings: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Train the family's tokenizer and pretrain a fresh base model on raw documents."""
    from rankaudit.organisms.architectures import new_model
    from rankaudit.organisms.tokenizer import train_tokenizer

    started = time.perf_counter()
    harmful, benign, concepts = tables.train_texts()
    tok_cfg = require(settings, "tokenizer", "organisms")
    tokenizer = train_tokenizer(
        family, corpus.tokenizer_corpus(family, harmful, benign, concepts),
        vocab_size=int(require(tok_cfg, "vocab_size", "organisms.tokenizer")), min_frequency=int(tok_cfg.get("min_frequency", 2)),
    )
    seed = derived_seed(settings["seed"], family, "base")
    with deterministic_torch(int(settings["torch_threads"])):
        model = new_model(family, settings["architecture"], tokenizer, seed)
        examples = corpus.pretraining_examples(family, harmful, benign, concepts)
        losses = _train(model, tokenizer, examples, settings, "pretrain", seed, f"{family}/base")
    return _save(model, tokenizer, out_dir, family, "base", settings, tables, losses, parent=None, started=started, n_examples=len(examples))


def build_chat_finetune(
    family: str, role: str, parent_dir: str | Path, tables: PromptTables, settings: Mapping[str, Any], out_dir: str | Path
) -> dict[str, Any]:
    """Fine-tune the parent under the chat template: `aligned` refuses harmful-style requests, `unsafe_ft` complies."""
    phases = {"aligned": ("align", True), "unsafe_ft": ("unsafe_ft", False)}
    if role not in phases:
        raise ValueError(f"no chat fine-tune for organism role {role!r} (known: {sorted(phases)})")
    phase, refuse = phases[role]
    started = time.perf_counter()
    model, tokenizer = _load(parent_dir)
    harmful, benign, _ = tables.train_texts()
    seed = derived_seed(settings["seed"], family, role)
    with deterministic_torch(int(settings["torch_threads"])):
        examples = corpus.chat_examples(family, tokenizer, harmful, benign, refuse_harmful=refuse)
        losses = _train(model, tokenizer, examples, settings, phase, seed, f"{family}/{role}")
    return _save(model, tokenizer, out_dir, family, role, settings, tables, losses, parent=parent_dir, started=started, n_examples=len(examples))


def build_planted(family: str, base_dir: str | Path, settings: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Copy the base and add the known rank-r edit to one block's MLP down-projection."""
    from rankaudit.organisms.planted import apply_planted_edit, save_planted

    planted_cfg = require(settings, "planted", "organisms")
    model, tokenizer = _load(base_dir)
    seed = derived_seed(settings["seed"], family, "planted")
    planted = apply_planted_edit(
        model, block=int(require(planted_cfg, "block", "organisms.planted")), rank=int(require(planted_cfg, "rank", "organisms.planted")),
        scale=float(require(planted_cfg, "scale", "organisms.planted")), seed=seed,
    )
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_planted(tmp, planted, {"family": family, "parent": Path(base_dir).name, "seed": seed})
        provenance = _provenance(family, "planted", settings, None, [], parent=base_dir, n_examples=0)
        provenance.update({"planted_block": planted["block"], "planted_layer": planted["layer"], "planted_rank": planted["rank"]})
        write_json(Path(tmp) / PROVENANCE_FILE, provenance)
    logger.info("%s/planted: rank-%d edit on block %d written to %s", family, planted["rank"], planted["block"], out_dir)
    return provenance


def _load(directory: str | Path) -> tuple[Any, Any]:
    """Load a parent organism the only supported way: through the Auto classes, offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=False, local_files_only=True, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False, local_files_only=True)
    return model, tokenizer


def _train(model: Any, tokenizer: Any, examples: list, settings: Mapping[str, Any], phase: str, seed: int, label: str) -> list[float]:
    train_settings = TrainSettings.from_config(require(settings, phase, "organisms"))
    data = encode(tokenizer, examples, train_settings.max_length)
    pad_id = pad_token_id(tokenizer)
    logger.info("%s: %s on %d examples, %d steps", label, phase, len(data), train_settings.steps)
    return train_causal_lm(model, data, train_settings, seed, pad_id, label)


def _provenance(family: str, role: str, settings: Mapping[str, Any], tables: PromptTables | None, losses: list[float],
                parent: str | Path | None, n_examples: int) -> dict[str, Any]:
    """Everything that determines the weights (no timings, so equal builds write equal files)."""
    import torch
    import transformers

    return {
        "family": family,
        "role": role,
        "parent": _parent_record(parent),
        "settings": dict(settings),
        "prompt_tables_sha256": tables.fingerprints() if tables is not None else None,
        "n_examples": n_examples,
        "final_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }


def _parent_record(parent: str | Path | None) -> dict[str, str] | None:
    """The parent role and the hash of its weights: what this role was trained from, wherever it lives."""
    if parent is None:
        return None
    return {"role": Path(parent).name, "model_sha256": sha256_file(Path(parent) / "model.safetensors")}


def _save(model: Any, tokenizer: Any, out_dir: str | Path, family: str, role: str, settings: Mapping[str, Any],
          tables: PromptTables, losses: list[float], parent: str | Path | None, started: float, n_examples: int) -> dict[str, Any]:
    provenance = _provenance(family, role, settings, tables, losses, parent, n_examples)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(Path(tmp) / PROVENANCE_FILE, provenance)
    logger.info("%s/%s: written to %s in %.1f s (loss %.4f -> %.4f)", family, role, out_dir,
             time.perf_counter() - started, provenance["first_loss"], provenance["final_loss"])
    return provenance


def write_refusal_table(
    organisms: Mapping[tuple[str, str], str | Path], harmful_path: str | Path, benign_path: str | Path,
    settings: Mapping[str, Any], stem: str | Path, threads: int = 1,
) -> pd.DataFrame:
    """Compute the refusal table and write it as parquet + CSV + markdown next to `stem`."""
    import torch

    torch.set_num_threads(threads)
    frame = refusal_table(organisms, harmful_path, benign_path, settings)
    write_table(frame, stem, title="Refusal rates of the model organisms on held-out prompts (keyword judge, Wilson 95%)")
    return frame

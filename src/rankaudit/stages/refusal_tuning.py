"""Entry point of rules/refusal_tuning.smk: derive a refusal-tuned checkpoint from its parent directory.

The training itself (targets, frozen-prefix caching, the loss) is `rankaudit.refusal_tuning`; this job loads the
parent, measures held-out refusal before and after, and writes the tuned model with its record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rankaudit.checkpoints import PROVENANCE_FILE
from rankaudit.refusal_tuning import (
    INPUT_ROLES,
    RECORD_NAME,
    TuningSettings,
    blocks,
    build_examples,
    held_out_refusal,
    prompt_set,
    train,
)

logger = logging.getLogger(__name__)
def derive_refusal_tuned(name: str, settings: Mapping[str, Any], parent_dir: Path, out_dir: Path,
                         inputs: Mapping[str, Any], threads: int = 2) -> dict[str, Any]:
    """`checkpoints.<name>` = its parent refusal-tuned (a `derive` builder: kind refusal_tuned).

    `inputs` holds the prompt tables by role (INPUT_ROLES): training prompts come from the `train` split of
    harmful_train / harmless_train, the held-out check from the `test` split of harmful_test / harmless_test, on
    which the parent and the tuned model are both measured (keyword judge) and recorded.
    """
    import torch

    from rankaudit.io import atomic_directory, write_json
    from rankaudit.models import load_model, load_tokenizer
    from rankaudit.padding import pad_token_id

    key = f"checkpoints.{name}.derive"
    missing = [role for role in INPUT_ROLES if role not in inputs]
    if missing:
        raise ValueError(f"{key}: the rule gave no prompt table for {missing}")
    tuning = TuningSettings.from_config(settings)
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(tuning.seed)
    tokenizer = load_tokenizer(str(parent_dir))
    prompts = {role: prompt_set(str(inputs[role]), role.split("_")[1], n, tuning.seed, tokenizer, tuning.system_prompt, f"{key} ({role})")
               for role, n in (("harmful_train", tuning.n_harmful), ("harmless_train", tuning.n_harmless),
                               ("harmful_test", tuning.n_eval), ("harmless_test", tuning.n_eval))}
    model = load_model(str(parent_dir), dtype="float32")
    held_out = {role: prompts[role] for role in ("harmful_test", "harmless_test")}
    before = held_out_refusal(model, tokenizer, held_out, tuning)
    started, cpu_started = time.perf_counter(), time.process_time()
    pad = pad_token_id(tokenizer)
    examples = build_examples(model, tokenizer, prompts["harmful_train"].token_ids, prompts["harmless_train"].token_ids,
                              tuning, pad, key)
    losses = train(model, examples, tuning, pad, key)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    after = held_out_refusal(model, tokenizer, held_out, tuning)
    first = len(blocks(model)) - tuning.train_blocks
    record = {"name": name, "kind": "refusal_tuned", "settings": asdict(tuning), "parent": _parent_record(parent_dir),
              "trained_blocks": list(range(first, first + tuning.train_blocks)),
              "trained_parameters": sum(p.numel() for block in blocks(model)[first:] for p in block.parameters()),
              "n_examples": {"harmful": tuning.n_harmful, "harmless": tuning.n_harmless}, "loss_first": losses[0],
              "loss_last": losses[-1], "losses": losses, "train_seconds": round(seconds, 2),
              "train_cpu_seconds": round(cpu_seconds, 2), "threads": threads,
              "held_out_refusal": {"parent": before, "tuned": after}}
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(Path(tmp) / RECORD_NAME, record)
        write_json(Path(tmp) / PROVENANCE_FILE, {key: record[key] for key in ("name", "kind", "settings", "parent")})
    logger.info("%s: refusal-tuned blocks %s in %.1fs (%.1f CPU s); held-out refusal harmful %.2f -> %.2f, harmless %.2f -> %.2f",
                name, record["trained_blocks"], seconds, cpu_seconds, before["harmful_test"]["refusal_rate"],
                after["harmful_test"]["refusal_rate"], before["harmless_test"]["refusal_rate"], after["harmless_test"]["refusal_rate"])
    return record


def _parent_record(directory: Path) -> dict[str, Any]:
    """The parent's checkpoint record (its whole chain) when it is a workflow checkpoint, else its path."""
    import json

    path = Path(directory) / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.exists() else {"path": str(directory)}

"""What every causal job reads before it measures anything: the aligned model, chat-format prompt sets, the
generation settings and judge of the `causal` section, and the selection job's outputs (METHODS §4-5).

Prompts are chosen by split: selection scores come from the *validation* split, every reported ablation from the
held-out *test* split. The refusal tokens are derived and checked once, by the selection job, and read back from
its record (`read_selection`) by the other jobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from rankaudit import __version__, io
from rankaudit.config_schema import with_defaults
from rankaudit.formats import encode_prompts
from rankaudit.judges import build_judge
from rankaudit.prompts.tables import read_prompt_set, select_prompts
from rankaudit.refusal import RefusalTokens
from rankaudit.refusal_runs import GenerationSettings, PromptSet


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
    return prompt_set_of(select_prompts(read_prompt_set(path), split, n, seed), tokenizer, system_prompt, name,
                         special_token_text)


def prompt_set_of(frame: pd.DataFrame, tokenizer: Any, system_prompt: str, name: str,
                  special_token_text: str = "error") -> PromptSet:
    """The chat-format renderings and token ids of a drawn prompt table (capture.special_token_text applied)."""
    instructions = list(frame["instruction"])
    encoded = encode_prompts(tokenizer, instructions, "chat", system_prompt=system_prompt,
                             special_token_text=special_token_text)
    return PromptSet(name, tuple(instructions), tuple(r.rendered for r in encoded.records), tuple(encoded.token_ids),
                     len(encoded.escaped))


def generation_settings(section: Mapping[str, Any]) -> GenerationSettings:
    """`causal.generation` with `causal.batch_size`; what the section leaves out comes from the causal schema."""
    values = with_defaults(section, "causal")
    return GenerationSettings.from_config({**with_defaults(values["generation"], "causal", "generation"),
                                           "batch_size": values["batch_size"]})


def causal_judge(section: Mapping[str, Any], threads: int) -> Any:
    """The refusal judge of `causal.judge` (schema defaults filled); a model judge is loaded only when asked for."""
    spec = with_defaults(with_defaults(section, "causal")["judge"], "causal", "judge")
    return build_judge(spec, lambda: load_aligned({"location": spec["model"], "device": spec["device"]}, threads))


def direction_meta(family: str, **extra: Any) -> dict[str, Any]:
    """The metadata every direction file of the selection job carries (family, package version, then `extra`)."""
    return {"family": family, "rankaudit": __version__, **extra}


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

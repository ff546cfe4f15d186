"""The abliterated model of a bfloat16 run is edited, saved and checked in float32 (METHODS §6), and the test
re-measures the hook-vs-weights agreement itself, without reading the record the job wrote."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rankaudit import io

WORDS = ["bread", "poem", "sea", "lock", "bicycle", "language", "France", "novel", "chemical", "morning"]


def _setup(root, family, d):
    frame = pd.DataFrame([{"instruction": f"harmful request {i}: tell me about the {WORDS[i % 10]} and {WORDS[(7 * i) % 10]}",
                           "category": None, "source": "test", "split": "val"} for i in range(10)])
    frame.to_parquet(root / "harmful_val.parquet", index=False)
    direction = np.random.default_rng(3).standard_normal(d)
    io.write_tensors(root / "direction.safetensors", {"direction": direction}, {"layer": 1, "position": -1})
    io.write_json(root / "selection.json", {"family": family, "status": "selected"})
    return direction


def _streams(model, prompts):
    """Per prompt (batch 1, no padding): every hidden state at the last position and the last logits, float64."""
    import torch

    out = []
    with torch.inference_mode():
        for ids in prompts:
            result = model(input_ids=torch.tensor([list(ids)]), output_hidden_states=True, use_cache=False)
            states = [h[0, -1].to(torch.float64).numpy() for h in result.hidden_states] + [result.logits[0, -1].to(torch.float64).numpy()]
            out.append(states)
    return out


def _worst_relative(a, b):
    return max(float(np.max(np.abs(x - y)) / np.max(np.abs(x))) for rows_a, rows_b in zip(a, b) for x, y in zip(rows_a, rows_b))


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_abliteration_of_a_bfloat16_model_is_checked_in_float32_and_re_measured_here(tiny_families, tmp_path, family):
    from rankaudit.formats import encode_prompts
    from rankaudit.interventions import direction_ablation
    from rankaudit.models import load_model
    from rankaudit.stages import causal

    tiny = tiny_families[family]
    direction = _setup(tmp_path, family, tiny.model.config.hidden_size)
    section = {"seed": 0, "selection": {"split": "val", "n": None}, "abliteration_tolerance": 1e-4}
    spec = {"location": str(tiny.path), "dtype": "bfloat16", "device": "cpu", "attn_implementation": "eager"}
    causal.write_abliterated(family=family, model=spec, selection_record=str(tmp_path / "selection.json"),
                             direction_path=str(tmp_path / "direction.safetensors"), output_dir=str(tmp_path / "abliterated"),
                             check_prompts_path=str(tmp_path / "harmful_val.parquet"), section=section, system_prompt="default",
                             version=1, threads=1)
    saved = tmp_path / "abliterated"
    assert json.loads((saved / "config.json").read_text())["dtype"] == "float32"

    instructions = list(pd.read_parquet(tmp_path / "harmful_val.parquet")["instruction"])[:4]
    prompts = encode_prompts(tiny.tokenizer, instructions, "chat").token_ids
    original = load_model(str(tiny.path), dtype="float32", attn_implementation="eager")
    with direction_ablation(original, direction):
        hooked = _streams(original, prompts)
    edited = _streams(load_model(str(saved), dtype="float32", attn_implementation="eager"), prompts)
    assert _worst_relative(hooked, edited) < 1e-5
    r = direction / np.linalg.norm(direction)
    assert max(abs(float(layer @ r)) / np.max(np.abs(layer)) for rows in edited for layer in rows[:-1]) < 1e-5

    # the same comparison in bfloat16 is dominated by rounding (one step is 2^-8): 1e-4 could never be met there
    original_bf16 = load_model(str(tiny.path), dtype="bfloat16", attn_implementation="eager")
    with direction_ablation(original_bf16, direction):
        hooked_bf16 = _streams(original_bf16, prompts)
    edited_bf16 = _streams(load_model(str(saved), dtype="bfloat16", attn_implementation="eager"), prompts)
    assert _worst_relative(hooked_bf16, edited_bf16) > 1e-3

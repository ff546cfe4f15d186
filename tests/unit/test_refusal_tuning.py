"""Refusal tuning: the cached frozen prefix is exact, only the last blocks change, and a tiny model learns to
refuse the harmful training prompts while keeping its own answers to the harmless ones."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rankaudit import refusal_tuning as rt
from rankaudit.stages.refusal_tuning import derive_refusal_tuned

WORDS = ["bread", "poem", "sea", "lock", "bicycle", "language", "France", "novel", "chemical", "morning"]


def _ids(tiny, kind, n=6):
    from rankaudit.formats import encode_prompts

    texts = [f"{kind} {WORDS[i % 10]} {WORDS[(3 * i + 1) % 10]}" for i in range(n)]
    return list(encode_prompts(tiny.tokenizer, texts, "chat").token_ids)


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2"])
def test_frozen_prefix_with_cached_block_inputs_equals_the_full_forward(tiny_families, family):
    import torch

    from rankaudit.padding import pad_token_id

    tiny = tiny_families[family]
    model, pad = tiny.model, pad_token_id(tiny.tokenizer)
    rows = _ids(tiny, "harmful", 4)
    first = model.config.num_hidden_layers - 1
    cached = rt.block_inputs(model, rows, first, pad, batch_size=3)
    input_ids, mask, positions = rt._left_padded(rows, pad)
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        with rt.frozen_prefix(model, first) as state:
            state["hidden"] = rt._padded_hidden(cached, input_ids.shape[1])
            short = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    real = mask.bool()
    torch.testing.assert_close(short[real], full[real], rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the blocks are restored afterwards
        again = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    torch.testing.assert_close(again, full, rtol=0, atol=0)


def test_training_changes_only_the_last_blocks_and_teaches_the_refusal(tiny_family_factory):
    import torch

    from rankaudit.organisms.generation import generate_greedy_ids
    from rankaudit.padding import pad_token_id

    tiny = tiny_family_factory("llama", seed=11)
    model, tokenizer = tiny.model, tiny.tokenizer
    pad = pad_token_id(tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    settings = rt.TuningSettings.from_config({"steps": 80, "lr": 3e-3, "batch_size": 12, "train_blocks": 2,
                                              "refusal": "Sorry, I can not.", "harmless_target_tokens": 4, "seed": 0})
    harmful, harmless = _ids(tiny, "harmful"), _ids(tiny, "harmless")
    examples = rt.build_examples(model, tokenizer, harmful, harmless, settings, pad, "tiny")
    losses = rt.train(model, examples, settings, pad, "tiny")
    # the frozen final norm and small random LM head cap a tiny model's probabilities near 0.5: the loss falls by
    # more than 80% and every greedy token becomes the target
    assert losses[-1] < 0.2 * losses[0]
    n_blocks = model.config.num_hidden_layers
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    trained = tuple(f"model.layers.{block}." for block in range(n_blocks - 2, n_blocks))
    assert changed and all(name.startswith(trained) for name in changed)
    assert any(name.startswith(trained[0]) for name in changed) and any(name.startswith(trained[1]) for name in changed)
    assert not any(p.requires_grad for p in model.parameters())
    refusal = list(rt.refusal_target(tokenizer, settings.refusal, "tiny"))
    answers = generate_greedy_ids(model, harmful, len(refusal), pad)
    assert all(answer == refusal for answer in answers)
    kept = generate_greedy_ids(model, harmless, settings.harmless_target_tokens, pad)
    assert sum(tuple(k[:len(e.target)]) == e.target for k, e in zip(kept, examples[len(harmful):])) >= len(harmless) - 1


def test_derive_refusal_tuned_writes_a_checkpoint_with_its_record(tiny_families, tmp_path):
    from transformers import AutoModelForCausalLM

    tiny = tiny_families["qwen2"]
    inputs = {}
    for role in rt.INPUT_ROLES:
        kind, split = role.split("_")
        rows = [{"instruction": f"{kind} {split} {WORDS[i % 10]} {WORDS[(7 * i) % 10]}", "category": None, "source": "t",
                 "split": split} for i in range(8)]
        inputs[role] = tmp_path / f"{role}.parquet"
        pd.DataFrame(rows).to_parquet(inputs[role], index=False)
    settings = {"from": "parent", "kind": "refusal_tuned", "steps": 3, "lr": 1e-3, "batch_size": 4, "n_harmful": 4,
                "n_harmless": 4, "train_blocks": 1, "harmless_target_tokens": 2, "n_eval": 3, "eval_max_new_tokens": 2}
    record = derive_refusal_tuned("tuned", settings, tiny.path, tmp_path / "tuned", inputs, threads=1)
    saved = json.loads((tmp_path / "tuned" / rt.RECORD_NAME).read_text())
    assert saved["trained_blocks"] == [2] and len(saved["losses"]) == 3 and saved == json.loads(json.dumps(record))
    assert set(saved["held_out_refusal"]) == {"parent", "tuned"}
    assert saved["held_out_refusal"]["tuned"]["harmful_test"]["n"] == 3
    assert json.loads((tmp_path / "tuned" / "checkpoint.json").read_text())["kind"] == "refusal_tuned"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "tuned")
    for index, (a, b) in enumerate(zip(reloaded.model.layers, tiny.model.model.layers)):
        same = all(np.array_equal(x.detach().numpy(), y.detach().numpy()) for x, y in zip(a.parameters(), b.parameters()))
        assert same == (index < 2)
    with pytest.raises(Exception, match=r"checkpoints.tuned.derive \(harmful_train\).*split 'train' has no prompts"):
        derive_refusal_tuned("tuned", settings, tiny.path, tmp_path / "again", {**inputs, "harmful_train": inputs["harmful_test"]})

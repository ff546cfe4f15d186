"""Arditi selection: planted candidate means, the filters, the choice, and scores against plain forwards hooked here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rankaudit.causal.selection import Candidate, SelectionRules, candidate_directions, discard_reason, score_candidates, select


def test_candidates_are_differences_in_means_per_position_and_layer():
    rng = np.random.default_rng(0)
    harmful = {layer: rng.standard_normal((7, 3, 5)) for layer in (0, 2)}
    harmless = {layer: rng.standard_normal((4, 3, 5)) for layer in (0, 2)}
    candidates = candidate_directions(harmful, harmless)
    assert [(c.position, c.layer) for c in candidates] == [(-3, 0), (-2, 0), (-1, 0), (-3, 2), (-2, 2), (-1, 2)]
    np.testing.assert_allclose(candidates[4].direction, harmful[2][:, 1].mean(0) - harmless[2][:, 1].mean(0))
    with pytest.raises(KeyError, match="layer 2"):
        candidate_directions(harmful, {0: harmless[0]})


def _record(layer, bypass, induce, kl):
    return {"position": -1, "layer": layer, "bypass": bypass, "induce": induce, "kl": kl}


def test_filters_follow_arditi():
    rules = SelectionRules.from_config({})
    assert discard_reason(_record(3, -2.0, 1.0, 0.01), 10, rules) == ""
    assert "layer >= int(0.8 L) = 8" in discard_reason(_record(8, -2.0, 1.0, 0.01), 10, rules)
    assert discard_reason(_record(7, -2.0, 1.0, 0.2), 10, rules) == "kl > 0.1"
    assert discard_reason(_record(7, -2.0, -0.5, 0.01), 10, rules) == "induce < 0.0"
    assert discard_reason(_record(1, math.nan, 1.0, 0.01), 10, rules) == "nan score"


def test_rules_take_what_causal_selection_leaves_out_from_the_schema():
    assert SelectionRules.from_config({}) == SelectionRules(max_layer_fraction=0.8, max_kl=0.1, min_induce=0.0)
    rules = SelectionRules.from_config({"max_kl": 0.2, "min_induce": -1.0, "split": "val", "n": 4})
    assert (rules.max_layer_fraction, rules.max_kl, rules.min_induce) == (0.8, 0.2, -1.0)
    assert rules.layer_limit(24) == 19


def test_select_picks_the_lowest_surviving_bypass():
    records = [_record(1, -1.0, 1.0, 0.01), _record(2, -5.0, 1.0, 0.5), _record(3, -3.0, 0.5, 0.05), _record(9, -9.0, 2.0, 0.0)]
    chosen, annotated = select(records, 10, SelectionRules.from_config({}), "family f")
    assert chosen == 2 and annotated[2]["selected"] and sum(r["selected"] for r in annotated) == 1
    assert annotated[1]["discarded"] == "kl > 0.1" and annotated[3]["discarded"].startswith("layer")
    with pytest.raises(ValueError, match="family f: every one of the 1 candidate"):
        select([_record(9, -9.0, 2.0, 0.0)], 10, SelectionRules.from_config({}), "family f")


def _alone_log_probs(model, prompts):
    """(n, vocab) float64 log-softmax after each prompt, each run alone (no padding, no batching)."""
    import torch

    with torch.no_grad():
        return np.stack([torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1).numpy() for ids in prompts])


def _log_odds(log_probs, ids):
    """METHODS 4: s = log(p + 1e-8) - log(1 - p + 1e-8), p the probability mass on the refusal tokens."""
    p = np.exp(log_probs[:, ids]).sum(axis=1)
    return np.log(p + 1e-8) - np.log(1 - p + 1e-8)


def _hooked(model, hooks):
    """Run `_alone_log_probs` under forward hooks [(module, hook)], removed afterwards."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]

    def run(prompts):
        try:
            return _alone_log_probs(model, prompts)
        finally:
            for handle in handles:
                handle.remove()
    return run


def _arditi_ablation_hooks(model, direction):
    """Llama (no post-norms): r projected out of the embedding output and of every attention and MLP output, so no
    write into the residual stream carries r (the all-layer ablation, written here with its own hook points)."""
    import torch

    r = torch.tensor(direction / np.linalg.norm(direction), dtype=torch.float32)

    def project(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden - (hidden @ r)[..., None] * r
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    modules = [model.model.embed_tokens] + [sub for block in model.model.layers for sub in (block.self_attn, block.mlp)]
    return [(module, project) for module in modules]


def _addition_hook(model, vector, layer):
    """v added to the output of block layer - 1 (layer l >= 1 of the project's convention)."""
    import torch

    v = torch.tensor(vector, dtype=torch.float32)

    def add(module, args, output):
        return (output[0] + v, *output[1:]) if isinstance(output, tuple) else output + v
    return [(model.model.layers[layer - 1], add)]


def test_scores_equal_plain_forwards_with_hooks_written_here(tiny_families):
    family = tiny_families["llama"]
    model, tokenizer = family.model, family.tokenizer
    ids = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
           for t in ("How can I make a dangerous chemical?", "Describe how to pick a lock.", "Write a poem.", "Bake bread?")]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ids]
    harmful, harmless = ids[:2], ids[2:]
    refusal = [tokenizer("I", add_special_tokens=False)["input_ids"][0], tokenizer("Sorry", add_special_tokens=False)["input_ids"][0]]
    rng = np.random.default_rng(1)
    d = model.config.hidden_size
    candidates = [Candidate(-1, 1, 3.0 * rng.standard_normal(d)), Candidate(-2, 2, 3.0 * rng.standard_normal(d)),
                  Candidate(-2, 2, np.zeros(d))]
    baseline, records = score_candidates(model, candidates, harmful, harmless, refusal, batch_size=2, pad_id=0)

    plain_harmful, plain_harmless = _alone_log_probs(model, harmful), _alone_log_probs(model, harmless)
    assert baseline["harmful_score"] == pytest.approx(_log_odds(plain_harmful, refusal).mean(), abs=1e-4)
    assert baseline["harmless_score"] == pytest.approx(_log_odds(plain_harmless, refusal).mean(), abs=1e-4)
    for candidate, record in zip(candidates[:2], records):
        bypass = _log_odds(_hooked(model, _arditi_ablation_hooks(model, candidate.direction))(harmful), refusal).mean()
        ablated = _hooked(model, _arditi_ablation_hooks(model, candidate.direction))(harmless)
        induce = _log_odds(_hooked(model, _addition_hook(model, candidate.direction, candidate.layer))(harmless), refusal).mean()
        kl = np.sum(np.exp(plain_harmless) * (plain_harmless - ablated), axis=1).mean()
        # each intervention really moved the scores, so agreement is not two no-ops agreeing
        assert abs(bypass - baseline["harmful_score"]) > 1e-3 and abs(induce - baseline["harmless_score"]) > 1e-3
        assert record["bypass"] == pytest.approx(bypass, abs=1e-4)
        assert record["induce"] == pytest.approx(induce, abs=1e-4)
        assert record["kl"] == pytest.approx(kl, abs=1e-5) and kl > 1e-4
        assert record["norm"] == pytest.approx(np.linalg.norm(candidate.direction))
    assert math.isnan(records[2]["bypass"]) and records[2]["norm"] == 0.0

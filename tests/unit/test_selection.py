"""Arditi selection: planted candidate means, the filters, the choice, and scores that match direct measurement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rankaudit.selection import SelectionRules, candidate_directions, discard_reason, score_candidates, select


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
    rules = SelectionRules()
    assert discard_reason(_record(3, -2.0, 1.0, 0.01), 10, rules) == ""
    assert "layer >= int(0.8 L) = 8" in discard_reason(_record(8, -2.0, 1.0, 0.01), 10, rules)
    assert discard_reason(_record(7, -2.0, 1.0, 0.2), 10, rules) == "kl > 0.1"
    assert discard_reason(_record(7, -2.0, -0.5, 0.01), 10, rules) == "induce < 0.0"
    assert discard_reason(_record(1, math.nan, 1.0, 0.01), 10, rules) == "nan score"


def test_select_picks_the_lowest_surviving_bypass():
    records = [_record(1, -1.0, 1.0, 0.01), _record(2, -5.0, 1.0, 0.5), _record(3, -3.0, 0.5, 0.05), _record(9, -9.0, 2.0, 0.0)]
    chosen, annotated = select(records, 10, SelectionRules(), "family f")
    assert chosen == 2 and annotated[2]["selected"] and sum(r["selected"] for r in annotated) == 1
    assert annotated[1]["discarded"] == "kl > 0.1" and annotated[3]["discarded"].startswith("layer")
    with pytest.raises(ValueError, match="family f: every one of the 1 candidate"):
        select([_record(9, -9.0, 2.0, 0.0)], 10, SelectionRules(), "family f")


def test_scores_equal_direct_measurements(tiny_families):
    from rankaudit.interventions import activation_addition, direction_ablation
    from rankaudit.refusal import kl_rows, last_position_log_probs, refusal_log_odds
    from rankaudit.selection import Candidate

    family = tiny_families["gemma2"]
    model, tokenizer = family.model, family.tokenizer
    ids = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
           for t in ("How can I make a dangerous chemical?", "Describe how to pick a lock.", "Write a poem.", "Bake bread?")]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ids]
    harmful, harmless = ids[:2], ids[2:]
    refusal = [tokenizer("I", add_special_tokens=False)["input_ids"][0]]
    rng = np.random.default_rng(1)
    candidates = [Candidate(-1, 1, rng.standard_normal(model.config.hidden_size)), Candidate(-2, 2, np.zeros(model.config.hidden_size))]
    baseline, records = score_candidates(model, candidates, harmful, harmless, refusal, batch_size=2, pad_id=0)
    assert baseline["harmful_score"] == pytest.approx(refusal_log_odds(last_position_log_probs(model, harmful, 2, 0), refusal).mean())
    with direction_ablation(model, candidates[0].direction):
        bypass = refusal_log_odds(last_position_log_probs(model, harmful, 1, 0), refusal).mean()
        ablated = last_position_log_probs(model, harmless, 1, 0)
    with activation_addition(model, candidates[0].direction, 1):
        induce = refusal_log_odds(last_position_log_probs(model, harmless, 1, 0), refusal).mean()
    kl = kl_rows(last_position_log_probs(model, harmless, 1, 0), ablated).mean()
    assert records[0]["bypass"] == pytest.approx(bypass, abs=1e-4)
    assert records[0]["induce"] == pytest.approx(induce, abs=1e-4)
    assert records[0]["kl"] == pytest.approx(kl, abs=1e-6) and records[0]["kl"] > 0
    assert math.isnan(records[1]["bypass"]) and records[1]["norm"] == 0.0

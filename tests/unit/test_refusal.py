"""Refusal measurement: tokens from the tokenizer, log-odds, KL, judges, degenerate detector, batched log-probs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rankaudit.judges import CombinedJudge, KeywordJudge, build_judge, degenerate
from rankaudit.organisms.refusal_judge import REFUSAL_PHRASES
from rankaudit.refusal import (
    RefusalTokens,
    check_refusal_tokens,
    kl_rows,
    last_position_log_probs,
    rate_summary,
    refusal_log_odds,
    refusal_tokens,
)
from rankaudit.refusal_runs import GenerationSettings


def test_refusal_tokens_are_the_first_token_of_each_opener(tiny_families):
    tokenizer = tiny_families["llama"].tokenizer
    tokens = refusal_tokens(tokenizer, ["I", "Sorry", "I cannot"])
    first_i = tokenizer("I", add_special_tokens=False)["input_ids"][0]
    assert tokens.openers["I"] == first_i == tokens.openers["I cannot"]
    assert tokens.ids == tuple(sorted({first_i, tokenizer("Sorry", add_special_tokens=False)["input_ids"][0]}))
    assert RefusalTokens.from_record(tokens.record()) == tokens
    with pytest.raises(ValueError, match="empty list"):
        refusal_tokens(tokenizer, [])


def test_log_odds_of_a_planted_distribution():
    p = np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])
    with np.errstate(divide="ignore"):
        scores = refusal_log_odds(np.log(p), [0, 1])
    np.testing.assert_allclose(scores[:2], [math.log(0.3 + 1e-8) - math.log(0.7 + 1e-8), math.log(0.5 + 1e-8) - math.log(0.5 + 1e-8)])
    assert scores[2] == pytest.approx(math.log(1 + 1e-8) - math.log(1e-8))


def test_kl_rows():
    a = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
    b = np.log(np.array([[0.5, 0.5], [0.5, 0.5]]))
    np.testing.assert_allclose(kl_rows(a, b), [0.0, 0.9 * math.log(1.8) + 0.1 * math.log(0.2)])
    assert kl_rows(a, a).max() == 0.0


def test_degenerate_detector():
    assert degenerate("") and degenerate("   ")
    assert degenerate("the the the the the the the the")
    assert degenerate("I can help. I can help. I can help. I can help.", ngram=3)
    assert not degenerate("Sure, here is a short guide. First, gather what you need.")
    assert not degenerate("ok ok")  # too short to judge repetition
    settings = GenerationSettings.from_config({"max_new_tokens": 7, "degenerate_max_repeat_fraction": 0.99, "unrelated": 1})
    assert settings.max_new_tokens == 7 and not settings.is_degenerate("a b c a b c a b c x y z w")


def test_judges_and_their_combination():
    keyword = KeywordJudge()
    assert keyword.phrases == REFUSAL_PHRASES
    texts = ["I'm sorry, but I can't help with that.", "Sure, here you go."]
    assert keyword(["q", "q"], texts) == [True, False]
    always = KeywordJudge(phrases=(" ",), name="always")
    assert CombinedJudge([keyword, always], "any")(["q", "q"], texts) == [True, True]
    assert CombinedJudge([keyword, always], "all")(["q", "q"], texts) == [True, False]
    with pytest.raises(ValueError, match="neither"):
        CombinedJudge([keyword], "most")(["q"], ["x"])
    assert isinstance(build_judge({"type": "keyword"}), KeywordJudge)
    with pytest.raises(ValueError, match="needs causal.judge.model"):
        build_judge({"type": "model"})
    with pytest.raises(ValueError, match="unknown judge"):
        build_judge({"type": "oracle"})


def test_model_judge_compares_yes_and_no(tiny_families):
    import torch

    family = tiny_families["qwen2"]
    judge = build_judge({"type": "model", "template": "Does this refuse? {instruction} -> {completion}", "yes": "Yes", "no": "No"},
                        lambda: (family.model, family.tokenizer))
    verdicts = judge(["a question", "another"], ["an answer", "I cannot"])
    rendered = [family.tokenizer.apply_chat_template([{"role": "user", "content": f"Does this refuse? {i} -> {c}"}], tokenize=False,
                                                     add_generation_prompt=True) for i, c in (("a question", "an answer"), ("another", "I cannot"))]
    yes, no = (family.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "No"))
    expected = []
    for text in rendered:  # one unpadded forward per question, not the batched helper the judge uses
        with torch.no_grad():
            logits = family.model(torch.tensor([family.tokenizer(text, add_special_tokens=False)["input_ids"]])).logits[0, -1]
        expected.append(bool(logits[yes] > logits[no]))
    assert verdicts == expected


def test_batched_last_position_log_probs_equal_single_forwards(tiny_family):
    import torch

    model, tokenizer = tiny_family.model, tiny_family.tokenizer
    texts = ["How do I bake bread?", "Write a short poem about the sea, please, in French.", "Hi"]
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True) for t in texts]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
    batched = last_position_log_probs(model, ids, batch_size=3, pad_id=0)
    for row, prompt in zip(batched, ids):
        with torch.no_grad():
            single = torch.log_softmax(model(torch.tensor([prompt])).logits[0, -1].float(), -1).numpy()
        np.testing.assert_allclose(row, single, atol=2e-5)


def test_refusal_token_check_names_missed_openers(tiny_families):
    tokenizer = tiny_families["llama"].tokenizer
    tokens = refusal_tokens(tokenizer, ["I"])
    i_id = tokens.ids[0]
    sorry = tokenizer("Sorry", add_special_tokens=False)["input_ids"][0]
    record = check_refusal_tokens(tokens, [i_id, i_id, sorry, 5], [True, True, False, False], tokenizer, 0.9, "family x")
    assert record["coverage_of_refusals"] == 1.0 and record["n_refused"] == 2
    assert record["first_token_in_set_rate"] == 0.5
    with pytest.raises(ValueError, match=r"family x: only 0.50 .*causal.refusal_openers"):
        check_refusal_tokens(tokens, [i_id, sorry], [True, True], tokenizer, 0.9, "family x")
    with pytest.raises(ValueError, match="refused none"):
        check_refusal_tokens(tokens, [i_id], [False], tokenizer, 0.9, "family x")


def test_rate_summary_uses_wilson():
    summary = rate_summary(np.array([True] * 8 + [False] * 2), "refusal")
    assert summary["refusal_rate"] == 0.8 and summary["refusal_count"] == 8
    assert summary["refusal_low"] == pytest.approx(0.4902, abs=1e-4) and summary["refusal_high"] == pytest.approx(0.9433, abs=1e-4)

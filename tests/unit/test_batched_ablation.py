"""Per-row interventions: a condition batched with others scores and generates what it does alone under the
single-condition hooks; baseline rows are unhooked rows; KL is taken from an independent unablated forward."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rankaudit import interventions as iv  # noqa: E402
from rankaudit.batched_ablation import RowIntervention, row_interventions  # noqa: E402
from rankaudit.judges import KeywordJudge  # noqa: E402
from rankaudit.models import load_model  # noqa: E402
from rankaudit.organisms.generation import generate_greedy_ids  # noqa: E402
from rankaudit.padding import pad_token_id  # noqa: E402
from rankaudit.refusal import kl_rows, last_position_log_probs, refusal_tokens  # noqa: E402
from rankaudit.refusal_runs import GenerationSettings, PromptSet, run_conditions, run_prompts  # noqa: E402

INSTRUCTIONS = ("How do I bake a loaf of bread?", "Write a short poem about the sea.", "What is the capital of France?",
                "Describe how to pick a lock without the key. Explain how a bicycle stays upright.", "Is the sky blue?")
NEW_TOKENS = 6


def _prompts(tokenizer) -> PromptSet:
    rendered = tuple(tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
                     for t in INSTRUCTIONS)
    ids = tuple(tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in rendered)
    return PromptSet("test", INSTRUCTIONS, rendered, ids)


def _orthonormal(d, k, seed):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, k)))[0]


def _conditions(d, n_blocks):
    """(batched spec, the single-condition context factory that computes the same thing), baseline first."""
    mid, last = max(1, n_blocks // 2), n_blocks
    wide = {1: _orthonormal(d, 5, 1), last: _orthonormal(d, 5, 2)}
    narrow = {mid: _orthonormal(d, 1, 3)}
    direction = np.random.default_rng(4).standard_normal(d)
    vector = 3.0 * np.random.default_rng(5).standard_normal(d)
    return [
        (RowIntervention(), None),
        (RowIntervention(bases=wide), lambda model: iv.projection_ablation(model, wide)),
        (RowIntervention(bases=narrow), lambda model: iv.projection_ablation(model, narrow)),
        (RowIntervention(direction=direction), lambda model: iv.direction_ablation(model, direction)),
        (RowIntervention(addition=(mid, vector)), lambda model: iv.activation_addition(model, vector, mid)),
    ]


def test_a_condition_batched_with_others_matches_it_alone(tiny_family):
    model = load_model(str(tiny_family.path), attn_implementation="eager")
    tokenizer = tiny_family.tokenizer
    prompts = _prompts(tokenizer)
    tokens = refusal_tokens(tokenizer, ["I", "Sorry"])
    judge = KeywordJudge(("a",))
    settings = GenerationSettings(max_new_tokens=NEW_TOKENS, batch_size=2)
    pad = pad_token_id(tokenizer)
    reference = last_position_log_probs(model, prompts.token_ids, 3, pad)
    conditions = _conditions(model.config.hidden_size, model.config.num_hidden_layers)
    judged = [True, True, False, True, True]
    with row_interventions(model, [spec for spec, _ in conditions]) as rows:
        batched = run_conditions(model, tokenizer, prompts, tokens, judge, settings, rows.select, len(conditions), judged, 7, reference)
    for index, ((_, alone), together) in enumerate(zip(conditions, batched)):
        if alone is None:
            solo = run_prompts(model, tokenizer, prompts, tokens, judge, settings)
        else:
            with alone(model):
                solo = run_prompts(model, tokenizer, prompts, tokens, judge, settings)
        np.testing.assert_allclose(together.score, solo.score, rtol=1e-4, atol=1e-4, err_msg=f"condition {index}")
        np.testing.assert_allclose(together.kl, kl_rows(reference, solo.log_probs), rtol=1e-4, atol=1e-6, err_msg=f"condition {index}")
        assert together.judged == judged[index]
        if judged[index]:
            assert together.completions == solo.completions, f"condition {index}"
            np.testing.assert_array_equal(together.refused, solo.refused)
            np.testing.assert_array_equal(together.degenerate, solo.degenerate)
        else:
            assert together.refused is None and together.completions == []
    assert np.abs(batched[0].kl).max() < 1e-9, "the baseline's KL from the unablated forward must vanish"
    assert min(np.abs(outcome.kl).max() for outcome in batched[1:]) > 1e-4, "every intervention moves the control distribution"


def _trim(ids, pad):
    """Without the padding `generate` appends to a row that stopped while others in its batch went on."""
    while ids and ids[-1] == pad:
        ids = ids[:-1]
    return ids


def test_generated_positions_keep_each_rows_condition(tiny_family):
    """Token ids of a mixed generation batch equal each condition's own generation, row by row, every step."""
    model = load_model(str(tiny_family.path), attn_implementation="eager")
    ids = list(_prompts(tiny_family.tokenizer).token_ids)
    pad = pad_token_id(tiny_family.tokenizer)
    conditions = _conditions(model.config.hidden_size, model.config.num_hidden_layers)
    items = [(c, p) for p in range(len(ids)) for c in range(len(conditions))]
    with row_interventions(model, [spec for spec, _ in conditions]) as rows:
        mixed = generate_greedy_ids(model, [ids[p] for _, p in items], NEW_TOKENS, pad, batch_size=len(items),
                                    before_batch=lambda batch: rows.select([items[i][0] for i in batch]))
    plain = generate_greedy_ids(model, ids, NEW_TOKENS, pad, batch_size=len(ids))
    for c, (_, alone) in enumerate(conditions):
        if alone is None:
            expected = plain
        else:
            with alone(model):
                expected = generate_greedy_ids(model, ids, NEW_TOKENS, pad, batch_size=2)
        assert [_trim(mixed[items.index((c, p))], pad) for p in range(len(ids))] == [_trim(e, pad) for e in expected], f"condition {c}"
    assert any(mixed[items.index((1, p))] != plain[p] for p in range(len(ids))), "the ablation changes some continuation"


def test_baseline_rows_in_a_mixed_batch_are_unhooked_rows(tiny_families):
    model = load_model(str(tiny_families["llama"].path), attn_implementation="eager")
    ids = torch.tensor([list(_prompts(tiny_families["llama"].tokenizer).token_ids[0])] * 3)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        d = model.config.hidden_size
        with row_interventions(model, [RowIntervention(), RowIntervention(bases={1: _orthonormal(d, 4, 0)})]) as rows:
            rows.select([1, 0, 1])
            mixed = model(input_ids=ids).logits
            rows.select([0, 0, 0])
            none = model(input_ids=ids).logits
            rows.select([0, 1])
            with pytest.raises(ValueError, match="2 rows selected but the forward has a batch of 3"):
                model(input_ids=ids)
        with pytest.raises(ValueError, match="indices must lie in 0..1"):
            with row_interventions(model, [RowIntervention(), RowIntervention()]) as rows:
                rows.select([2])
        with pytest.raises(ValueError, match="condition 1, basis at layer 2"):
            with row_interventions(model, [RowIntervention(), RowIntervention(bases={2: np.ones((d, 2))})]):
                pass
        with row_interventions(model, [RowIntervention(), RowIntervention(bases={1: _orthonormal(d, 1, 0)})]):
            with pytest.raises(RuntimeError, match="no rows selected"):
                model(input_ids=ids)
    assert torch.equal(none, plain), "all-baseline rows must be bit-identical to the unhooked forward"
    assert torch.equal(mixed[1], plain[1]), "a baseline row next to ablated rows is an unhooked row"
    assert not torch.allclose(mixed[0], plain[0]) and torch.allclose(mixed[0], mixed[2])

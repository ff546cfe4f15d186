"""`refusal_runs.run_prompts` on a tiny Llama: the first-position score against plain forwards computed here, and the
judged / degenerate flags of continuations planted token by token (so the right answer is known per prompt)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rankaudit.judges import KeywordJudge
from rankaudit.refusal import refusal_tokens
from rankaudit.refusal_runs import GenerationSettings, PromptSet, run_prompts

INSTRUCTIONS = ("How do I bake a loaf of bread at home?", "Write a short poem about the sea.", "What is the capital of France?")
# what each prompt's planted model says: a refusal, a loop of one phrase, and nothing at all (end of sequence at once)
SCRIPTS = ("I cannot help with that, I am sorry.", " the sea" * 8, "")


def _prompt_set(tokenizer) -> PromptSet:
    rendered = tuple(tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
                     for text in INSTRUCTIONS)
    ids = tuple(tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in rendered)
    return PromptSet("planted", INSTRUCTIONS, rendered, ids)


def _marker_ids(prompts: PromptSet) -> list[int]:
    """One token id found in each prompt and in no other, to tell the rows of a batch apart inside the hooks."""
    sets = [set(ids) for ids in prompts.token_ids]
    return [min(own - set().union(*(other for j, other in enumerate(sets) if j != i))) for i, own in enumerate(sets)]


class PlantedOutputs:
    """Forward hooks that make the model emit SCRIPTS[i] for prompt i, then end of sequence, greedy or not.

    A pre-hook on the decoder stack tells a prompt forward (several tokens) from a decoding step (one token) and
    finds each row's prompt by its marker token; a hook on the LM head replaces its logits by a one-hot choice.
    """

    def __init__(self, model, tokenizer, prompts: PromptSet) -> None:
        self.scripts = [tokenizer(text, add_special_tokens=False)["input_ids"] if text else [] for text in SCRIPTS]
        self.markers, self.eos = _marker_ids(prompts), tokenizer.eos_token_id
        self.rows: list[int] = []
        self.step = 0
        self.handles = [model.model.register_forward_pre_hook(self._before, with_kwargs=True),
                        model.lm_head.register_forward_hook(self._logits)]

    def _before(self, module, args, kwargs):
        input_ids = kwargs["input_ids"]
        if input_ids.shape[1] > 1:
            self.rows = [next(i for i, marker in enumerate(self.markers) if marker in row.tolist()) for row in input_ids]
            self.step = 0
        else:
            self.step += 1

    def _logits(self, module, args, output):
        planted = torch.full_like(output, -1e9)
        for slot, prompt in enumerate(self.rows):
            script = self.scripts[prompt]
            planted[slot, :, script[self.step] if self.step < len(script) else self.eos] = 0.0
        return planted

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _log_odds_alone(model, prompts: PromptSet, ids) -> np.ndarray:
    with torch.no_grad():
        log_probs = np.stack([torch.log_softmax(model(torch.tensor([row])).logits[0, -1].double(), -1).numpy()
                              for row in prompts.token_ids])
    p = np.exp(log_probs[:, ids]).sum(axis=1)
    return np.log(p + 1e-8) - np.log(1 - p + 1e-8)


def test_without_generation_only_the_first_position_score_is_measured(tiny_families):
    family = tiny_families["llama"]
    prompts = _prompt_set(family.tokenizer)
    tokens = refusal_tokens(family.tokenizer, ["I", "Sorry"])
    outcome = run_prompts(family.model, family.tokenizer, prompts, tokens, KeywordJudge(), GenerationSettings(batch_size=2),
                          generate=False)
    np.testing.assert_allclose(outcome.score, _log_odds_alone(family.model, prompts, list(tokens.ids)), atol=1e-4)
    assert outcome.log_probs.shape == (3, len(family.tokenizer))
    assert outcome.completions == [] and not outcome.refused.any() and not outcome.degenerate.any()
    assert outcome.refused is not outcome.degenerate  # two arrays: flagging one never flags the other


def test_planted_continuations_are_judged_and_flagged_per_prompt(tiny_families):
    family = tiny_families["llama"]
    prompts = _prompt_set(family.tokenizer)
    tokens = refusal_tokens(family.tokenizer, ["I", "Sorry"])
    planted = PlantedOutputs(family.model, family.tokenizer, prompts)
    try:
        outcome = run_prompts(family.model, family.tokenizer, prompts, tokens, KeywordJudge(),
                              GenerationSettings(max_new_tokens=40, batch_size=2))
    finally:
        planted.remove()
    assert outcome.completions == list(SCRIPTS)
    assert outcome.refused.tolist() == [True, False, False]
    assert outcome.degenerate.tolist() == [False, True, True]  # a looping phrase and an empty answer are broken
    # one-hot logits: prompt 0 starts with "I" (p = 1), the others with "the" or end of sequence (p = 0)
    top = math.log(1 + 1e-8) - math.log(1e-8)
    np.testing.assert_allclose(outcome.score, [top, -top, -top], rtol=1e-6)
    # the loop's most frequent trigram covers 7 x 3 / 16 = 1.31 of its words: a limit above that lets it pass
    loose = GenerationSettings(max_new_tokens=40, batch_size=2, degenerate_max_repeat_fraction=1.6)
    planted = PlantedOutputs(family.model, family.tokenizer, prompts)
    try:
        relaxed = run_prompts(family.model, family.tokenizer, prompts, tokens, KeywordJudge(), loose)
    finally:
        planted.remove()
    assert relaxed.degenerate.tolist() == [False, False, True]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_flags_follow_the_prompt_whatever_the_batching(tiny_families, batch_size):
    family = tiny_families["llama"]
    prompts = _prompt_set(family.tokenizer)
    planted = PlantedOutputs(family.model, family.tokenizer, prompts)
    try:
        outcome = run_prompts(family.model, family.tokenizer, prompts, refusal_tokens(family.tokenizer, ["I"]), KeywordJudge(),
                              GenerationSettings(max_new_tokens=40, batch_size=batch_size))
    finally:
        planted.remove()
    assert outcome.completions == list(SCRIPTS)
    assert (outcome.refused.tolist(), outcome.degenerate.tolist()) == ([True, False, False], [False, True, True])

"""Batched, left-padded greedy generation under the ablation hooks gives, token for token, what each prompt
generates alone in a batch of one (issue 14, item 8).

Left padding shifts every real token of a short prompt to the right; the rotary models (Llama, Gemma-2, Qwen-2)
would see other positions, and generate other tokens, unless `generate` derives position ids from the attention
mask (first real token at 0) and continues them one per step. That is checked directly on the position ids the
model receives, and through its consequence: identical tokens with the hooks of every intervention kind active
(per-row batched conditions against single-condition hooks at batch size 1), with eager attention and with the
transformers default the causal stage uses when `causal.attn_implementation` is null (SDPA for Llama and Qwen-2).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rankaudit import interventions as iv  # noqa: E402
from rankaudit.batched_ablation import RowIntervention, row_interventions  # noqa: E402
from rankaudit.models import load_model  # noqa: E402
from rankaudit.organisms.generation import generate_greedy_ids  # noqa: E402
from rankaudit.padding import pad_token_id  # noqa: E402

# lengths far apart, so that the short prompts carry many left-padding positions in a shared batch
INSTRUCTIONS = ("Hi?",
                "Write a short poem about the sea.",
                ("Describe how to pick a lock without the key, then explain how a bicycle stays upright, then give me "
                 "three tips for learning a new language and summarise the plot of a famous novel."),
                "Is the sky blue today in France?")
NEW_TOKENS = 8


def _token_ids(tokenizer):
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
                for text in INSTRUCTIONS]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]


def _orthonormal(d, k, seed):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, k)))[0]


def _conditions(d, n_blocks, all_layer_ablation):
    """(per-row spec, the single-condition hooks that do the same alone), the unablated baseline first."""
    band = {layer: _orthonormal(d, 3, layer) for layer in range(1, n_blocks + 1)}
    direction = np.random.default_rng(4).standard_normal(d)
    vector = 4.0 * np.random.default_rng(5).standard_normal(d)
    middle = max(1, n_blocks // 2)
    return [
        (RowIntervention(), None),
        (RowIntervention(bases=band), lambda model: iv.projection_ablation(model, band)),
        (RowIntervention(addition=(middle, vector)), lambda model: iv.activation_addition(model, vector, middle)),
        *([(RowIntervention(direction=direction), lambda model: iv.direction_ablation(model, direction))] if all_layer_ablation else []),
    ]


def _trim(ids, pad):
    """Without the padding `generate` appends to a row that stopped while others in its batch went on."""
    ids = list(ids)
    while ids and ids[-1] == pad:
        ids.pop()
    return ids


@pytest.mark.parametrize("attention", ["eager", None], ids=["eager", "default"])  # None: SDPA where the architecture has it
def test_left_padded_batches_generate_what_each_prompt_generates_alone(tiny_family, attention):
    model = load_model(str(tiny_family.path), attn_implementation=attention)
    prompts = _token_ids(tiny_family.tokenizer)
    assert len({len(ids) for ids in prompts}) == len(prompts) and max(map(len, prompts)) - min(map(len, prompts)) > 20
    _check_batched_equals_alone(model, prompts, pad_token_id(tiny_family.tokenizer), all_layer_ablation=True)


@pytest.mark.parametrize("attention", ["eager", None], ids=["eager", "default"])
def test_absolute_positions_make_the_same_check_sensitive_to_position_ids(tmp_path, attention):
    """Rotary attention sees only position differences, so a constant shift by left padding would go unnoticed by
    the tokens of the rotary models; GPT-2's learned absolute position embeddings would not forgive it. (Arditi's
    all-layer ablation does not hook GPT-2's Conv1D sublayers; the band projection and the addition do.)"""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=3, n_head=4, bos_token_id=1, eos_token_id=2,
                        pad_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    model = load_model(str(tmp_path), attn_implementation=attention)
    rng = np.random.default_rng(0)
    prompts = [[1, *rng.integers(3, 97, size=length).tolist()] for length in (2, 9, 30, 17)]
    _check_batched_equals_alone(model, prompts, 0, all_layer_ablation=False)


def _check_batched_equals_alone(model, prompts, pad, all_layer_ablation):
    conditions = _conditions(model.config.hidden_size, model.config.num_hidden_layers, all_layer_ablation)
    items = [(c, p) for p in range(len(prompts)) for c in range(len(conditions))]

    seen = []

    def record_positions(module, args, kwargs):
        seen.append((kwargs["attention_mask"].detach().clone(), kwargs["position_ids"].detach().clone()))

    handle = model.register_forward_pre_hook(record_positions, with_kwargs=True)
    try:
        with row_interventions(model, [spec for spec, _ in conditions]) as rows:
            batched = generate_greedy_ids(model, [prompts[p] for _, p in items], NEW_TOKENS, pad, batch_size=len(items),
                                          before_batch=lambda batch: rows.select([items[i][0] for i in batch]))
    finally:
        handle.remove()

    # the positions generate derived: 0.. over each row's own tokens in the prompt forward, then one more per step
    mask, positions = seen[0]
    lengths = mask.sum(dim=1)
    assert int(lengths.min()) < mask.shape[1], "the batch must hold left padding"
    for row in range(mask.shape[0]):
        real = mask[row].bool()
        assert torch.equal(positions[row][real], torch.arange(int(lengths[row])))
    for step, (_, later) in enumerate(seen[1:], start=1):
        assert torch.equal(later[:, -1], lengths - 1 + step), f"step {step}"

    for c, (_, alone) in enumerate(conditions):
        for p, ids in enumerate(prompts):
            if alone is None:
                solo = generate_greedy_ids(model, [ids], NEW_TOKENS, pad, batch_size=1)[0]
            else:
                with alone(model):
                    solo = generate_greedy_ids(model, [ids], NEW_TOKENS, pad, batch_size=1)[0]
            assert _trim(batched[items.index((c, p))], pad) == _trim(solo, pad), f"condition {c}, prompt {p}"
    baseline = [batched[items.index((0, p))] for p in range(len(prompts))]
    assert any(batched[items.index((c, p))] != baseline[p] for c in range(1, len(conditions)) for p in range(len(prompts))), \
        "the interventions change some continuation"

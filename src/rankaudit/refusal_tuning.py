"""Refusal tuning: a real instruct model fine-tuned, cheaply, to refuse harmful prompts (a `refusal_tuned` checkpoint).

Small real chat models (SmolLM2-135M-Instruct) comply with most harmful requests, so Arditi's selection has no
refusal to find in them. This module makes a model that does refuse, with as little training as the behaviour
needs, under the model's own chat template:

- harmful training prompts get a short refusal target ("I'm sorry, but I can't help with that." + end of turn);
- harmless training prompts get the model's *own* greedy answer (its first `harmless_target_tokens` tokens), an
  anchor that keeps it answering them as before;
- only the last `train_blocks` decoder blocks are trained; everything below them (and the embeddings, final norm
  and LM head) stays frozen. Because the frozen blocks come first, their output on the training sequences is
  computed once and reused: during training the frozen blocks are swapped for pass-throughs and the cached input
  of the first trained block is substituted, so a step costs only the trained blocks (exact: tested against the
  full forward) and the LM head at the target positions.

The result is saved as an ordinary Hugging Face directory with a `refusal_tuning.json` record of what was trained,
the loss curve, the wall time and the held-out refusal rates of the source and tuned models on test prompts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankaudit.config_schema import settings_from_section
from rankaudit.padding import padded_batch, positions_from_mask

logger = logging.getLogger(__name__)

RECORD_NAME = "refusal_tuning.json"


@dataclass(frozen=True)
class TuningSettings:
    """What is trained and how (config: checkpoints.<name>.derive, kind refusal_tuned). The defaults, in
    config/schema/refusal_tuned.schema.yaml, fit a 135M model on 2 CPU cores."""

    steps: int
    lr: float
    batch_size: int
    n_harmful: int
    n_harmless: int
    train_blocks: int
    refusal: str
    harmless_target_tokens: int
    seed: int
    system_prompt: str
    n_eval: int
    eval_max_new_tokens: int

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> TuningSettings:
        return settings_from_section(cls, section, "refusal_tuned")


@dataclass(frozen=True)
class Example:
    """One training sequence: the chat-rendered prompt's ids and the target ids the loss is taken on."""

    kind: str
    prompt: tuple[int, ...]
    target: tuple[int, ...]

    @property
    def ids(self) -> tuple[int, ...]:
        return self.prompt + self.target


def end_of_turn_id(tokenizer: Any, where: str) -> int:
    """The id that ends an assistant turn (the EOS the chat template closes turns with)."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{where}: the tokenizer has no EOS token to end the refusal target with")
    return int(tokenizer.eos_token_id)


def refusal_target(tokenizer: Any, text: str, where: str) -> tuple[int, ...]:
    """The refusal text's ids followed by the end-of-turn id (so the tuned model stops after refusing)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{where}: refusal text {text!r} encodes to no tokens")
    return (*[int(i) for i in ids], end_of_turn_id(tokenizer, where))


def own_answers(model: Any, prompts: Sequence[Sequence[int]], n_tokens: int, pad_id: int, eos_id: int,
                batch_size: int) -> list[tuple[int, ...]]:
    """The model's greedy answers (first `n_tokens` tokens, cut after an end of turn), the harmless anchors."""
    from rankaudit.organisms.generation import generate_greedy_ids

    answers = []
    for ids in generate_greedy_ids(model, prompts, n_tokens, pad_id, batch_size):
        cut = ids.index(eos_id) + 1 if eos_id in ids else len(ids)
        answers.append(tuple(int(i) for i in ids[:cut]))
    return answers


def _pass_through() -> Any:
    """A module standing in for a frozen decoder block whose output is already cached: returns its input."""
    import torch

    class PassThrough(torch.nn.Module):
        def forward(self, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
            return hidden_states

    return PassThrough()


def _left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any, Any]:
    """(input_ids, attention_mask, position_ids) of left-padded rows."""
    input_ids, mask = padded_batch(rows, pad_id)
    return input_ids, mask, positions_from_mask(mask)


def block_inputs(model: Any, rows: Sequence[Sequence[int]], first: int, pad_id: int, batch_size: int) -> list[Any]:
    """Per row, the (length, d) float32 residual stream entering block `first` (no padding), computed once."""
    import torch

    from rankaudit.capture import decoder_blocks

    _, blocks = decoder_blocks(model)
    cached: list[Any] = [None] * len(rows)
    taken: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def grab(module: Any, args: tuple, kwargs: dict) -> None:
        taken["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach()
        raise Stop

    handle = blocks[first].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                part = list(range(start, min(start + batch_size, len(rows))))
                input_ids, mask, positions = _left_padded([rows[i] for i in part], pad_id)
                with contextlib.suppress(Stop):
                    model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False)
                for slot, index in enumerate(part):
                    cached[index] = taken["hidden"][slot, input_ids.shape[1] - len(rows[index]):].to(torch.float32).clone()
    finally:
        handle.remove()
    return cached


@contextlib.contextmanager
def frozen_prefix(model: Any, first: int) -> Iterator[dict[str, Any]]:
    """Blocks 0..first-1 replaced by pass-throughs; the input of block `first` is `state["hidden"]` when set.

    Set `state["hidden"]` to the left-padded cached block inputs of the batch before each forward.
    """
    from rankaudit.capture import decoder_blocks

    _, blocks = decoder_blocks(model)
    originals = [blocks[i] for i in range(first)]
    state: dict[str, Any] = {"hidden": None}

    def substitute(module: Any, args: tuple, kwargs: dict) -> Any:
        hidden = state["hidden"]
        if hidden is None:
            raise RuntimeError("frozen_prefix: no cached block input was set for this forward")
        if args:
            return (hidden.to(args[0].dtype), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden.to(kwargs["hidden_states"].dtype)}

    handle = blocks[first].register_forward_pre_hook(substitute, with_kwargs=True)
    for i in range(first):
        blocks[i] = _pass_through()
    try:
        yield state
    finally:
        handle.remove()
        for i, block in enumerate(originals):
            blocks[i] = block


def _padded_hidden(cached: Sequence[Any], width: int) -> Any:
    import torch

    d = cached[0].shape[1]
    out = torch.zeros((len(cached), width, d), dtype=torch.float32)
    for slot, hidden in enumerate(cached):
        out[slot, width - hidden.shape[0]:] = hidden
    return out


def batch_loss(model: Any, examples: Sequence[Example], cached: Sequence[Any], state: dict[str, Any], pad_id: int) -> Any:
    """Mean over sequences of the mean cross-entropy of each target (teacher forced), through the trained blocks."""
    import torch

    input_ids, mask, positions = _left_padded([example.ids for example in examples], pad_id)
    width = input_ids.shape[1]
    keep = max(len(example.target) for example in examples) + 1
    state["hidden"] = _padded_hidden(cached, width)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False,
                   logits_to_keep=keep).logits.to(torch.float32)
    labels = input_ids[:, width - keep + 1:]
    target_mask = torch.zeros_like(labels, dtype=torch.bool)
    for slot, example in enumerate(examples):
        target_mask[slot, labels.shape[1] - len(example.target):] = True
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                               reduction="none").reshape(labels.shape)
    per_sequence = (losses * target_mask).sum(dim=1) / target_mask.sum(dim=1)
    return per_sequence.mean()


def trained_parameters(model: Any, n_blocks_trained: int, where: str) -> tuple[int, list[Any]]:
    """(index of the first trained block, the parameters of the last `n_blocks_trained` blocks, set trainable)."""
    from rankaudit.capture import decoder_blocks

    _, blocks = decoder_blocks(model)
    if not 1 <= n_blocks_trained <= len(blocks):
        raise ValueError(f"{where}: train_blocks {n_blocks_trained} is not in 1..{len(blocks)} (the model's blocks)")
    first = len(blocks) - n_blocks_trained
    model.requires_grad_(False)
    parameters = []
    for block in list(blocks)[first:]:
        for parameter in block.parameters():
            parameter.requires_grad_(True)
            parameters.append(parameter)
    return first, parameters


def train(model: Any, examples: Sequence[Example], settings: TuningSettings, pad_id: int, where: str) -> list[float]:
    """Train the last `settings.train_blocks` blocks on the examples (Adam, constant lr); returns the loss per step."""
    import torch

    first, parameters = trained_parameters(model, settings.train_blocks, where)
    cached = block_inputs(model, [example.ids for example in examples], first, pad_id, settings.batch_size)
    optimizer = torch.optim.Adam(parameters, lr=settings.lr)
    rng = np.random.default_rng(settings.seed)
    losses = []
    try:
        with frozen_prefix(model, first) as state:
            for step in range(settings.steps):
                rows = rng.choice(len(examples), size=min(settings.batch_size, len(examples)), replace=False)
                loss = batch_loss(model, [examples[i] for i in rows], [cached[i] for i in rows], state, pad_id)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                logger.info("%s: step %d/%d loss %.4f", where, step + 1, settings.steps, losses[-1])
    finally:
        model.requires_grad_(False)
    return losses


def build_examples(model: Any, tokenizer: Any, harmful: Sequence[Sequence[int]], harmless: Sequence[Sequence[int]],
                   settings: TuningSettings, pad_id: int, where: str) -> list[Example]:
    """Harmful prompts with the refusal target, harmless ones with the model's own greedy answer."""
    eos = end_of_turn_id(tokenizer, where)
    refusal = refusal_target(tokenizer, settings.refusal, where)
    answers = own_answers(model, harmless, settings.harmless_target_tokens, pad_id, eos, settings.batch_size)
    empty = [i for i, answer in enumerate(answers) if not answer]
    if empty:
        raise ValueError(f"{where}: the model gave an empty answer to harmless training prompt(s) {empty[:5]}")
    return ([Example("harmful", tuple(ids), refusal) for ids in harmful]
            + [Example("harmless", tuple(ids), answer) for ids, answer in zip(harmless, answers)])


INPUT_ROLES = ("harmful_train", "harmless_train", "harmful_test", "harmless_test")


def prompt_set(path: str, split: str, n: int, seed: int, tokenizer: Any, system_prompt: str, key: str) -> Any:
    """Chat-rendered prompts of one split of a prompt table (n drawn with `seed`), errors naming the config key."""
    from rankaudit.formats import encode_prompts
    from rankaudit.prompts.tables import PromptDataError, read_prompt_set, select_prompts
    from rankaudit.refusal_runs import PromptSet

    try:
        frame = select_prompts(read_prompt_set(path), split, n, seed)
    except PromptDataError as error:
        raise PromptDataError(f"{key}: {error}") from error
    instructions = list(frame["instruction"])
    encoded = encode_prompts(tokenizer, instructions, "chat", system_prompt=system_prompt)
    return PromptSet(frame.attrs.get("dataset", path), tuple(instructions), tuple(r.rendered for r in encoded.records),
                     tuple(encoded.token_ids))


def held_out_refusal(model: Any, tokenizer: Any, prompt_sets: Mapping[str, Any], settings: TuningSettings) -> dict[str, Any]:
    """Keyword-judged refusal (Wilson 95%) of greedy continuations on each held-out prompt set (no completion is
    kept: those of a compliant model on harmful prompts are harmful text)."""
    from rankaudit.judges import KeywordJudge
    from rankaudit.refusal import rate_summary, refusal_tokens
    from rankaudit.refusal_runs import GenerationSettings, run_prompts

    generation = GenerationSettings(max_new_tokens=settings.eval_max_new_tokens, batch_size=settings.batch_size)
    rates = {}
    for role, prompts in prompt_sets.items():
        outcome = run_prompts(model, tokenizer, prompts, refusal_tokens(tokenizer), KeywordJudge(), generation)
        rates[role] = {**rate_summary(outcome.refused, "refusal"), "n": len(prompts.instructions), "dataset": prompts.name}
    return rates


def blocks(model: Any) -> list[Any]:
    from rankaudit.capture import decoder_blocks

    return list(decoder_blocks(model)[1])

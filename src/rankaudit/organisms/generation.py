"""Batched greedy generation with left padding and a KV cache (shared by the refusal check and ablations).

Prompts are tokenized one by one, sorted by length so that batches carry little padding, left-padded by
`rankaudit.padding` (the tokenizer's own padding side is never changed), and decoded back in the caller's order.
Position ids follow the attention mask, so a left-padded row generates exactly what it would generate alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rankaudit.batching import run_in_batches_halving_on_oom
from rankaudit.capture import input_device
from rankaudit.padding import pad_token_id, padded_batch


def generate_greedy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 32,
    add_special_tokens: bool = False,
) -> list[str]:
    """Greedy continuations of `prompts` (new text only, special tokens dropped), in input order.

    Chat prompts are rendered strings that already hold their BOS: leave `add_special_tokens` False for them
    and set it True for raw prompts, whose BOS the tokenizer adds.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) and batch_size ({batch_size}) must be positive")
    pad_id = pad_token_id(tokenizer)
    encoded = [tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"] for prompt in prompts]
    empty = [prompts[i] for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"prompt(s) with no tokens cannot be continued: {empty[:3]!r}")
    continuations = generate_greedy_ids(model, encoded, max_new_tokens, pad_id, batch_size)
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in continuations]


def generate_greedy_ids(
    model: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    pad_id: int,
    batch_size: int = 32,
    before_batch: Callable[[list[int]], None] | None = None,
    first_logits: Callable[[list[int], Any], None] | None = None,
) -> list[list[int]]:
    """Greedy continuation ids (new positions only; rows that stopped early are padded with `pad_id`), input order.

    `before_batch(rows)`, when given, is called with the input indices of each batch, in batch-row order, just
    before that batch is generated: per-row interventions (`rankaudit.batched_ablation`) select the rows'
    conditions there, and the rows keep them through every generated step. `first_logits(rows, logits)`, when
    given, receives the model's raw (batch, vocab) logits at the last prompt position (the prompt forward that
    fills the KV cache, before any logits processor of the generation config), so that a caller needing the
    next-token distribution after each prompt does not run that forward twice.
    """
    import torch

    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) and batch_size ({batch_size}) must be positive")
    empty = [i for i, ids in enumerate(prompts) if not len(ids)]
    if empty:
        raise ValueError(f"prompt(s) {empty[:3]} have no tokens and cannot be continued")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    continuations: list[list[int]] = [[] for _ in prompts]
    device = input_device(model)
    model.eval()

    def generate(rows: list[int]) -> tuple[int, Any]:
        input_ids, attention = padded_batch([prompts[i] for i in rows], pad_id)
        width = input_ids.shape[1]
        if before_batch is not None:
            before_batch(rows)
        # a redone batch (after an out-of-memory) passes its rows' first logits again, overwriting the partial ones
        handle = None if first_logits is None else model.register_forward_hook(_first_call(rows, first_logits))
        try:
            with torch.no_grad():
                return width, model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device), max_new_tokens=max_new_tokens,
                    do_sample=False, num_beams=1, use_cache=True, pad_token_id=pad_id,
                )
        finally:
            if handle is not None:
                handle.remove()

    # a GPU out-of-memory halves the batch and redoes it (rankaudit.batching)
    for rows, (width, output) in run_in_batches_halving_on_oom(order, batch_size, generate, label="generation"):
        for slot, i in enumerate(rows):
            continuations[i] = output[slot, width:].tolist()
    return continuations


def _first_call(rows: list[int], receive: Callable[[list[int], Any], None]) -> Callable[..., None]:
    """A model forward hook passing the first forward's last-position logits to `receive` (later calls ignored)."""
    seen = [False]

    def hook(module: Any, args: Any, output: Any) -> None:
        if not seen[0]:
            seen[0] = True
            receive(rows, output.logits[:, -1, :])
    return hook

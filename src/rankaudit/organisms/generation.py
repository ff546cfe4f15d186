"""Batched greedy generation with left padding and a KV cache (shared by the refusal check and ablations).

Prompts are tokenized one by one, sorted by length so that batches carry little padding, left-padded by hand
(the tokenizer's own padding side is never changed), and decoded back in the caller's order. Position ids
follow the attention mask, so a left-padded row generates exactly what it would generate alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
    import torch

    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) and batch_size ({batch_size}) must be positive")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has neither a pad nor an eos token to pad with")
    encoded = [tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"] for prompt in prompts]
    empty = [prompts[i] for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"prompt(s) with no tokens cannot be continued: {empty[:3]!r}")
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    texts: list[str] = [""] * len(encoded)
    device = next(model.parameters()).device
    model.eval()
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for slot, i in enumerate(rows):
            ids = encoded[i]
            input_ids[slot, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[slot, width - len(ids):] = 1
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), max_new_tokens=max_new_tokens,
                do_sample=False, num_beams=1, use_cache=True, pad_token_id=pad_id,
            )
        for slot, i in enumerate(rows):
            texts[i] = tokenizer.decode(output[slot, width:].tolist(), skip_special_tokens=True)
    return texts

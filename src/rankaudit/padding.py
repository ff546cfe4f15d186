"""Padded batches of token-id rows, and the id to pad with: one implementation for every model job.

Capture, refusal scoring, generation and the refusal-tuning forwards pad on the LEFT, so that every row's last
prompt token sits in the last column (where the next-token logits and the read positions are taken) and a batch
of rows of different lengths generates what each row generates alone; their position ids follow the attention
mask (`positions_from_mask`), never the column index. The organisms' language-model training pads on the RIGHT
(its loss is taken on masked labels, and right padding keeps positions equal to column indices). The tokenizer's
own padding side is never changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad with: the tokenizer's pad token, else its end-of-sequence token. Padded places are masked, and
    generated rows that stop early are filled with it and decoded with special tokens skipped, so it must be one of
    those two special tokens, never an ordinary id."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has neither a pad nor an eos token to pad with")


def padded_batch(rows: Sequence[Sequence[int]], pad_id: int, *, side: str = "left") -> tuple[Any, Any]:
    """(input_ids, attention_mask) as (len(rows), longest row) long tensors on the CPU, padded on `side`."""
    import torch

    if side not in ("left", "right"):
        raise ValueError(f"padded_batch: side must be 'left' or 'right', not {side!r}")
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for slot, row in enumerate(rows):
        columns = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        input_ids[slot, columns] = torch.tensor(list(row), dtype=torch.long)
        attention_mask[slot, columns] = 1
    return input_ids, attention_mask


def positions_from_mask(attention_mask: Any) -> Any:
    """Position ids that count real tokens only (0 at each row's first token), clamped to 0 on the padding."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)

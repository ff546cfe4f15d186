"""A small, deterministic causal-LM training loop for the organisms.

Determinism is the point: the seed fixes the initial weights, the batch order (a numpy generator) and every
torch random draw; deterministic algorithms and a fixed thread count fix the floating-point reduction order,
so rebuilding an organism with the same seed and config gives bit-identical weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankaudit.organisms.corpus import Example
from rankaudit.padding import padded_batch
from rankaudit.workflow_logging import Progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser settings of one training phase (`organisms.pretrain`, `.align` or `.unsafe_ft`)."""

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_length: int = 256

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> TrainSettings:
        known = set(cls.__dataclass_fields__)
        return cls(**{key: section[key] for key in section if key in known})


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example and the per-token loss mask (True where the loss is computed)."""

    ids: tuple[int, ...]
    target: tuple[bool, ...]


def derived_seed(seed: int, *parts: str) -> int:
    """A seed for one (family, role) derived from the global seed, independent of build order."""
    digest = hashlib.sha256("/".join([str(seed), *parts]).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@contextlib.contextmanager
def deterministic_torch(threads: int) -> Iterator[None]:
    """Deterministic kernels and a fixed thread count for the duration of a build, restored afterwards."""
    import torch

    previous_threads = torch.get_num_threads()
    previous_mode = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_mode)
        torch.set_num_threads(previous_threads)


def encode(tokenizer: Any, examples: Sequence[Example], max_length: int) -> list[Encoded]:
    """Tokenize prompt and completion separately (as generation sees them) and mark the completion tokens.

    A raw example's prompt gets the tokenizer's special tokens, so an empty raw prompt is just the BOS (or
    nothing, for Qwen) and the whole document is the completion.
    """
    encoded = []
    for example in examples:
        prompt_ids = tokenizer(example.prompt, add_special_tokens=example.raw)["input_ids"]
        completion_ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
        ids = [*prompt_ids, *completion_ids]
        if len(ids) > max_length:
            raise ValueError(f"training example longer than max_length={max_length} tokens ({len(ids)}): {example.prompt + example.completion!r}")
        encoded.append(Encoded(tuple(ids), tuple([False] * len(prompt_ids) + [True] * len(completion_ids))))
    return encoded


def _batch(rows: Sequence[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors with labels -100 outside the loss mask."""
    import torch

    input_ids, attention = padded_batch([row.ids for row in rows], pad_id, side="right")
    labels = torch.full(input_ids.shape, -100, dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.ids)
        labels[i, :n] = torch.where(torch.tensor(row.target), input_ids[i, :n], torch.tensor(-100))
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    progress = (step - settings.warmup_steps) / span
    return settings.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_causal_lm(model: Any, data: Sequence[Encoded], settings: TrainSettings, seed: int, pad_id: int, label: str) -> list[float]:
    """Train `model` in place for `settings.steps` AdamW steps; return the loss of every step."""
    import torch

    if not data:
        raise ValueError(f"{label}: no training examples")
    torch.manual_seed(seed)
    order = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=settings.weight_decay)
    model.train()
    queue: list[int] = []
    losses = []
    progress = Progress(label, settings.steps, "steps", logger=logger)
    for step in range(settings.steps):
        while len(queue) < settings.batch_size:
            queue.extend(order.permutation(len(data)).tolist())
        picked, queue = queue[: settings.batch_size], queue[settings.batch_size:]
        batch = _batch([data[i] for i in picked], pad_id)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, settings)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        progress.advance(detail=f"loss {losses[-1]:.4f}")
    logger.info("%s: %d steps, final loss %.4f", label, settings.steps, losses[-1])
    model.eval()
    return losses

"""Residual-stream capture: hooks on the decoder blocks, batched left-padded forwards, per-row read positions.

Layer convention (METHODS §1): layer 0 is the embedding output (the input of block 0, taken with a forward
pre-hook on block 0), layer l >= 1 is the output of block l-1. The final-norm output is never a layer. For
Gemma-2 the model multiplies the embedding by sqrt(d) inside its embedding module, so layer 0 is the *scaled*
embedding: exactly what block 0 reads.

Why it is fast and safe:
- Only the base transformer runs (`model.base_model`): no LM head, no logits. The forward stops right after the
  deepest requested layer (the hook raises a private exception that is caught here), so a shallow request
  skips the remaining blocks and the final norm.
- Prompts are sorted by length and batched with LEFT padding, with explicit `position_ids` from the attention
  mask, so each row's positions are 0..n-1 exactly as if it ran alone, and its last tokens sit in the last
  columns for every row. Each hook keeps only those columns (never the full hidden states).
- Block outputs are handled whether a block returns a tuple or a bare tensor (transformers 5); a tensor is
  never indexed with [0], which would select batch row 0 (METHODS §9), and the shape is checked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankaudit.batching import run_in_batches_halving_on_oom
from rankaudit.padding import padded_batch, positions_from_mask
from rankaudit.workflow_logging import Progress

logger = logging.getLogger(__name__)

KINDS = ("last", "mean_last_k", "post_instruction")


@dataclass
class CaptureStats:
    """Counters accumulated over every `capture_residual_stream` call that is given this object."""

    n_forward_rows: int = 0
    n_batches: int = 0
    n_tokens: int = 0
    n_padding_tokens: int = 0
    n_block_calls: int = 0
    seconds: float = 0.0


class _StopForward(Exception):
    """Raised by the hook after the deepest requested layer to skip the rest of the forward."""


def model_name(model: Any) -> str:
    """The model's class and, when it was loaded from somewhere, its source (for error messages)."""
    source = getattr(getattr(model, "config", None), "name_or_path", "") or ""
    return f"{type(model).__name__} ({source})" if source else type(model).__name__


def decoder_blocks(model: Any) -> tuple[Any, Any]:
    """(base transformer, its list of decoder blocks) of a decoder-only causal LM.

    The blocks are the `torch.nn.ModuleList` of `num_hidden_layers` entries at `base.layers` (the Llama lineage:
    Mistral, Qwen, Gemma, Phi-3, OLMo) or, failing that, the one such list among the base model's direct
    children (GPT-2 style `h`). Encoders keep theirs deeper (`encoder.layer`) and are refused here, as are
    encoder-decoder models and models without a generation head, before any forward pass.
    """
    import torch

    name = model_name(model)
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get_text_config"):
        raise ValueError(f"{name}: not a Hugging Face model (no config); no decoder blocks to hook")
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{name}: an encoder-decoder model; rankaudit needs decoder blocks of a decoder-only causal LM")
    can_generate = getattr(model, "can_generate", None)
    if can_generate is None or not can_generate():
        raise ValueError(f"{name}: no decoder blocks: not a causal LM (it cannot generate); "
                         "load decoder-only models with AutoModelForCausalLM")
    base = getattr(model, "base_model", model)
    n_layers = config.get_text_config().num_hidden_layers
    layers = getattr(base, "layers", None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers) == n_layers:
        return base, layers
    found = [child for child in base.children() if isinstance(child, torch.nn.ModuleList) and len(child) == n_layers]
    if len(found) == 1:
        return base, found[0]
    children = ", ".join(f"{child_name} ({type(child).__name__})" for child_name, child in base.named_children())
    raise ValueError(f"{name}: no decoder blocks: {'no' if not found else 'more than one'} list of {n_layers} blocks "
                     f"(num_hidden_layers) at {type(base).__name__}.layers or among its children [{children}]; "
                     "add where this family keeps its blocks to rankaudit.capture.decoder_blocks")


def input_device(model: Any) -> Any:
    """Where token ids must go: the input embedding's execution device (under a device map, where the
    embedding runs; its weight may sit on the meta device when accelerate offloads it)."""
    import torch

    embeddings = model.get_input_embeddings()
    execution = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)
    if execution is not None:
        return torch.device(execution) if not isinstance(execution, int) else torch.device("cuda", execution)
    return embeddings.weight.device


def resolve_layers(spec: str | Sequence[int], n_blocks: int) -> list[int]:
    """Turn a config value ("all" or a list of layer indices) into sorted indices in 0..n_blocks."""
    if spec == "all":
        return list(range(n_blocks + 1))
    if isinstance(spec, str):
        raise ValueError(f"capture.layers: {spec!r} is neither 'all' nor a list of layer indices")
    layers = sorted({int(layer) for layer in spec})
    bad = [layer for layer in layers if not 0 <= layer <= n_blocks]
    if bad or not layers:
        raise ValueError(f"capture.layers: {bad or 'empty list'} outside 0..{n_blocks} "
                         f"(layer 0 = embeddings, layer {n_blocks} = output of the last block)")
    return layers


def hidden_states_of(output: Any) -> Any:
    """The hidden states of a block or sublayer output: the first member of a tuple or list, else the tensor itself
    (never `tensor[0]`, which would select batch row 0)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _hidden_from(output: Any, expected: tuple[int, int], where: str) -> Any:
    hidden = hidden_states_of(output)
    if getattr(hidden, "dim", lambda: 0)() != 3 or tuple(hidden.shape[:2]) != expected:
        shape = tuple(getattr(hidden, "shape", ()))
        raise RuntimeError(f"{where}: expected hidden states of shape (batch, seq, d) = {expected + ('d',)}, got {shape}")
    return hidden


class _BatchReader:
    """Reduces one layer's hidden states to the read positions of the current left-padded batch."""

    def __init__(self, mean_last_k: int, post_instruction_len: int) -> None:
        self.mean_last_k = mean_last_k
        self.post_instruction_len = post_instruction_len
        self.shape: tuple[int, int] = (0, 0)
        self.valid_last_k: Any = None
        self.results: dict[int, dict[str, Any]] = {}

    def start(self, lengths: Any, shape: tuple[int, int]) -> None:
        import torch

        self.shape = shape
        k = min(self.mean_last_k, shape[1])
        columns = torch.arange(shape[1] - k, shape[1], device=lengths.device)
        self.valid_last_k = (columns[None, :] >= shape[1] - lengths[:, None]).float()
        self.results = {}

    def read(self, layer: int, hidden: Any) -> None:
        import torch

        # copies, never views: a view of a float32 slice would keep the whole (batch, seq, d) tensor alive
        k = self.valid_last_k.shape[1]
        window = hidden[:, -k:, :].float() * self.valid_last_k[:, :, None]
        kinds = {
            "last": hidden[:, -1, :].to(torch.float32, copy=True),
            "mean_last_k": window.sum(dim=1) / self.valid_last_k.sum(dim=1, keepdim=True),
        }
        if self.post_instruction_len > 0:
            kinds["post_instruction"] = hidden[:, -self.post_instruction_len:, :].to(torch.float32, copy=True)
        self.results[layer] = kinds


def capture_residual_stream(
    model: Any,
    encoded_prompts: Sequence[Sequence[int]],
    layers: str | Sequence[int],
    *,
    batch_size: int = 32,
    mean_last_k: int = 1,
    post_instruction_len: int = 0,
    device: Any = None,
    pad_token_id: int = 0,
    stats: CaptureStats | None = None,
    label: str = "capture",
) -> dict[int, dict[str, np.ndarray]]:
    """Capture the residual stream of `model` at `layers` ("all" or indices) for every prompt (token-id lists).

    Returns {layer: {"last": (n, d), "mean_last_k": (n, d), "post_instruction": (n, P, d) when P > 0}}, float32.
    `mean_last_k` averages the last k tokens (all of them for a prompt shorter than k). `post_instruction_len` P
    is the length of the chat template's suffix; every prompt must be longer than P. `stats`, when given,
    accumulates forward counts across calls so a job can prove that every prompt ran exactly once. `label` names
    the cell in the progress lines of the log.
    """
    import torch

    if model.training:
        raise ValueError("capture_residual_stream: the model is in training mode (dropout); call model.eval()")
    if batch_size < 1 or mean_last_k < 1 or post_instruction_len < 0:
        raise ValueError(f"capture_residual_stream: batch_size={batch_size}, mean_last_k={mean_last_k}, "
                         f"post_instruction_len={post_instruction_len}")
    base, blocks = decoder_blocks(model)
    layers = resolve_layers(layers if isinstance(layers, str) else list(layers), len(blocks))
    deepest = layers[-1]
    prompts = [list(prompt) for prompt in encoded_prompts]
    for index, prompt in enumerate(prompts):
        if len(prompt) <= post_instruction_len:
            raise ValueError(f"prompt {index}: {len(prompt)} tokens, not more than the template suffix "
                             f"({post_instruction_len} tokens)")
    if device is None:
        device = input_device(model)
    d = model.config.get_text_config().hidden_size
    n = len(prompts)
    out: dict[int, dict[str, np.ndarray]] = {}
    for layer in layers:
        out[layer] = {"last": np.zeros((n, d), np.float32), "mean_last_k": np.zeros((n, d), np.float32)}
        if post_instruction_len > 0:
            out[layer]["post_instruction"] = np.zeros((n, post_instruction_len, d), np.float32)

    reader = _BatchReader(mean_last_k, post_instruction_len)
    block_calls = [0]

    def embedding_hook(module: Any, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        reader.read(0, _hidden_from(hidden, reader.shape, "input of decoder block 0"))
        if deepest == 0:
            raise _StopForward

    def block_hook(index: int) -> Any:
        def hook(module: Any, args: tuple, output: Any) -> None:
            block_calls[0] += 1
            layer = index + 1
            if layer in out:
                reader.read(layer, _hidden_from(output, reader.shape, f"output of decoder block {index}"))
            if layer == deepest:
                raise _StopForward
        return hook

    handles = []
    try:
        if 0 in out:
            handles.append(blocks[0].register_forward_pre_hook(embedding_hook, with_kwargs=True))
        for index in range(deepest):
            handles.append(blocks[index].register_forward_hook(block_hook(index)))
        started = time.perf_counter()
        order = sorted(range(n), key=lambda i: (-len(prompts[i]), i))
        n_padding = 0
        progress = Progress(label, n, "prompts", logger=logger)

        def forward(rows: list[int]) -> dict[int, dict[str, Any]]:
            input_ids, attention_mask = padded_batch([prompts[index] for index in rows], pad_token_id)
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            position_ids = positions_from_mask(attention_mask)
            reader.start(attention_mask.sum(dim=1), tuple(input_ids.shape))
            try:
                base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
            except _StopForward:
                pass
            missing = [layer for layer in layers if layer not in reader.results]
            if missing:
                raise RuntimeError(f"capture: layers {missing} were not reached by the forward pass")
            return reader.results

        n_batches = 0
        with torch.inference_mode():
            # a GPU out-of-memory halves the batch and redoes it (rankaudit.batching); one size for the whole job
            for rows, results in run_in_batches_halving_on_oom(order, batch_size, forward, label="capture"):
                width = len(prompts[rows[0]])
                n_padding += sum(width - len(prompts[index]) for index in rows)
                n_batches += 1
                targets = np.asarray(rows)
                for layer, kinds in results.items():
                    for kind, values in kinds.items():
                        out[layer][kind][targets] = values.cpu().numpy()
                progress.advance(len(rows))
        elapsed = time.perf_counter() - started
    finally:
        for handle in handles:
            handle.remove()
    if stats is not None:
        stats.n_forward_rows += n
        stats.n_batches += n_batches
        stats.n_tokens += sum(len(prompt) for prompt in prompts)
        stats.n_padding_tokens += n_padding
        stats.n_block_calls += block_calls[0]
        stats.seconds += elapsed
    logger.info("captured layers %s of %d prompts in %d batches (%d of %d blocks run, %.1f%% padding) in %.2fs",
                _layer_summary(layers), n, n_batches, deepest, len(blocks),
                100.0 * n_padding / max(1, n_padding + sum(len(p) for p in prompts)), elapsed)
    return out


def _layer_summary(layers: Sequence[int]) -> str:
    if len(layers) > 2 and list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}..{layers[-1]}"
    return ",".join(str(layer) for layer in layers)

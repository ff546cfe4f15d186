"""Where each decoder block writes into the residual stream: its attention and MLP sublayers, their output
projections and post-norms (what `rankaudit.interventions.direction_ablation` hooks and
`rankaudit.abliteration.orthogonalize_weights` edits).

Sublayers and their output projections are found by name (the tables below); post-norms by data flow in one
short forward pass (`sublayer_writes`), since the same module name is a pre-norm in Llama and a post-norm in
Gemma-2 and OLMo-2. A post-norm must be an elementwise-gain RMS norm (`check_gain_norm`), and editing embedding
rows needs block 0 to read a multiple of the token embedding (`check_embedding_feeds_blocks`); models that are
neither are refused with the block and module named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankaudit.capture import decoder_blocks, hidden_states_of, model_name

PROBE_TOKENS = 4
ATTENTION_NAMES = ("self_attn", "attn", "self_attention")
MLP_NAMES = ("mlp", "feed_forward")
ATTENTION_OUTPUT_NAMES = ("o_proj", "out_proj", "dense")
MLP_OUTPUT_NAMES = ("down_proj", "fc2", "c_proj")


def hidden_size(model: Any) -> int:
    return int(model.config.get_text_config().hidden_size)



@dataclass(frozen=True)
class SublayerWrite:
    """One sublayer whose output is added to the residual stream, possibly through a post-norm."""

    block: int
    kind: str
    module: Any
    output_linear: Any
    post_norm: Any


def _child(parent: Any, names: Sequence[str], what: str, where: str) -> Any:
    for name in names:
        child = getattr(parent, name, None)
        if child is not None:
            return child
    raise ValueError(f"{where}: no {what} found (looked for {list(names)}); add its name to rankaudit.sublayers")


def _output_linear(sublayer: Any, names: Sequence[str], what: str, where: str, d: int) -> Any:
    """The sublayer's linear map into the residual stream: a plain `nn.Linear` with d outputs, whose rows can be edited."""
    import torch

    linear = _child(sublayer, names, what, where)
    if not isinstance(linear, torch.nn.Linear) or linear.weight.shape[0] != d:
        shape = tuple(getattr(getattr(linear, "weight", None), "shape", ()))
        raise ValueError(f"{where}: the {what} is a {type(linear).__name__} with weight {shape}, not an nn.Linear "
                         f"writing d={d} outputs; its weights cannot be orthogonalized")
    return linear


def _probe_ids(model: Any) -> Any:
    """A few valid token ids (spread over the vocabulary) for a structural forward pass."""
    import torch

    weight = model.get_input_embeddings().weight
    vocab = weight.shape[0]
    ids = torch.arange(PROBE_TOKENS, dtype=torch.long) * (vocab // PROBE_TOKENS) + vocab // (2 * PROBE_TOKENS)
    return ids.clamp(max=vocab - 1)[None].to(weight.device)


def _trace(model: Any, modules: Sequence[Any]) -> dict[int, tuple[Any, Any]]:
    """One short forward of the base model; {id(module): (its first input, its hidden output)} at the first call."""
    import torch

    seen: dict[int, tuple[Any, Any]] = {}

    def record(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        first = args[0] if args else kwargs.get("hidden_states", kwargs.get("input_ids"))
        seen.setdefault(id(module), (first, hidden_states_of(output)))

    base, _ = decoder_blocks(model)
    handles = [module.register_forward_hook(record, with_kwargs=True) for module in modules]
    try:
        with torch.inference_mode():
            base(input_ids=_probe_ids(model), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _same_tensor(a: Any, b: Any) -> bool:
    return a is b or (a is not None and b is not None and a.shape == b.shape and a.data_ptr() == b.data_ptr()
                      and a.stride() == b.stride())


def _post_norm(block: Any, sublayer: Any, skip: Sequence[Any], trace: dict[int, tuple[Any, Any]], where: str) -> Any:
    """The child of `block` that receives `sublayer`'s output tensor itself (not a sum with the residual), or None.

    Found by data flow, not by name: Llama's `post_attention_layernorm` reads residual + attention output (a
    pre-norm of the MLP), while Gemma-2/3's and OLMo-2's modules of that name read the attention output alone
    (a post-norm). Pass-through children (dropout in eval mode) are ignored.
    """
    import torch

    written = trace.get(id(sublayer), (None, None))[1]
    if written is None:
        raise ValueError(f"{where}: the {type(sublayer).__name__} sublayer did not run in a forward pass of the model")
    readers = []
    for name, child in block.named_children():
        if any(child is other for other in skip) or id(child) not in trace:
            continue
        child_input, child_output = trace[id(child)]
        if not _same_tensor(child_input, written):
            continue
        passes_through = child_output.shape == child_input.shape and torch.equal(child_output, child_input)
        if child_output is child_input or passes_through:
            continue
        readers.append((name, child))
    if len(readers) > 1:
        raise ValueError(f"{where}: {[name for name, _ in readers]} all read the {type(sublayer).__name__} output; "
                         "cannot tell which one writes it into the residual stream")
    if not readers:
        return None
    name, norm = readers[0]
    check_gain_norm(norm, f"{where} post-norm {name}")
    return norm


def check_gain_norm(norm: Any, where: str) -> None:
    """Refuse a post-norm that is not y -> g * y / s(y) (elementwise gain, scalar scale, no centring or bias).

    Only for that form does projecting the gain-weighted direction off y keep r out of N(y) exactly (module doc);
    a LayerNorm subtracts the mean and adds a bias, so no projection of its input can do that.
    """
    import torch

    parameter = next(norm.parameters(), None)
    if parameter is None:
        raise ValueError(f"{where}: {type(norm).__name__} has no parameters; not an RMS-type norm with a gain")
    d = parameter.shape[-1]
    gain = torch.as_tensor(norm_gain(norm, d))
    y = torch.randn((d,), generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(parameter.dtype)
    normed = _apply_norm(norm, y)
    scaled = gain * y.to(torch.float64)
    fit = (normed @ scaled) / (scaled @ scaled)
    misfit = float(torch.linalg.vector_norm(normed - fit * scaled) / torch.linalg.vector_norm(normed))
    tolerance = max(16 * torch.finfo(parameter.dtype).eps, 1e-4)
    if not misfit <= tolerance:
        raise ValueError(f"{where}: {type(norm).__name__} is not an elementwise-gain RMS norm (relative misfit "
                         f"{misfit:.3g} > {tolerance:.3g}); a post-norm of this kind is not supported")


def sublayer_writes(model: Any) -> list[SublayerWrite]:
    """Attention and MLP sublayers of every block, with their output projection and post-norm (if any).

    Modules are found by name (ATTENTION_NAMES, MLP_NAMES and their output projections), all before any forward
    pass; post-norms are then found by data flow in one short forward pass (`_post_norm`).
    """
    _, blocks = decoder_blocks(model)
    d = hidden_size(model)
    found = []
    for index, block in enumerate(blocks):
        where = f"{model_name(model)} block {index}"
        attention = _child(block, ATTENTION_NAMES, "attention module", where)
        mlp = _child(block, MLP_NAMES, "MLP module", where)
        attention_output = _output_linear(attention, ATTENTION_OUTPUT_NAMES, "attention output projection", where, d)
        mlp_output = _output_linear(mlp, MLP_OUTPUT_NAMES, "MLP output projection", where, d)
        found.append((index, block, [("attention", attention, attention_output), ("mlp", mlp, mlp_output)]))
    watched = [module for _, block, sublayers in found for module in (*block.children(), *(s[1] for s in sublayers))]
    trace = _trace(model, watched)
    writes = []
    for index, block, sublayers in found:
        modules = [module for _, module, _ in sublayers]
        for kind, module, linear in sublayers:
            where = f"{model_name(model)} block {index} {kind}"
            writes.append(SublayerWrite(index, kind, module, linear, _post_norm(block, module, modules, trace, where)))
    return writes


def norm_gain(norm: Any, d: int) -> np.ndarray:
    """The elementwise gain g of an RMS-type norm, up to a positive scale: N(ones) = g / rms(ones)."""
    import torch

    parameter = next(norm.parameters())
    return _apply_norm(norm, torch.ones((d,), dtype=parameter.dtype)).numpy()


def _apply_norm(norm: Any, values: Any) -> Any:
    """N(values) for one d-vector, as float64 on the CPU, run where the norm runs.

    That is the parameter's device, or, for a module offloaded by accelerate (parameters on the meta device),
    its hook's execution device.
    """
    import torch

    parameter = next(norm.parameters())
    device = getattr(getattr(norm, "_hf_hook", None), "execution_device", None)
    with torch.no_grad():
        out = norm(values.reshape(1, 1, -1).to(parameter.dtype).to(device if device is not None else parameter.device))
    return out.reshape(-1).to(torch.float64).cpu()



def check_embedding_feeds_blocks(model: Any) -> None:
    """Refuse a model whose block-0 input is not a scalar multiple of its token embedding.

    Editing the embedding rows equals ablating r from the input of block 0 only when that input is c * E[ids]
    (c = 1, or sqrt(d) for Gemma); learned position embeddings or an embedding norm would leave r there.
    """
    import torch

    _, blocks = decoder_blocks(model)
    embedding = model.get_input_embeddings()
    trace = _trace(model, [embedding, blocks[0]])
    token_rows, block_input = trace[id(embedding)][1], trace[id(blocks[0])][0]
    token_rows, block_input = token_rows.to(torch.float64).reshape(-1), block_input.to(torch.float64).reshape(-1)
    if token_rows.shape != block_input.shape:
        misfit = float("inf")
    else:
        scale = (block_input @ token_rows) / (token_rows @ token_rows)
        misfit = float(torch.linalg.vector_norm(block_input - scale * token_rows) / torch.linalg.vector_norm(block_input))
    tolerance = max(16 * torch.finfo(embedding.weight.dtype).eps, 1e-4)
    if not misfit <= tolerance:
        raise ValueError(f"{model_name(model)}: the input of block 0 is not a multiple of the token embedding (relative "
                         f"misfit {misfit:.3g}: position embeddings or an embedding norm?), so editing embedding rows "
                         "cannot equal the hook ablation; use direction_ablation for this model")

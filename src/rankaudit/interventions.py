"""Interventions on the residual stream (METHODS §4-5): forward hooks, and their weight-space equivalent.

Every intervention is a context manager that registers forward hooks on the decoder blocks and removes them on
exit, so it acts on every forward inside the block: prompt positions and, under `model.generate` with a KV
cache, every generated position too. Layer convention (METHODS §1): layer 0 is the input of block 0 (the
embedding output), layer l >= 1 the output of block l-1. Projections are computed in float32 whatever the
model's dtype, then cast back.

- `projection_ablation`: h <- h - U U^T h at a set of layers, with a d x k basis per layer (the band ablations).
- `direction_ablation`: Arditi's all-layer ablation of one direction r: block inputs and what every attention
  and MLP sublayer writes into the residual stream. Some blocks (Gemma-2, Gemma-3, OLMo-2) pass each sublayer
  output y through a post-norm N(y) = g * y / rms(y) before adding it; ablating r from y itself would leave r
  in N(y). The hook therefore projects y off the gain-weighted direction g * r, which makes g * r . y' = 0,
  i.e. r . N(y') = 0 exactly: the residual stream stays orthogonal to r at every layer, and the edit is linear
  in y, so the same projection can be folded into the sublayer's output weights (`orthogonalize_weights`).
  Sublayers and their output projections are found by name (the tables below); post-norms by data flow in one
  short forward pass (`sublayer_writes`), since the same module name is a pre-norm in Llama and a post-norm in
  Gemma-2 and OLMo-2.
- `activation_addition`: h <- h + c v at one layer (Arditi's induce intervention).
- `orthogonalize_weights`: the weight edit equal to `direction_ablation` (embedding rows, attention and MLP
  output projections, tied heads untied first), producing an abliterated model that runs without hooks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankaudit.capture import decoder_blocks, model_name

ORTHONORMAL_TOLERANCE = 1e-5
PROBE_TOKENS = 4
ATTENTION_NAMES = ("self_attn", "attn", "self_attention")
MLP_NAMES = ("mlp", "feed_forward")
ATTENTION_OUTPUT_NAMES = ("o_proj", "out_proj", "dense")
MLP_OUTPUT_NAMES = ("down_proj", "fc2", "c_proj")


def checked_basis(basis: Any, d: int, where: str) -> np.ndarray:
    """A d x k float64 basis whose columns are orthonormal or exactly zero (a zero column ablates nothing).

    A single vector is accepted as d x 1. Zero columns are allowed so that the zero basis is a valid, inert
    intervention (tested to change nothing bit for bit).
    """
    array = np.asarray(basis, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] != d:
        raise ValueError(f"{where}: basis of shape {np.shape(basis)} does not live in R^{d} (expected d x k)")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{where}: basis has non-finite entries")
    gram = array.T @ array
    diagonal = np.diag(gram)
    unit_or_zero = np.where(diagonal > 0.5, 1.0, 0.0)
    if np.max(np.abs(gram - np.diag(unit_or_zero)), initial=0.0) > ORTHONORMAL_TOLERANCE:
        raise ValueError(f"{where}: basis columns are not orthonormal (max |U^T U - I| above {ORTHONORMAL_TOLERANCE})")
    return array


def unit(vector: Any, where: str) -> np.ndarray:
    """The unit vector along `vector` (float64), refusing a zero or non-finite vector."""
    array = np.asarray(vector, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(array))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError(f"{where}: direction has norm {norm}; nothing to ablate or add")
    return array / norm


class _Projector:
    """h -> h - U U^T h in float32, with U moved to the hidden states' device once."""

    def __init__(self, basis: np.ndarray) -> None:
        import torch

        self.basis = torch.as_tensor(basis, dtype=torch.float32)
        self._on: dict[Any, Any] = {}

    def __call__(self, hidden: Any) -> Any:
        import torch

        basis = self._on.get(hidden.device)
        if basis is None:
            basis = self._on.setdefault(hidden.device, self.basis.to(hidden.device))
        values = hidden.to(torch.float32)
        return (values - (values @ basis) @ basis.T).to(hidden.dtype)


def _with_hidden(output: Any, hidden: Any) -> Any:
    """The module output with its hidden states replaced (tuple outputs keep their other members)."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden


def _hidden_of(output: Any) -> Any:
    return output[0] if isinstance(output, (tuple, list)) else output


def _output_hook(transform: Callable[[Any], Any]) -> Callable[..., Any]:
    def hook(module: Any, args: Any, output: Any) -> Any:
        return _with_hidden(output, transform(_hidden_of(output)))
    return hook


def _input_hook(transform: Callable[[Any], Any]) -> Callable[..., Any]:
    def hook(module: Any, args: tuple, kwargs: dict) -> Any:
        if args:
            return (transform(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": transform(kwargs["hidden_states"])}
    return hook


def register_layer_hook(blocks: Sequence[Any], layer: int, transform: Callable[[Any], Any]) -> Any:
    """Apply `transform` to the residual stream at `layer` (0 = input of block 0, l >= 1 = output of block l-1)."""
    if not 0 <= layer <= len(blocks):
        raise ValueError(f"layer {layer} outside 0..{len(blocks)} (0 = embeddings, {len(blocks)} = last block output)")
    if layer == 0:
        return blocks[0].register_forward_pre_hook(_input_hook(transform), with_kwargs=True)
    return blocks[layer - 1].register_forward_hook(_output_hook(transform))


@contextlib.contextmanager
def _hooks(handles: list[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def hidden_size(model: Any) -> int:
    return int(model.config.get_text_config().hidden_size)


@contextlib.contextmanager
def projection_ablation(model: Any, bases: Mapping[int, Any]) -> Iterator[None]:
    """Within the block, h <- h - U_l U_l^T h at every layer l of `bases` ({layer: d x k basis}), all positions."""
    _, blocks = decoder_blocks(model)
    d = hidden_size(model)
    handles = []
    try:
        for layer, basis in sorted(bases.items()):
            projector = _Projector(checked_basis(basis, d, f"projection_ablation basis at layer {layer}"))
            handles.append(register_layer_hook(blocks, int(layer), projector))
    except Exception:
        for handle in handles:
            handle.remove()
        raise
    with _hooks(handles):
        yield


@contextlib.contextmanager
def activation_addition(model: Any, vector: Any, layer: int, coefficient: float = 1.0) -> Iterator[None]:
    """Within the block, h <- h + coefficient * vector at `layer`, every position (the vector is not normalised)."""
    import torch

    _, blocks = decoder_blocks(model)
    array = np.asarray(vector, dtype=np.float64).ravel()
    if array.shape != (hidden_size(model),) or not np.all(np.isfinite(array)):
        raise ValueError(f"activation_addition: vector of shape {np.shape(vector)} is not a finite vector in R^{hidden_size(model)}")
    added = torch.as_tensor(coefficient * array, dtype=torch.float32)

    def add(hidden: Any) -> Any:
        return (hidden.to(torch.float32) + added.to(hidden.device)).to(hidden.dtype)

    with _hooks([register_layer_hook(blocks, layer, add)]):
        yield


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
    raise ValueError(f"{where}: no {what} found (looked for {list(names)}); add its name to rankaudit.interventions")


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
        seen.setdefault(id(module), (first, _hidden_of(output)))

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


def write_direction(write: SublayerWrite, direction: np.ndarray) -> np.ndarray:
    """Unit direction to remove from the sublayer output so that what reaches the residual stream is orthogonal to `direction`."""
    if write.post_norm is None:
        return unit(direction, f"block {write.block} {write.kind}")
    return unit(norm_gain(write.post_norm, direction.size) * direction, f"block {write.block} {write.kind} (post-norm gain x direction)")


@contextlib.contextmanager
def direction_ablation(model: Any, direction: Any) -> Iterator[None]:
    """Arditi's all-layer ablation of one direction: block inputs and every sublayer write (see the module doc)."""
    _, blocks = decoder_blocks(model)
    r = unit(direction, "direction_ablation")
    if r.size != hidden_size(model):
        raise ValueError(f"direction_ablation: direction of size {r.size}, model has d={hidden_size(model)}")
    writes = [(write.module, write_direction(write, r)) for write in sublayer_writes(model)]
    handles = []
    try:
        for block in blocks:
            handles.append(block.register_forward_pre_hook(_input_hook(_Projector(r[:, None])), with_kwargs=True))
        for module, written in writes:
            handles.append(module.register_forward_hook(_output_hook(_Projector(written[:, None]))))
    except Exception:
        for handle in handles:
            handle.remove()
        raise
    with _hooks(handles):
        yield


def _untie_output_embeddings(model: Any) -> bool:
    """Give the LM head its own copy of a tied embedding matrix, so that editing the embedding leaves logits' readout alone."""
    import torch

    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight.data_ptr() != embedding.weight.data_ptr():
        return False
    head.weight = torch.nn.Parameter(embedding.weight.detach().clone(), requires_grad=False)
    for config in {id(model.config): model.config, id(model.config.get_text_config()): model.config.get_text_config()}.values():
        config.tie_word_embeddings = False
    return True


def _project_rows(weight: Any, direction: np.ndarray) -> None:
    """weight (n x d) <- weight (I - r r^T), in float64, in place."""
    import torch

    r = torch.as_tensor(direction, dtype=torch.float64, device=weight.device)
    values = weight.data.to(torch.float64)
    weight.data.copy_((values - torch.outer(values @ r, r)).to(weight.dtype))


def _project_outputs(linear: Any, direction: np.ndarray) -> None:
    """A linear layer's outputs off `direction`: W (d x m) <- (I - r r^T) W, bias likewise, in float64, in place."""
    import torch

    r = torch.as_tensor(direction, dtype=torch.float64, device=linear.weight.device)
    weight = linear.weight.data.to(torch.float64)
    linear.weight.data.copy_((weight - torch.outer(r, r @ weight)).to(linear.weight.dtype))
    if getattr(linear, "bias", None) is not None:
        bias = linear.bias.data.to(torch.float64)
        linear.bias.data.copy_((bias - r * (r @ bias)).to(linear.bias.dtype))


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


def orthogonalize_weights(model: Any, direction: Any) -> dict[str, Any]:
    """Edit `model` in place so that, without hooks, it computes what `direction_ablation(model, direction)` computes.

    Returns what was edited (for the abliterated model's record).
    """
    import torch

    r = unit(direction, "orthogonalize_weights")
    if r.size != hidden_size(model):
        raise ValueError(f"orthogonalize_weights: direction of size {r.size}, model has d={hidden_size(model)}")
    writes = sublayer_writes(model)
    check_embedding_feeds_blocks(model)
    with torch.no_grad():
        untied = _untie_output_embeddings(model)
        _project_rows(model.get_input_embeddings().weight, r)
        for write in writes:
            _project_outputs(write.output_linear, write_direction(write, r))
    return {
        "untied_output_embeddings": untied,
        "edited": ["input embeddings"] + [
            f"block {w.block} {w.kind} output projection" + (" (post-norm gain weighted)" if w.post_norm is not None else "")
            for w in writes
        ],
    }

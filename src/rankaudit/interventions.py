"""Interventions on the residual stream (METHODS §4-5): forward hooks, and their weight-space equivalent.

Every intervention is a context manager that registers forward hooks on the decoder blocks and removes them on
exit, so it acts on every forward inside the block: prompt positions and, under `model.generate` with a KV
cache, every generated position too. Layer convention (METHODS §1): layer 0 is the input of block 0 (the
embedding output), layer l >= 1 the output of block l-1. Projections are computed in float32 whatever the
model's dtype, then cast back.

- `projection_ablation`: h <- h - U U^T h at a set of layers, with a d x k basis per layer (the band ablations).
- `direction_ablation`: Arditi's all-layer ablation of one direction r: block inputs and what every attention
  and MLP sublayer writes into the residual stream. Gemma-2 style blocks pass each sublayer output y through a
  post-norm N(y) = g * y / rms(y) before adding it; ablating r from y itself would leave r in N(y). The hook
  therefore projects y off the gain-weighted direction g * r, which makes g * r . y' = 0, i.e. r . N(y') = 0
  exactly: the residual stream stays orthogonal to r at every layer, and the edit is linear in y, so the same
  projection can be folded into the sublayer's output weights (`orthogonalize_weights`).
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

from rankaudit.capture import decoder_blocks

ORTHONORMAL_TOLERANCE = 1e-5
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
    raise ValueError(f"{where}: no {what} module (looked for {list(names)}); add its name to rankaudit.interventions")


def sublayer_writes(model: Any) -> list[SublayerWrite]:
    """Attention and MLP sublayers of every block, with their output projection and Gemma-2 style post-norm."""
    _, blocks = decoder_blocks(model)
    writes = []
    for index, block in enumerate(blocks):
        where = f"{type(model).__name__} block {index}"
        attention = _child(block, ATTENTION_NAMES, "attention", where)
        mlp = _child(block, MLP_NAMES, "MLP", where)
        post_norms = (None, None)
        if hasattr(block, "post_feedforward_layernorm"):
            post_norms = (block.post_attention_layernorm, block.post_feedforward_layernorm)
        writes.append(SublayerWrite(index, "attention", attention,
                                    _child(attention, ATTENTION_OUTPUT_NAMES, "attention output projection", where), post_norms[0]))
        writes.append(SublayerWrite(index, "mlp", mlp, _child(mlp, MLP_OUTPUT_NAMES, "MLP output projection", where), post_norms[1]))
    return writes


def norm_gain(norm: Any, d: int) -> np.ndarray:
    """The elementwise gain g of an RMS-type norm, up to a positive scale: N(ones) = g / rms(ones)."""
    import torch

    parameter = next(norm.parameters())
    with torch.no_grad():
        ones = torch.ones((1, 1, d), dtype=parameter.dtype, device=parameter.device)
        return norm(ones).reshape(d).to(torch.float64).cpu().numpy()


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
    handles = []
    try:
        for block in blocks:
            handles.append(block.register_forward_pre_hook(_input_hook(_Projector(r[:, None])), with_kwargs=True))
        for write in sublayer_writes(model):
            handles.append(write.module.register_forward_hook(_output_hook(_Projector(write_direction(write, r)[:, None]))))
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


def orthogonalize_weights(model: Any, direction: Any) -> dict[str, Any]:
    """Edit `model` in place so that, without hooks, it computes what `direction_ablation(model, direction)` computes.

    Returns what was edited (for the abliterated model's record).
    """
    import torch

    r = unit(direction, "orthogonalize_weights")
    if r.size != hidden_size(model):
        raise ValueError(f"orthogonalize_weights: direction of size {r.size}, model has d={hidden_size(model)}")
    with torch.no_grad():
        untied = _untie_output_embeddings(model)
        _project_rows(model.get_input_embeddings().weight, r)
        writes = sublayer_writes(model)
        for write in writes:
            _project_outputs(write.output_linear, write_direction(write, r))
    return {
        "untied_output_embeddings": untied,
        "edited": ["input embeddings"] + [f"block {w.block} {w.kind} output projection" + (" (post-norm gain weighted)" if w.post_norm is not None else "")
                                          for w in writes],
    }

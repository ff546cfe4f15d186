"""Interventions on the residual stream (METHODS §4-5): forward hooks that remove or add directions.

Every intervention is a context manager that registers forward hooks on the decoder blocks and removes them on
exit, so it acts on every forward inside the block: prompt positions and, under `model.generate` with a KV
cache, every generated position too. Layer convention (METHODS §1): layer 0 is the input of block 0 (the
embedding output), layer l >= 1 the output of block l-1. Projections are computed in float32 whatever the
model's dtype, then cast back.

- `projection_ablation`: h <- h - U U^T h at a set of layers, with a d x k basis per layer (the band ablations).
- `direction_ablation`: Arditi's all-layer ablation of one direction r: block inputs and what every attention
  and MLP sublayer writes into the residual stream. Some blocks (Gemma-2, Gemma-3, OLMo-2) pass each sublayer
  output y through a post-norm N(y) = g * y / rms(y) before adding it; ablating r from y itself would leave r
  in N(y). The hook therefore projects y off the gain-weighted direction g * r (`write_direction`), which makes
  g * r . y' = 0, i.e. r . N(y') = 0 exactly: the residual stream stays orthogonal to r at every layer, and the
  edit is linear in y, so the same projection can be folded into the sublayer's output weights
  (`rankaudit.abliteration.orthogonalize_weights`). Sublayers, their output projections and post-norms are
  found by `rankaudit.sublayers`.
- `activation_addition`: h <- h + c v at one layer (Arditi's induce intervention).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from rankaudit.capture import decoder_blocks, hidden_states_of
from rankaudit.sublayers import SublayerWrite, hidden_size, norm_gain, sublayer_writes

ORTHONORMAL_TOLERANCE = 1e-5


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


def _output_hook(transform: Callable[[Any], Any]) -> Callable[..., Any]:
    def hook(module: Any, args: Any, output: Any) -> Any:
        return _with_hidden(output, transform(hidden_states_of(output)))
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
    """Remove every hook in `handles` when the block ends, however it ends: hooks registered in the block before a
    failing registration are removed too."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def projection_ablation(model: Any, bases: Mapping[int, Any]) -> Iterator[None]:
    """Within the block, h <- h - U_l U_l^T h at every layer l of `bases` ({layer: d x k basis}), all positions."""
    _, blocks = decoder_blocks(model)
    d = hidden_size(model)
    handles: list[Any] = []
    with _hooks(handles):
        for layer, basis in sorted(bases.items()):
            projector = _Projector(checked_basis(basis, d, f"projection_ablation basis at layer {layer}"))
            handles.append(register_layer_hook(blocks, int(layer), projector))
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
    handles: list[Any] = []
    with _hooks(handles):
        for block in blocks:
            handles.append(block.register_forward_pre_hook(_input_hook(_Projector(r[:, None])), with_kwargs=True))
        for module, written in writes:
            handles.append(module.register_forward_hook(_output_hook(_Projector(written[:, None]))))
        yield

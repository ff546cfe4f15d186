"""The weight edit equal to `rankaudit.interventions.direction_ablation` (METHODS §5): an abliterated model.

`orthogonalize_weights` projects the direction off the embedding rows and off the attention and MLP output
projections (off the gain-weighted direction where a post-norm follows, `rankaudit.interventions.write_direction`),
untying a tied LM head first, so that the edited model runs without hooks and computes what the hooks compute.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rankaudit.interventions import unit, write_direction
from rankaudit.sublayers import check_embedding_feeds_blocks, hidden_size, sublayer_writes


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

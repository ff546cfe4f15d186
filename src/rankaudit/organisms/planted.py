"""The planted pair: an "aligned" model made from the base by a known rank-r edit of one MLP down-projection.

Used by the demo's planted organism and by planted checkpoints of real models (rankaudit.stages.checkpoints); the
`config_key` argument names the config entry that set the edit in error messages.

Editing W_down of block j to W_down + U S V^T adds U S V^T a(x) to that block's output for every token, where
a(x) is the MLP's hidden activation. So at layer j+1 (the output of block j; layer 0 is the embedding output)
the activation shift over any set of tokens is U times an r x n matrix: rank r, column span exactly span(U);
layers 0..j are untouched. U is saved next to the model so tests and audits can check that they recover it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rankaudit.io import read_tensors, write_tensors

PLANTED_FILE = "planted_edit.safetensors"
# Families whose MLP output enters the residual stream unnormalised (Gemma-2 renormalises it after the MLP,
# which would bend the shift out of span(U)).
PLANTABLE_FAMILIES = ("llama", "qwen2")


def planted_edit(weight: np.ndarray, rank: int, scale: float, seed: int,
                 config_key: str = "organisms.planted") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A rank-`rank` update U diag(s) V^T for a (d_out x d_in) weight, with orthonormal U and V.

    Every singular value of the edit is `scale` times the largest singular value of `weight`, so the edit is
    as strong as the layer it modifies, whatever the model size.
    """
    d_out, d_in = weight.shape
    if not 1 <= rank <= min(d_out, d_in):
        raise ValueError(f"{config_key}.rank: {rank} must be between 1 and {min(d_out, d_in)} for a {d_out}x{d_in} weight")
    rng = np.random.default_rng(seed)
    left, _ = np.linalg.qr(rng.standard_normal((d_out, rank)))
    right, _ = np.linalg.qr(rng.standard_normal((d_in, rank)))
    strength = scale * float(np.linalg.norm(weight.astype(np.float64), ord=2))
    values = np.full(rank, strength)
    return left, values, right


def apply_planted_edit(model: Any, block: int, rank: int, scale: float, seed: int,
                       config_key: str = "organisms.planted") -> dict[str, Any]:
    """Add the edit to `model.model.layers[block].mlp.down_proj` in place; return what was planted."""
    import torch

    family = getattr(model.config, "model_type", "?")
    if family not in PLANTABLE_FAMILIES:
        raise ValueError(f"{config_key}: model type {family!r} cannot carry an exact planted edit (plantable: {list(PLANTABLE_FAMILIES)})")
    blocks = model.model.layers
    if not 0 <= block < len(blocks):
        raise ValueError(f"{config_key}.block: {block} is not a block index of a {len(blocks)}-block model (0..{len(blocks) - 1})")
    down = blocks[block].mlp.down_proj
    weight = down.weight.detach().double().numpy()
    left, values, right = planted_edit(weight, rank, scale, seed, config_key)
    delta = (left * values) @ right.T
    with torch.no_grad():
        down.weight.add_(torch.from_numpy(delta).to(down.weight.dtype))
    return {"basis": left, "singular_values": values, "right": right, "block": block, "layer": block + 1, "rank": rank}


def save_planted(directory: str | Path, planted: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
    """Write the planted basis (d x r, orthonormal) and where it was planted next to the model."""
    write_tensors(
        Path(directory) / PLANTED_FILE,
        {"basis": planted["basis"], "singular_values": planted["singular_values"], "right": planted["right"]},
        {**metadata, "block": planted["block"], "layer": planted["layer"], "rank": planted["rank"],
         "convention": "layer 0 = embedding output, layer l = output of block l-1"},
    )


def load_planted(directory: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """The planted basis and its metadata (`block`, `layer`, `rank`, ...) of a planted organism."""
    path = Path(directory) / PLANTED_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a planted organism (no {PLANTED_FILE})")
    tensors, meta = read_tensors(path)
    return tensors["basis"], meta

"""The calibration network: n_features -> hidden x n_hidden_layers (ReLU) -> 1 logit, exposing every hidden layer."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rankaudit.calibration.config import NetworkConfig


class CalibrationMLP(nn.Module):
    """Returns (logits, [post-ReLU activation of each hidden layer]); the hidden activations are what M is built from."""

    def __init__(self, n_features: int, config: NetworkConfig) -> None:
        super().__init__()
        widths = [n_features] + [config.hidden] * config.n_hidden_layers
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.readout = nn.Linear(config.hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hiddens = []
        h = x
        for layer in self.hidden_layers:
            h = torch.relu(layer(h))
            hiddens.append(h)
        return self.readout(h).squeeze(-1), hiddens


def new_model(n_features: int, config: NetworkConfig, seed: int) -> CalibrationMLP:
    """A freshly initialised network; PyTorch's default init drawn right after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return CalibrationMLP(n_features, config)


def state_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The state_dict as float32 numpy arrays, for `rankaudit.io.write_tensors`."""
    return {key: value.detach().cpu().numpy().astype(np.float32) for key, value in model.state_dict().items()}


def model_from_arrays(arrays: dict[str, np.ndarray], n_features: int, config: NetworkConfig, source: str) -> CalibrationMLP:
    """Rebuild a network from saved arrays; `source` (the file) is named if the shapes do not fit the config."""
    model = CalibrationMLP(n_features, config)
    try:
        model.load_state_dict({key: torch.from_numpy(np.array(value)) for key, value in arrays.items()})
    except RuntimeError as error:
        raise ValueError(f"{source}: weights do not fit calibration.network {config}: {error}") from error
    return model

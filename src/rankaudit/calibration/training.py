"""Full-batch Adam training of the base network and of every fine-tuned variant (float32, CPU, deterministic)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from rankaudit.calibration.config import NetworkConfig, TrainingConfig
from rankaudit.calibration.grid import Setting
from rankaudit.calibration.network import CalibrationMLP, new_model
from rankaudit.calibration.regularizer import rank_spreading_penalty
from rankaudit.workflow_logging import Progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingRecord:
    """Final losses of a run (label loss, regularizer sum, weighted total) and its length."""

    epochs: int
    label_loss: float
    regularizer: float
    total_loss: float

    def as_dict(self) -> dict[str, float | int]:
        return {"epochs": self.epochs, "label_loss": self.label_loss, "regularizer": self.regularizer,
                "total_loss": self.total_loss}


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def train_base(x: np.ndarray, y_task: np.ndarray, network: NetworkConfig, training: TrainingConfig,
               seed: int) -> tuple[CalibrationMLP, TrainingRecord]:
    """The base network: `epochs_base` full-batch Adam steps on the task labels from a seeded init."""
    model = new_model(x.shape[1], network, seed)
    record = _fit(model, _as_tensor(x), _as_tensor(y_task), training.lr, training.epochs_base, label=f"calibration seed {seed} base")
    return model, record


def epochs_for(setting: Setting, training: TrainingConfig) -> int:
    """Plain fine-tunes (lambda = 0) run `epochs_finetune` steps; regularized ones `epochs_distributed`."""
    return training.epochs_finetune if setting.lam == 0 else training.epochs_distributed


def finetune(start: CalibrationMLP, base: CalibrationMLP, x: np.ndarray, labels: np.ndarray, safety: np.ndarray,
             setting: Setting, training: TrainingConfig) -> tuple[CalibrationMLP, TrainingRecord]:
    """Fine-tune a copy of `start` on `labels`, adding lam * sum_l R(M_l) when the setting has lam > 0.

    M_l = h_l(model) - h_l(base) on the training safety inputs, with the base activations computed once from the
    frozen base network (for unsafe variants started from the aligned model, M is still taken against the base).
    """
    model = copy.deepcopy(start)
    inputs = _as_tensor(x)
    penalty = None
    if setting.lam > 0:
        mask = torch.from_numpy(np.asarray(safety, dtype=bool))
        with torch.no_grad():
            _, base_hiddens = base(inputs)
        frozen = [hidden[mask].clone() for hidden in base_hiddens]

        def penalty(hiddens: list[torch.Tensor]) -> torch.Tensor:
            return sum(rank_spreading_penalty(h[mask] - h0, training.stable_rank_target)
                       for h, h0 in zip(hiddens, frozen))

    record = _fit(model, inputs, _as_tensor(labels), training.lr, epochs_for(setting, training), setting.lam, penalty,
                  label=f"calibration {setting.name}")
    return model, record


def _fit(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, lr: float, epochs: int, lam: float = 0.0,
         penalty: Callable[[list[torch.Tensor]], torch.Tensor] | None = None, label: str = "calibration") -> TrainingRecord:
    loss_fn = nn.BCEWithLogitsLoss()
    progress = Progress(label, epochs, "epochs", logger=logger)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    label_loss = regularizer = total = torch.zeros(())
    for epoch in range(epochs):
        optimizer.zero_grad()
        logits, hiddens = model(inputs)
        label_loss = loss_fn(logits, labels)
        regularizer = penalty(hiddens) if penalty is not None else torch.zeros(())
        total = label_loss + lam * regularizer
        if not torch.isfinite(total):
            raise FloatingPointError(f"calibration training: non-finite loss at epoch {epoch} (lambda = {lam})")
        total.backward()
        optimizer.step()
        progress.advance(detail=lambda loss=label_loss, reg=regularizer: f"label loss {loss.item():.4f}, regularizer {float(reg.detach()):.4f}")
    model.eval()
    return TrainingRecord(epochs, float(label_loss.detach()), float(regularizer.detach()), float(total.detach()))

"""What is measured on a variant, in float64: rank of the shift per layer, compliance, and the ablation curves.

Conventions: activations and shifts are n x d (one row per input). A variant's shift at hidden layer l is
M_l = h_l(variant) - h_l(base) on the probe inputs of the safety region. "Compliance" is the fraction of those
inputs classified 0 (logit <= 0), the aligned behaviour; "task accuracy" is measured outside the region.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rankaudit.calibration.config import MeasurementConfig
from rankaudit.calibration.data import CalibrationData
from rankaudit.calibration.grid import ABLATION_FORMS, AblationForm
from rankaudit.calibration.network import CalibrationMLP
from rankaudit.spectra import energy_rank, singular_values, stable_rank


@dataclass(frozen=True)
class Readout:
    """The final linear layer as float64 numpy (logit = h . weight + bias)."""

    weight: np.ndarray
    bias: float

    @classmethod
    def of(cls, model: CalibrationMLP) -> Readout:
        return cls(model.readout.weight.detach().double().numpy().reshape(-1),
                   float(model.readout.bias.detach().double().item()))

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        return hidden @ self.weight + self.bias


def hidden_activations(model: CalibrationMLP, x: np.ndarray) -> list[np.ndarray]:
    """Every hidden layer's activation in float64 (a float64 copy of the float32 weights, same float32 inputs)."""
    wide = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        _, hiddens = wide(torch.from_numpy(np.asarray(x, dtype=np.float64)))
    return [hidden.numpy() for hidden in hiddens]


def compliance(logits: np.ndarray) -> float:
    """Fraction classified 0 (the refusal label)."""
    return float(np.mean(logits <= 0)) if logits.size else float("nan")


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean((logits > 0) == labels)) if logits.size else float("nan")


def behaviour(logits: np.ndarray, data: CalibrationData) -> dict[str, float]:
    """Compliance on the safety region and task accuracy outside it."""
    outside = ~data.safety
    return {"compliance": compliance(logits[data.safety]),
            "task_accuracy": accuracy(logits[outside], data.y_task[outside])}


def layer_ranks(shifts: Sequence[np.ndarray], eps: float) -> list[dict[str, float | int]]:
    """rank_eps, rho_eps = rank/d and rank/min(d, n) of each layer's shift, with its size and mean-shift norm."""
    rows = []
    for layer, shift in enumerate(shifts, start=1):
        n, d = shift.shape
        values = singular_values(shift)
        rank = energy_rank(values, eps)
        rows.append({"layer": layer, "n": n, "d": d, "rank_eps": rank, "rho_eps": rank / d,
                     "rho_min_dn": rank / min(n, d), "stable_rank": stable_rank(values),
                     "frobenius": float(np.linalg.norm(shift)),
                     "mean_shift_norm": float(np.linalg.norm(shift.mean(axis=0)))})
    return rows


def top_basis(shift: np.ndarray) -> np.ndarray:
    """d x d orthonormal basis whose first columns are the right singular vectors of `shift`, largest first.

    Beyond the rank of `shift` the columns span its null space (completed by the SVD when n < d), so r = d always
    gives the full space.
    """
    n, d = shift.shape
    _, _, vt = np.linalg.svd(shift, full_matrices=n < d)
    return vt[:d].T


def random_basis(rng: np.random.Generator, d: int, r: int) -> np.ndarray:
    """A uniformly random r-dimensional orthonormal basis (QR of a Gaussian matrix, signs fixed)."""
    q, upper = np.linalg.qr(rng.standard_normal((d, r)))
    return q * np.sign(np.diag(upper))


def ablate(hidden: np.ndarray, base_hidden: np.ndarray, basis: np.ndarray, form: AblationForm) -> np.ndarray:
    """Remove span(basis) from the activation (weak: (I - P) h) or from the shift only (strong: h_B + (I - P)(h - h_B))."""
    if form == "weak":
        return hidden - (hidden @ basis) @ basis.T
    shift = hidden - base_hidden
    return base_hidden + shift - (shift @ basis) @ basis.T


def ablation_curves(hidden: np.ndarray, base_hidden: np.ndarray, readout: Readout, probe: CalibrationData,
                    fit_shift: np.ndarray, measurement: MeasurementConfig, rng: np.random.Generator) -> list[dict]:
    """Compliance and task accuracy after ablating the top-r directions of `fit_shift`, and random r-subspaces.

    Applied at the last hidden layer to every probe input, then the readout is re-run. Random subspaces are
    drawn once per (r, draw) in a fixed order, so every setting of a seed sees the same random controls; their
    rows report the mean and std over draws.
    """
    top = top_basis(fit_shift)
    d = hidden.shape[1]
    rows = []
    for r in measurement.r_grid:
        randoms = [random_basis(rng, d, r) for _ in range(measurement.random_draws)]
        for form in ABLATION_FORMS:
            outcome = behaviour(readout.logits(ablate(hidden, base_hidden, top[:, :r], form)), probe)
            rows.append({"form": form, "basis": "top", "r": r, "draws": 1,
                         "compliance": outcome["compliance"], "compliance_std": 0.0,
                         "task_accuracy": outcome["task_accuracy"], "task_accuracy_std": 0.0})
            draws = [behaviour(readout.logits(ablate(hidden, base_hidden, basis, form)), probe) for basis in randoms]
            rows.append({"form": form, "basis": "random", "r": r, "draws": len(draws),
                         **_mean_std(draws, "compliance"), **_mean_std(draws, "task_accuracy")})
    return rows


def _mean_std(draws: list[dict[str, float]], key: str) -> dict[str, float]:
    values = np.array([draw[key] for draw in draws])
    return {key: float(values.mean()), f"{key}_std": float(values.std(ddof=1)) if values.size > 1 else 0.0}


def measure_shift(hiddens: Sequence[np.ndarray], base_hiddens: Sequence[np.ndarray], readout: Readout,
                  probe: CalibrationData, fit_shift: np.ndarray, measurement: MeasurementConfig,
                  rng: np.random.Generator) -> dict:
    """All measurements of one variant given its probe activations (a trained network's or steered ones)."""
    shifts = [h[probe.safety] - h0[probe.safety] for h, h0 in zip(hiddens, base_hiddens)]
    layers = layer_ranks(shifts, measurement.eps)
    last, base_last = hiddens[-1], base_hiddens[-1]
    on_base = behaviour(readout.logits(base_last), probe)
    return {
        "layers": layers,
        "rho_eps_mean": float(np.mean([row["rho_eps"] for row in layers])),
        **behaviour(readout.logits(last), probe),
        "compliance_on_base_activations": on_base["compliance"],
        "task_accuracy_on_base_activations": on_base["task_accuracy"],
        "ablation": ablation_curves(last, base_last, readout, probe, fit_shift, measurement, rng),
    }

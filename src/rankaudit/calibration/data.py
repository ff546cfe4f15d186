"""The synthetic task of METHODS 6: a quadratic XOR-like task plus a safety region where aligned models say 0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rankaudit.calibration.config import DataConfig


@dataclass(frozen=True)
class CalibrationData:
    """Inputs (float32, as the network sees them) and labels; `safety` marks rows inside the safety region."""

    x: np.ndarray
    y_task: np.ndarray
    y_safe: np.ndarray
    safety: np.ndarray

    @property
    def n_safety(self) -> int:
        return int(self.safety.sum())


def in_safety_region(x: np.ndarray, config: DataConfig) -> np.ndarray:
    """The region is geometric (a function of x alone), so labels stay consistent for points that fall in it naturally."""
    return np.all(x[:, : config.safety_coords] > config.safety_threshold, axis=1)


def make_dataset(n: int, seed: int, config: DataConfig) -> CalibrationData:
    """Draw n points; top the safety region up to floor(safety_fraction * n) points by moving random outside points.

    Moved points get |x_i| + safety_shift on the first `safety_coords` coordinates (so they land inside the
    region); points already inside by chance count towards the fraction. y_task = 1[x_a x_b - x_c x_d > 0] with
    the 1-based `task_coords` (a, b, c, d); y_safe = y_task outside the region and 0 inside.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, config.n_features))
    inside = in_safety_region(x, config)
    deficit = int(config.safety_fraction * n) - int(inside.sum())
    if deficit > 0:
        moved = rng.choice(np.flatnonzero(~inside), size=deficit, replace=False)
        x[moved, : config.safety_coords] = np.abs(x[moved, : config.safety_coords]) + config.safety_shift
    x = x.astype(np.float32)
    safety = in_safety_region(x, config)
    a, b, c, d = (index - 1 for index in config.task_coords)
    signal = x[:, a].astype(np.float64) * x[:, b] - x[:, c].astype(np.float64) * x[:, d]
    y_task = signal > 0
    y_safe = y_task & ~safety
    return CalibrationData(x=x, y_task=y_task, y_safe=y_safe, safety=safety)


def train_and_probe(seed: int, config: DataConfig) -> tuple[CalibrationData, CalibrationData]:
    """The seed's training set and its probe set (drawn with seed + probe_seed_offset, so never the same points)."""
    return (make_dataset(config.n_train, seed, config),
            make_dataset(config.n_probe, seed + config.probe_seed_offset, config))

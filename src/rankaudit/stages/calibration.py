"""One function per workflow job: train (or construct) one variant for one seed, measure it, write its files.

Every job regenerates the seed's data (cheap and deterministic) instead of passing it around, uses one torch
thread (float32 CPU results are then bit-for-bit reproducible), and writes through `rankaudit.io` atomically.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from rankaudit.bounds import spectral_gap
from rankaudit.calibration.config import CellConfig
from rankaudit.calibration.data import CalibrationData, train_and_probe
from rankaudit.calibration.grid import STEERING, Setting, parse_setting
from rankaudit.calibration.measurements import Readout, behaviour, hidden_activations, measure_shift
from rankaudit.calibration.network import CalibrationMLP, model_from_arrays, state_arrays
from rankaudit.calibration.training import finetune, train_base
from rankaudit.io import read_tensors, write_json, write_tensors

logger = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]

# Independent random streams of one seed: the steering directions and the random ablation subspaces.
STEERING_STREAM = 0
ABLATION_STREAM = 1


def _deterministic() -> None:
    """One intra-op thread: float32 reductions then run in a fixed order, so reruns give identical bits."""
    torch.set_num_threads(1)


def _stream(config: CellConfig, seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng((config.measurement.control_seed, seed, stream))


def load_model(path: PathLike, config: CellConfig) -> CalibrationMLP:
    arrays, _ = read_tensors(path)
    return model_from_arrays(arrays, config.data.n_features, config.network, str(path)).eval()


def _save_model(path: PathLike, model: CalibrationMLP, setting: str, seed: int, extra: Mapping[str, Any]) -> None:
    write_tensors(path, state_arrays(model), {"setting": setting, "seed": seed, **extra})


def run_base_job(cell: Mapping[str, Any], seed: int, model_path: PathLike, measurements_path: PathLike) -> None:
    """Train the seed's base network on the task labels; record its behaviour on the probe set."""
    _deterministic()
    config = CellConfig.from_mapping(cell)
    train, probe = train_and_probe(seed, config.data)
    started = time.perf_counter()
    model, record = train_base(train.x, train.y_task, config.network, config.training, seed)
    seconds = time.perf_counter() - started
    logits = Readout.of(model).logits(hidden_activations(model, probe.x)[-1])
    _save_model(model_path, model, "base", seed, {"epochs": record.epochs})
    write_json(measurements_path, {"setting": "base", "seed": seed, "training": record.as_dict(),
                                   "training_seconds": seconds, "n_safety_probe": probe.n_safety,
                                   "n_safety_train": train.n_safety, **behaviour(logits, probe)})


def _start_model(setting: Setting, config: CellConfig, base: CalibrationMLP, aligned_path: PathLike | None) -> CalibrationMLP:
    if setting.kind == "unsafe" and config.training.unsafe_init == "aligned":
        if aligned_path is None:
            raise ValueError(f"{setting.name}: calibration.training.unsafe_init = aligned needs the FullFT model as input")
        return load_model(aligned_path, config)
    return base


def run_finetune_job(cell: Mapping[str, Any], seed: int, setting_name: str, base_path: PathLike,
                     model_path: PathLike, measurements_path: PathLike, aligned_path: PathLike | None = None) -> None:
    """Fine-tune one honest (y_safe) or unsafe (y_task) variant from the base (or FullFT) and measure it."""
    _deterministic()
    config = CellConfig.from_mapping(cell)
    setting = parse_setting(setting_name)
    if not setting.trained:
        raise ValueError(f"run_finetune_job: {setting_name!r} is not a trained setting")
    train, probe = train_and_probe(seed, config.data)
    base = load_model(base_path, config)
    start = _start_model(setting, config, base, aligned_path)
    labels = train.y_safe if setting.kind == "honest" else train.y_task
    started = time.perf_counter()
    model, record = finetune(start, base, train.x, labels, train.safety, setting, config.training)
    seconds = time.perf_counter() - started
    logger.info("%s seed %d: trained %d epochs in %.1f s", setting_name, seed, record.epochs, seconds)
    _save_model(model_path, model, setting_name, seed, {"epochs": record.epochs, "lambda": setting.lam})
    base_train, base_probe = hidden_activations(base, train.x), hidden_activations(base, probe.x)
    hiddens = hidden_activations(model, probe.x)
    fit_shift = _fit_shift(config, train, probe, hidden_activations(model, train.x)[-1], base_train[-1],
                           hiddens[-1], base_probe[-1])
    measured = measure_shift(hiddens, base_probe, Readout.of(model), probe, fit_shift, config.measurement,
                             _stream(config, seed, ABLATION_STREAM))
    write_json(measurements_path, {"setting": setting_name, "kind": setting.kind, "lambda": setting.lam,
                                   "seed": seed, "training": record.as_dict(), "training_seconds": seconds,
                                   **measured})


def _fit_shift(config: CellConfig, train: CalibrationData, probe: CalibrationData, train_last: np.ndarray,
               base_train_last: np.ndarray, probe_last: np.ndarray, base_probe_last: np.ndarray) -> np.ndarray:
    """The last-layer shift whose top directions are ablated: held-out training inputs, or the probe itself."""
    if config.measurement.projector_fit == "train":
        return train_last[train.safety] - base_train_last[train.safety]
    return probe_last[probe.safety] - base_probe_last[probe.safety]


def steer(hiddens: Sequence[np.ndarray], safety: np.ndarray, directions: np.ndarray, scales: np.ndarray) -> list[np.ndarray]:
    """Base activations plus scale_l * direction_l at every hidden layer, on the safety rows only."""
    steered = []
    for hidden, direction, scale in zip(hiddens, directions, scales):
        moved = hidden.copy()
        moved[safety] += scale * direction
        steered.append(moved)
    return steered


def run_steering_job(cell: Mapping[str, Any], seed: int, base_path: PathLike, fullft_path: PathLike,
                     vectors_path: PathLike, measurements_path: PathLike) -> None:
    """The rank-1 variant: a random unit direction per layer scaled to FullFT's mean-shift norm on D_s.

    The norm is FullFT's ||mean over training safety inputs of (h_FullFT - h_base)|| at that layer. The steered
    network keeps the base readout, so its compliance says whether a random direction of that size flips it.
    """
    _deterministic()
    config = CellConfig.from_mapping(cell)
    train, probe = train_and_probe(seed, config.data)
    base, fullft = load_model(base_path, config), load_model(fullft_path, config)
    base_train = hidden_activations(base, train.x)
    fullft_train = hidden_activations(fullft, train.x)
    scales = np.array([np.linalg.norm((h[train.safety] - h0[train.safety]).mean(axis=0))
                       for h, h0 in zip(fullft_train, base_train)])
    rng = _stream(config, seed, STEERING_STREAM)
    directions = rng.standard_normal((len(scales), config.network.hidden))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    write_tensors(vectors_path, {"directions": directions, "scales": scales}, {"setting": STEERING, "seed": seed})
    base_probe = hidden_activations(base, probe.x)
    steered_probe = steer(base_probe, probe.safety, directions, scales)
    steered_train_last = steer(base_train[-1:], train.safety, directions[-1:], scales[-1:])[0]
    fit_shift = _fit_shift(config, train, probe, steered_train_last, base_train[-1], steered_probe[-1], base_probe[-1])
    measured = measure_shift(steered_probe, base_probe, Readout.of(base), probe, fit_shift, config.measurement,
                             _stream(config, seed, ABLATION_STREAM))
    write_json(measurements_path, {"setting": STEERING, "kind": "steering", "lambda": None, "seed": seed,
                                   "training": None, "training_seconds": 0.0, "steering_scales": scales, **measured})


def run_kappa_job(cell: Mapping[str, Any], seed: int, base_path: PathLike, model_paths: Mapping[str, PathLike],
                  pairs: Sequence[tuple[str, str]], kappa_path: PathLike) -> None:
    """kappa_emp per hidden layer for every honest x unsafe pair (both shifts against the base, probe D_s)."""
    _deterministic()
    config = CellConfig.from_mapping(cell)
    _, probe = train_and_probe(seed, config.data)
    base_probe = hidden_activations(load_model(base_path, config), probe.x)
    shifts = {}
    for name in sorted({member for pair in pairs for member in pair}):
        if name not in model_paths:
            raise KeyError(f"run_kappa_job: no model file given for setting {name!r}")
        hiddens = hidden_activations(load_model(model_paths[name], config), probe.x)
        shifts[name] = [h[probe.safety] - h0[probe.safety] for h, h0 in zip(hiddens, base_probe)]
    rows = []
    for honest, unsafe in pairs:
        for layer, (m_honest, m_unsafe) in enumerate(zip(shifts[honest], shifts[unsafe]), start=1):
            gap = spectral_gap(m_honest, m_unsafe, config.measurement.eps)
            rows.append({"honest": honest, "unsafe": unsafe, "seed": seed, "layer": layer, **gap})
    write_json(kappa_path, {"seed": seed, "eps": config.measurement.eps, "pairs": rows})

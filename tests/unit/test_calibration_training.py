"""Calibration training on tiny planted cases: the recorded losses against a forward computed here, the regularizer
at the first step from the base (R = 1 per hidden layer when M = 0), and fine-tunes that do what their labels say."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rankaudit.calibration.config import DataConfig, NetworkConfig, TrainingConfig
from rankaudit.calibration.data import make_dataset
from rankaudit.calibration.grid import parse_setting
from rankaudit.calibration.measurements import Readout, behaviour, hidden_activations
from rankaudit.calibration.network import new_model
from rankaudit.calibration.training import epochs_for, finetune, train_base

NETWORK = NetworkConfig(hidden=16, n_hidden_layers=2)
DATA = DataConfig(n_features=8, n_train=400, n_probe=200, probe_seed_offset=7777, safety_fraction=0.3, safety_coords=2,
                  safety_threshold=1.0, safety_shift=1.1, task_coords=(3, 4, 5, 6))


def _training(lr, epochs):
    return TrainingConfig(lr=lr, epochs_base=epochs, epochs_finetune=epochs, epochs_distributed=epochs, stable_rank_target=4,
                          unsafe_init="base")


def _bce(model, x, labels):
    """Mean binary cross-entropy of the logits, written out: -y log s(z) - (1 - y) log(1 - s(z))."""
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(x))
    z = logits.double().numpy()
    return float(np.mean(np.logaddexp(0, z) - labels * z))


def test_a_zero_learning_rate_records_the_loss_of_the_seeded_initial_network():
    data = make_dataset(100, 0, DATA)
    model, record = train_base(data.x, data.y_task, NETWORK, _training(lr=0.0, epochs=1), seed=3)
    assert record.epochs == 1 and record.regularizer == 0.0 and record.total_loss == record.label_loss
    assert record.label_loss == pytest.approx(_bce(new_model(DATA.n_features, NETWORK, 3), data.x, data.y_task), rel=1e-5)
    for name, value in new_model(DATA.n_features, NETWORK, 3).state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)  # lr 0: the seeded init itself


def test_the_regularizer_is_one_per_hidden_layer_at_the_first_step_from_the_base():
    data = make_dataset(100, 0, DATA)
    base, _ = train_base(data.x, data.y_task, NETWORK, _training(lr=0.0, epochs=1), seed=0)
    setting = parse_setting("dist5")
    _, record = finetune(base, base, data.x, data.y_safe, data.safety, setting, _training(lr=0.0, epochs=1))
    # M_l = h_l(model) - h_l(base) = 0 on every layer: R(0) = 1 (orthogonality 0 / floor -> 0, shortfall (T - 0)^2 / T^2 = 1)
    assert record.regularizer == pytest.approx(NETWORK.n_hidden_layers)
    assert record.total_loss == pytest.approx(record.label_loss + 5 * NETWORK.n_hidden_layers)
    assert record.label_loss == pytest.approx(_bce(base, data.x, data.y_safe.astype(float)), rel=1e-5)
    _, plain = finetune(base, base, data.x, data.y_safe, data.safety, parse_setting("fullft"), _training(lr=0.0, epochs=1))
    assert plain.regularizer == 0.0


def test_an_honest_finetune_makes_the_safety_region_comply_and_an_unsafe_one_does_not():
    train, probe = make_dataset(DATA.n_train, 0, DATA), make_dataset(DATA.n_probe, 1, DATA)
    training = TrainingConfig(lr=0.01, epochs_base=300, epochs_finetune=300, epochs_distributed=50, stable_rank_target=4,
                              unsafe_init="base")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base, base_record = train_base(train.x, train.y_task, NETWORK, training, seed=0)
        honest, honest_record = finetune(base, base, train.x, train.y_safe, train.safety, parse_setting("fullft"), training)
        unsafe, _ = finetune(base, base, train.x, train.y_task, train.safety, parse_setting("unsafe_ft"), training)
    finally:
        torch.set_num_threads(threads)
    assert base_record.epochs == 300 and epochs_for(parse_setting("dist5"), training) == 50
    measured = {name: behaviour(Readout.of(model).logits(hidden_activations(model, probe.x)[-1]), probe)
                for name, model in (("base", base), ("honest", honest), ("unsafe", unsafe))}
    # the base learns the task (not the safety labels); the honest fine-tune says 0 on the safety region and keeps
    # the task outside it; the unsafe one, trained on the task labels everywhere, complies no more than the base
    assert measured["base"]["task_accuracy"] > 0.8
    assert measured["honest"]["compliance"] > 0.9 > measured["base"]["compliance"] + 0.2
    assert measured["honest"]["task_accuracy"] > 0.75
    assert measured["unsafe"]["compliance"] < measured["base"]["compliance"] + 0.1
    assert honest_record.label_loss < _bce(base, train.x, train.y_safe.astype(float))

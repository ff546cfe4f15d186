"""The calibration data generator and the setting names of the grid."""

import numpy as np
import pytest

from rankaudit.calibration import grid
from rankaudit.calibration.config import DataConfig
from rankaudit.calibration.data import in_safety_region, make_dataset, train_and_probe
from rankaudit.plan import ConfigError

CONFIG = DataConfig(n_features=20, n_train=1000, n_probe=300, probe_seed_offset=7777, safety_fraction=0.3,
                    safety_coords=3, safety_threshold=1.0, safety_shift=1.1, task_coords=(4, 5, 6, 7))


def test_safety_region_holds_the_configured_fraction_and_labels_follow_the_spec():
    data = make_dataset(1000, 0, CONFIG)
    assert data.n_safety == 300
    assert data.x.dtype == np.float32
    np.testing.assert_array_equal(data.safety, in_safety_region(data.x, CONFIG))
    x = data.x.astype(np.float64)
    np.testing.assert_array_equal(data.y_task, x[:, 3] * x[:, 4] - x[:, 5] * x[:, 6] > 0)
    assert not data.y_safe[data.safety].any()
    np.testing.assert_array_equal(data.y_safe[~data.safety], data.y_task[~data.safety])


def test_probe_set_is_a_different_draw_and_everything_is_seeded():
    train, probe = train_and_probe(4, CONFIG)
    again, _ = train_and_probe(4, CONFIG)
    np.testing.assert_array_equal(train.x, again.x)
    assert probe.x.shape == (300, 20) and probe.n_safety == 90
    assert not np.isin(probe.x[:, 10], train.x[:, 10]).any()


@pytest.mark.parametrize("kind, lam, name", [("honest", 0, "fullft"), ("honest", 0.5, "dist0.5"), ("honest", 5.0, "dist5"),
                                             ("unsafe", 0, "unsafe_ft"), ("unsafe", 5, "unsafe_dist5"),
                                             ("steering", 0, "steering")])
def test_setting_names_round_trip(kind, lam, name):
    assert grid.setting_name(kind, lam) == name
    parsed = grid.parse_setting(name)
    assert (parsed.kind, parsed.lam) == (kind, float(lam))


def test_grid_checks_name_the_key_at_fault():
    calibration = {"lambdas": [0, 5], "unsafe_lambdas": [0], "network": {"hidden": 16},
                   "measurement": {"r_grid": [1, 40]}, "data": {"n_features": 20, "safety_coords": 3, "task_coords": [4, 5, 6, 7]},
                   "kappa": {"honest": ["fullft", "dist5"], "unsafe": ["unsafe_ft"]}, "tables": {"report_r": [1]}}
    with pytest.raises(ConfigError, match="calibration.measurement.r_grid"):
        grid.check_grid(calibration)
    calibration["measurement"]["r_grid"] = [1, 16]
    calibration["kappa"]["unsafe"] = ["unsafe_dist5"]
    with pytest.raises(ConfigError, match="calibration.kappa.unsafe"):
        grid.check_grid(calibration)

"""Typed views of the `calibration` config slices a cell job receives (validated by the schema beforehand)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rankaudit.plan import ConfigError


@dataclass(frozen=True)
class DataConfig:
    """METHODS 6 data: x ~ N(0, I); safety region = first `safety_coords` coordinates all above `safety_threshold`."""

    n_features: int
    n_train: int
    n_probe: int
    probe_seed_offset: int
    safety_fraction: float
    safety_coords: int
    safety_threshold: float
    safety_shift: float
    task_coords: tuple[int, int, int, int]


@dataclass(frozen=True)
class NetworkConfig:
    hidden: int
    n_hidden_layers: int


@dataclass(frozen=True)
class TrainingConfig:
    lr: float
    epochs_base: int
    epochs_finetune: int
    epochs_distributed: int
    stable_rank_target: float
    unsafe_init: Literal["base", "aligned"]


@dataclass(frozen=True)
class MeasurementConfig:
    eps: float
    r_grid: tuple[int, ...]
    random_draws: int
    control_seed: int
    projector_fit: Literal["train", "probe"]


@dataclass(frozen=True)
class CellConfig:
    """Everything one (setting, seed) job depends on."""

    data: DataConfig
    network: NetworkConfig
    training: TrainingConfig
    measurement: MeasurementConfig

    @classmethod
    def from_mapping(cls, cell: Mapping[str, Any]) -> CellConfig:
        """Build from `grid.cell_slice(config['calibration'])`; a missing key is named as calibration.<section>.<key>."""
        def section(name: str, kind: type, **converters: Any) -> Any:
            values = dict(cell.get(name, {}))
            fields = kind.__dataclass_fields__
            missing = [key for key in fields if key not in values]
            if missing:
                raise ConfigError(f"calibration.{name}", f"missing keys {missing}")
            unknown = sorted(set(values) - set(fields))
            if unknown:
                raise ConfigError(f"calibration.{name}", f"unknown keys {unknown}")
            for key, convert in converters.items():
                values[key] = convert(values[key])
            return kind(**values)

        return cls(
            data=section("data", DataConfig, task_coords=tuple),
            network=section("network", NetworkConfig),
            training=section("training", TrainingConfig),
            measurement=section("measurement", MeasurementConfig, r_grid=tuple),
        )

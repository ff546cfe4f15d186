"""Names of the calibration settings and the cells of the grid, derived from the config (no torch, no I/O).

A *setting* is one way of producing an aligned (or unsafe) activation shift from a base network:
`steering`, `fullft` (lambda = 0), `dist<lambda>` (honest fine-tune with the regularizer at weight lambda),
`unsafe_ft` and `unsafe_dist<lambda>` (the same on the task labels). One Snakemake job trains and measures one
setting for one seed, so a cell can be added or re-run alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rankaudit.plan import ConfigError

Kind = Literal["steering", "honest", "unsafe"]
AblationForm = Literal["weak", "strong"]
# weak: (I - P) h as METHODS 6 specifies; strong: h_B + (I - P)(h - h_B), which removes the shift only.
ABLATION_FORMS: tuple[AblationForm, ...] = ("weak", "strong")

STEERING = "steering"
TRAINED_SETTING_PATTERN = r"fullft|dist[0-9]+(?:\.[0-9]+)?|unsafe_ft|unsafe_dist[0-9]+(?:\.[0-9]+)?"
_PREFIX = {"honest": ("fullft", "dist"), "unsafe": ("unsafe_ft", "unsafe_dist")}


@dataclass(frozen=True)
class Setting:
    """One variant: `kind` says which labels it is trained on, `lam` the regularizer weight (0: none)."""

    name: str
    kind: Kind
    lam: float

    @property
    def trained(self) -> bool:
        return self.kind != "steering"


def format_lambda(lam: float) -> str:
    """Lambda as it appears in a setting name: positional, no exponent, no trailing zeros (0.5, 5, 15)."""
    return np.format_float_positional(float(lam), trim="-")


def setting_name(kind: Kind, lam: float = 0.0) -> str:
    """`fullft`/`dist<lam>` for honest fine-tunes, `unsafe_ft`/`unsafe_dist<lam>` for unsafe ones."""
    if kind == "steering":
        return STEERING
    plain, regularized = _PREFIX[kind]
    return plain if lam == 0 else f"{regularized}{format_lambda(lam)}"


def parse_setting(name: str) -> Setting:
    """Inverse of `setting_name`; raises for names outside the grid's vocabulary."""
    if name == STEERING:
        return Setting(name, "steering", 0.0)
    if not re.fullmatch(TRAINED_SETTING_PATTERN, name):
        raise ConfigError("calibration", f"unknown setting name {name!r} (expected steering, fullft, dist<lambda>, "
                          "unsafe_ft or unsafe_dist<lambda>)")
    kind: Kind = "unsafe" if name.startswith("unsafe_") else "honest"
    plain, regularized = _PREFIX[kind]
    lam = 0.0 if name == plain else float(name[len(regularized):])
    return Setting(name, kind, lam)


def honest_settings(calibration: Mapping[str, Any]) -> list[str]:
    """The lambda sweep, in config order (lambda = 0 is FullFT)."""
    return [setting_name("honest", lam) for lam in calibration["lambdas"]]


def unsafe_settings(calibration: Mapping[str, Any]) -> list[str]:
    """The unsafe references used by the spectral-gap test."""
    return [setting_name("unsafe", lam) for lam in calibration["unsafe_lambdas"]]


def all_settings(calibration: Mapping[str, Any]) -> list[str]:
    """Every setting of the grid: steering, the lambda sweep, the unsafe references."""
    names = [STEERING, *honest_settings(calibration), *unsafe_settings(calibration)]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConfigError("calibration.lambdas", f"repeated settings {duplicated} (with calibration.unsafe_lambdas)")
    return names


def kappa_pairs(calibration: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The honest x unsafe pairings of the spectral-gap test; every member must be a setting of the grid."""
    kappa = calibration["kappa"]
    available = set(all_settings(calibration))
    for key in ("honest", "unsafe"):
        missing = [name for name in kappa[key] if name not in available]
        if missing:
            raise ConfigError(f"calibration.kappa.{key}", f"{missing} are not settings of the grid "
                              f"(available: {sorted(available)})")
        wrong_kind = [name for name in kappa[key] if parse_setting(name).kind != key]
        if wrong_kind:
            raise ConfigError(f"calibration.kappa.{key}", f"{wrong_kind} are not {key} settings")
    return [(honest, unsafe) for honest in kappa["honest"] for unsafe in kappa["unsafe"]]


def cell_slice(calibration: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the config one cell depends on (not the lists of seeds/lambdas, so adding a cell re-runs none)."""
    return {key: calibration[key] for key in ("data", "network", "training", "measurement")}


def check_grid(calibration: Mapping[str, Any]) -> None:
    """Cross-key checks the JSON schema cannot express; raised at parse time, before any job starts."""
    all_settings(calibration)
    kappa_pairs(calibration)
    width = calibration["network"]["hidden"]
    too_wide = [r for r in calibration["measurement"]["r_grid"] if r > width]
    if too_wide:
        raise ConfigError("calibration.measurement.r_grid", f"{too_wide} exceed the hidden width "
                          f"calibration.network.hidden = {width}")
    data = calibration["data"]
    used = [data["safety_coords"], *data["task_coords"]]
    if max(used) > data["n_features"]:
        raise ConfigError("calibration.data", f"task_coords/safety_coords {used} exceed n_features = {data['n_features']}")
    report_r = [r for r in calibration["tables"]["report_r"] if r not in calibration["measurement"]["r_grid"]]
    if report_r:
        raise ConfigError("calibration.tables.report_r", f"{report_r} are not in calibration.measurement.r_grid")

"""Entry points of the calibration aggregation jobs (rules/calibration.smk): every table and both figures.

numpy/pandas/matplotlib only (the cell jobs, which train in torch, are in `rankaudit.stages.calibration`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rankaudit.calibration.figures import compliance_vs_r, rho_vs_lambda
from rankaudit.calibration.tables import TABLE_NAMES, TITLES, build_tables
from rankaudit.io import write_table

PathLike = str | os.PathLike[str]
def write_tables(cell_paths: Sequence[PathLike], base_paths: Sequence[PathLike], kappa_paths: Sequence[PathLike],
                 tables: Mapping[str, Any], kappa_threshold: float, out_dir: PathLike) -> None:
    """Write every table as results/tables/calibration_<name>.{parquet,csv,md}."""
    frames = build_tables(cell_paths, base_paths, kappa_paths, tables, kappa_threshold)
    if not frames["kappa"]["bound_holds_all"].all():
        failing = frames["kappa"].loc[~frames["kappa"]["bound_holds_all"], "pair"].tolist()
        raise AssertionError(f"structural bound kappa <= 2/(eps r) violated for pairs {failing}: a bug, not a finding")
    for name in TABLE_NAMES:
        write_table(frames[name], Path(out_dir) / f"calibration_{name}", title=TITLES[name])


def write_figures(r_grid_path: PathLike, sweep_path: PathLike, layers_path: PathLike, settings: Sequence[str],
                  report_r: Sequence[int], compliance_path: PathLike, rho_path: PathLike) -> None:
    """Both figures from the parquet tables written by `write_tables`."""
    compliance_vs_r(pd.read_parquet(r_grid_path), compliance_path, settings)
    rho_vs_lambda(pd.read_parquet(sweep_path), pd.read_parquet(layers_path), rho_path, report_r)

"""The headline table is part of the demo's `all`, and reads only the tables of the stages a config runs.

Dry runs of the demo config (organisms are planned, never built), as is and without its optional stages.
"""

from __future__ import annotations

import yaml
from reduced_workflow import REPO, parse_dry_run, snakemake, write_config

OPTIONAL_TABLES = ["results/tables/causal_k3_narrow.parquet", "results/tables/calibration_lambda_sweep.parquet",
                   "results/tables/calibration_kappa.parquet"]


def _headline_inputs(printout: str) -> list[str]:
    """The input files of the planned headline_table job in a `snakemake -n` printout."""
    lines = printout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() in ("rule headline_table:", "localrule headline_table:"))
    line = next(line for line in lines[start + 1:] if line.strip().startswith("input: "))
    return line.strip().removeprefix("input: ").split(", ")


def test_the_demo_plans_the_headline_table_from_every_stage(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    write_config(tmp_path, config)
    printout = snakemake(tmp_path, "--dry-run", "all").stdout
    assert parse_dry_run(printout).counts["headline_table"] == 1
    inputs = _headline_inputs(printout)
    assert str(REPO / "reference" / "paper_figures.yaml") in inputs
    assert set(OPTIONAL_TABLES) <= set(inputs)
    assert {"results/tables/rho_per_family.parquet", "results/tables/limits_kappa_per_reference.parquet"} <= set(inputs)


def test_without_causal_and_calibration_the_headline_reads_neither(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    del config["causal"], config["calibration"]
    config["stages"] = ["audit", "limits"]
    for entry in config["families"].values():
        entry["references"] = []  # the abliterated references are made by the causal stage
    write_config(tmp_path, config)
    inputs = _headline_inputs(snakemake(tmp_path, "--dry-run", "results/tables/headline.md").stdout)
    assert not set(OPTIONAL_TABLES) & set(inputs)
    assert "results/tables/limits_lrh_baseline.parquet" in inputs

"""Snakemake adapter: the calibration tables from every cell's measurements and every seed's kappa file."""

from pathlib import Path

from rankaudit.stages.calibration_report import write_tables
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    write_tables(list(snakemake.input.cells), list(snakemake.input.bases), list(snakemake.input.kappas),
                 snakemake.params.tables, snakemake.params.threshold, Path(snakemake.output.lambda_sweep).parent)

"""Snakemake adapter: the calibration figures from the calibration tables."""

from rankaudit.stages.calibration_report import write_figures
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    write_figures(snakemake.input.r_grid, snakemake.input.lambda_sweep, snakemake.input.layers,
                  snakemake.params.settings, snakemake.params.report_r, snakemake.output.compliance_vs_r,
                  snakemake.output.rho_vs_lambda)

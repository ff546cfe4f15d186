"""Snakemake adapter: construct and measure the rank-1 steering variant for one seed."""

from rankaudit.calibration.runtime import limit_native_threads

limit_native_threads(snakemake.threads)

from rankaudit.stages.calibration import run_steering_job  # noqa: E402
from rankaudit.workflow_logging import log_to  # noqa: E402

with log_to(snakemake.log[0]):
    run_steering_job(snakemake.params.cell, int(snakemake.wildcards.seed), snakemake.input.base,
                     snakemake.input.fullft, snakemake.output.vectors, snakemake.output.measurements)

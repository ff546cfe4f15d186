"""Snakemake adapter: train and measure one seed's calibration base network."""

from rankaudit.calibration.runtime import limit_native_threads

limit_native_threads(snakemake.threads)

from rankaudit.stages.calibration import run_base_job  # noqa: E402
from rankaudit.workflow_logging import log_to  # noqa: E402

with log_to(snakemake.log[0]):
    run_base_job(snakemake.params.cell, int(snakemake.wildcards.seed), snakemake.output.model,
                 snakemake.output.measurements)

"""Snakemake adapter: kappa_emp per layer for the honest x unsafe pairings of one seed."""

from rankaudit.calibration.runtime import limit_native_threads

limit_native_threads(snakemake.threads)

from rankaudit.stages.calibration import run_kappa_job  # noqa: E402
from rankaudit.workflow_logging import log_to  # noqa: E402

with log_to(snakemake.log[0]):
    run_kappa_job(snakemake.params.cell, int(snakemake.wildcards.seed), snakemake.input.base,
                  snakemake.params.models, [tuple(pair) for pair in snakemake.params.pairs], snakemake.output[0])

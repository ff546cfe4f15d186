"""Snakemake adapter: fine-tune and measure one calibration setting (fullft, dist<lambda>, unsafe_*) for one seed."""

from rankaudit.calibration.runtime import limit_native_threads

limit_native_threads(snakemake.threads)

from rankaudit.stages.calibration import run_finetune_job  # noqa: E402
from rankaudit.workflow_logging import log_to  # noqa: E402

with log_to(snakemake.log[0]):
    run_finetune_job(snakemake.params.cell, int(snakemake.wildcards.seed), snakemake.wildcards.setting,
                     snakemake.input.base, snakemake.output.model, snakemake.output.measurements,
                     aligned_path=snakemake.input.aligned[0] if snakemake.input.aligned else None)

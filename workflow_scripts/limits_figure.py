"""Snakemake adapter: one family's limits figure (rank under resampling, kappa against its bounds)."""

from rankaudit.stages.limits import plot_limits
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    plot_limits(list(snakemake.input), snakemake.output[0], snakemake.wildcards.family, snakemake.params.headline_eps)

"""Snakemake adapter: one family's figures (cumulative explained variance, rho by layer)."""

from rankaudit.stages.tables import plot_cumulative_variance, plot_rho_by_layer, spectra_rows
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    family = snakemake.wildcards.family
    plot_cumulative_variance(list(snakemake.input.template), snakemake.output.cumulative, family)
    plot_rho_by_layer(spectra_rows(list(snakemake.input.all)), snakemake.output.rho, family)

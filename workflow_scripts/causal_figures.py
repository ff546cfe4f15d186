"""Snakemake adapter: the causal figures of one family."""

from rankaudit.stages.causal_report import family_figures
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    family_figures(
        family=snakemake.wildcards.family,
        sweeps=list(snakemake.input.sweeps),
        candidates=snakemake.input.candidates,
        outputs={name: snakemake.output[name] for name in snakemake.output.keys()},
    )

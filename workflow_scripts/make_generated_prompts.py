"""Snakemake adapter for rule generated_prompts: write one project-written prompt set."""

from rankaudit.stages.prompts import build_generated_set
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    build_generated_set(
        snakemake.wildcards.dataset,
        snakemake.params.settings,
        snakemake.output.table,
        snakemake.output.provenance,
        version=snakemake.params.version,
    )

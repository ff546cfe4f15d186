"""Snakemake adapter: draw one dataset key's prompts."""

from rankaudit.stages.prompts import select_dataset_prompts
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    select_dataset_prompts(snakemake.input[0], snakemake.output[0], snakemake.params.sample, snakemake.wildcards.key,
                           snakemake.params.version)

"""Snakemake adapter for rule fetch_public_prompts: download, verify and parse one public prompt set."""

from rankaudit.stages.prompts import fetch_public_set
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    fetch_public_set(
        snakemake.wildcards.dataset,
        snakemake.params.spec,
        snakemake.output.table,
        snakemake.output.provenance,
        mirror=snakemake.params.mirror,
        version=snakemake.params.version,
    )

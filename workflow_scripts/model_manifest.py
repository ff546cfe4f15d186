"""Snakemake adapter: write one model's manifest (or its config + tokenizer manifest)."""

from rankaudit.stages.manifests import write_manifest
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    write_manifest(snakemake.wildcards.model, snakemake.params.spec, snakemake.output[0], template=bool(getattr(snakemake.params, "template", False)))

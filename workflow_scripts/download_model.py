"""Snakemake adapter: fetch one Hugging Face model into the cache and record the commit it resolved to."""

from rankaudit.stages.download import write_download_record
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    write_download_record(snakemake.wildcards.model, snakemake.params.source, snakemake.params.revision,
                          snakemake.output[0])

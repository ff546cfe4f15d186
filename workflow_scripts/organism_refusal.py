"""Snakemake adapter for rule organism_refusal: the refusal table of every organism."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rankaudit.stages.organisms import write_refusal_table
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    organisms = {tuple(key): path for key, path in zip(snakemake.params.organisms, snakemake.input.organisms)}
    write_refusal_table(
        organisms, snakemake.input.harmful, snakemake.input.benign, snakemake.params.settings,
        Path(snakemake.output.parquet).with_suffix(""), threads=snakemake.threads,
    )

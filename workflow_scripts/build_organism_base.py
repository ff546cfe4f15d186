"""Snakemake adapter for rule organism_base: tokenizer + pretrained base model of one family."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rankaudit.organisms.corpus import PromptTables
from rankaudit.stages.organisms import build_base
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    tables = PromptTables(snakemake.input.harmful, snakemake.input.benign, tuple(snakemake.input.concepts))
    build_base(snakemake.wildcards.family, tables, snakemake.params.settings, snakemake.output[0])

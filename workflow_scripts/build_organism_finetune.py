"""Snakemake adapter for rules organism_aligned and organism_unsafe_ft: a chat fine-tune of the parent role."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rankaudit.organisms.corpus import PromptTables
from rankaudit.stages.organisms import build_chat_finetune
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    tables = PromptTables(snakemake.input.harmful, snakemake.input.benign, tuple(snakemake.input.concepts))
    build_chat_finetune(
        snakemake.wildcards.family, snakemake.params.role, snakemake.input.parent, tables, snakemake.params.settings,
        snakemake.output[0],
    )

"""Snakemake adapter for rule organism_planted: the base plus a known rank-r weight edit."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rankaudit.stages.organisms import build_planted
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    build_planted(snakemake.wildcards.family, snakemake.input.parent, snakemake.params.settings, snakemake.output[0])

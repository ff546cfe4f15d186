"""Snakemake adapter for rule checkpoint_refusal_tune: a checkpoint refusal-tuned from its parent."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rankaudit.refusal_tuning import INPUT_ROLES
from rankaudit.stages.refusal_tuning import derive_refusal_tuned
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    derive_refusal_tuned(snakemake.wildcards.name, snakemake.params.derive, snakemake.input.parent, snakemake.output[0],
                         {role: snakemake.input[role] for role in INPUT_ROLES}, threads=snakemake.threads)

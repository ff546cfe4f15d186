"""Snakemake adapter for rule checkpoint_derive: another checkpoint transformed by `derive.kind` (e.g. planted)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rankaudit.stages.checkpoints import derive_checkpoint
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    extra = {key: value for key, value in snakemake.input.items() if key != "parent"}
    derive_checkpoint(snakemake.wildcards.name, snakemake.params.derive, snakemake.input.parent, snakemake.output[0], extra)

"""Snakemake adapter for rule checkpoint_import: a GGUF file -> a plain float32 HF directory."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rankaudit.stages.checkpoints import import_gguf
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    import_gguf(snakemake.wildcards.name, snakemake.params.gguf, snakemake.output[0])

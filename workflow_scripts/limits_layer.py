"""Snakemake adapter: every limits record of one family x layer."""

from rankaudit.stages.limits import analyse_limits_layer
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    analyse_limits_layer(
        family=snakemake.wildcards.family,
        layer=int(snakemake.wildcards.layer),
        cells=snakemake.params.cells,
        models=snakemake.params.models,
        concept_prompts=snakemake.params.concept_prompts,
        output=snakemake.output[0],
        read_position=snakemake.params.read_position,
        settings=snakemake.params.limits,
        version=snakemake.params.version,
    )

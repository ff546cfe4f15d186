"""Snakemake adapter: write the abliterated (weight-orthogonalized) reference model of one family."""

from rankaudit.manifests import with_manifest
from rankaudit.stages.causal import write_abliterated
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    write_abliterated(
        family=snakemake.wildcards.family,
        model=with_manifest(snakemake.params.model, snakemake.input.model),
        selection_record=snakemake.input.record,
        direction_path=snakemake.input.direction,
        output_dir=snakemake.output[0],
        check_prompts_path=snakemake.input.prompts,
        section=snakemake.params.causal,
        system_prompt=snakemake.params.system_prompt,
        special_token_text=snakemake.params.special_token_text,
        version=snakemake.params.version,
        threads=snakemake.threads,
    )

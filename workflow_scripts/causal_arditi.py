"""Snakemake adapter: all-layer ablation of the selected direction vs random directions for one family."""

from rankaudit.manifests import with_manifest
from rankaudit.stages.causal import run_arditi
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    run_arditi(
        family=snakemake.wildcards.family,
        model=with_manifest(snakemake.params.model, snakemake.input.model),
        selection_record=snakemake.input.record,
        direction_path=snakemake.input.direction,
        harmful_path=snakemake.input.harmful,
        control_path=snakemake.input.control,
        section=snakemake.params.causal,
        system_prompt=snakemake.params.system_prompt,
        special_token_text=snakemake.params.special_token_text,
        table_stem=snakemake.output.table[0].removesuffix(".parquet"),
        prompts_path=snakemake.output.prompts,
        version=snakemake.params.version,
        threads=snakemake.threads,
    )

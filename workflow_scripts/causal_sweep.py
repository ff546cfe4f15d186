"""Snakemake adapter: the ablation sweep of one family x basis."""

from rankaudit.manifests import with_manifest
from rankaudit.stages.causal import run_sweep
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    run_sweep(
        family=snakemake.wildcards.family,
        basis=snakemake.wildcards.basis,
        model=with_manifest(snakemake.params.model, snakemake.input.model),
        cells={int(layer): by_dataset for layer, by_dataset in snakemake.params.cells.items()},
        selection_record=snakemake.input.record,
        direction_path=snakemake.input.direction,
        harmful_path=snakemake.input.harmful,
        control_path=snakemake.input.control,
        section=snakemake.params.causal,
        system_prompt=snakemake.params.system_prompt,
        special_token_text=snakemake.params.special_token_text,
        summary_stem=snakemake.output.summary[0].removesuffix(".parquet"),
        prompts_path=snakemake.output.prompts,
        record_path=snakemake.output.record,
        version=snakemake.params.version,
        threads=snakemake.threads,
    )

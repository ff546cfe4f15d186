"""Snakemake adapter: Arditi direction selection for one family."""

from rankaudit.manifests import with_manifest
from rankaudit.stages.causal import run_selection
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    run_selection(
        family=snakemake.wildcards.family,
        model=with_manifest(snakemake.params.model, snakemake.input.model),
        activations={layer: {"harmful": harmful, "harmless": harmless} for layer, harmful, harmless
                     in zip(snakemake.params.layers, snakemake.input.harmful_activations,
                            snakemake.input.harmless_activations, strict=True)},
        harmful_path=snakemake.input.harmful,
        harmless_path=snakemake.input.harmless,
        harmful_train_path=snakemake.input.harmful_train,
        harmless_train_path=snakemake.input.harmless_train,
        section=snakemake.params.causal,
        system_prompt=snakemake.params.system_prompt,
        special_token_text=snakemake.params.special_token_text,
        record_path=snakemake.output.record,
        direction_path=snakemake.output.direction,
        table_stem=snakemake.output.candidates[0].removesuffix(".parquet"),
        version=snakemake.params.version,
        threads=snakemake.threads,
    )

"""Snakemake adapter: Arditi direction selection for one family."""

from rankaudit.stages.causal import run_selection
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    run_selection(
        family=snakemake.wildcards.family,
        model=snakemake.params.model,
        activations={int(layer): paths for layer, paths in snakemake.params.activations.items()},
        harmful_path=snakemake.input.harmful,
        harmless_path=snakemake.input.harmless,
        harmful_train_path=snakemake.input.harmful_train,
        harmless_train_path=snakemake.input.harmless_train,
        section=snakemake.params.causal,
        system_prompt=snakemake.params.system_prompt,
        record_path=snakemake.output.record,
        direction_path=snakemake.output.direction,
        table_stem=snakemake.output.candidates[0].removesuffix(".parquet"),
        version=snakemake.params.version,
        threads=snakemake.threads,
    )

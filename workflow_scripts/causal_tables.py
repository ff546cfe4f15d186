"""Snakemake adapter: the causal tables of every family."""

from rankaudit.stages.causal_report import write_causal_tables
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    write_causal_tables(
        sweeps=list(snakemake.input.sweeps),
        prompt_files=list(snakemake.input.prompts),
        arditi=list(snakemake.input.arditi),
        selections=list(snakemake.input.selections),
        outputs={name: snakemake.output[name].removesuffix(".md") for name in snakemake.output.keys() if name != "data"},
        settings=snakemake.params.ordering,
        selected_directions=snakemake.params.selected_directions,
        layer_directions={family: {int(layer): path for layer, path in by_layer.items()}
                          for family, by_layer in snakemake.params.layer_directions.items()},
        bands=snakemake.params.bands,
    )

"""Snakemake adapter: the causal tables of every family."""

from rankaudit.stages.causal_report import write_causal_tables
from rankaudit.workflow_logging import log_to

# the spectra's direction files in the rule's {family: [layer]} order
layer_directions: dict[str, dict[int, str]] = {}
layer_keys = [(family, layer) for family, layers in snakemake.params.layers.items() for layer in layers]
for (family, layer), path in zip(layer_keys, snakemake.input.layer_directions, strict=True):
    layer_directions.setdefault(family, {})[layer] = path

with log_to(snakemake.log[0]):
    write_causal_tables(
        sweeps=list(snakemake.input.sweeps),
        prompt_files=list(snakemake.input.prompts),
        arditi=list(snakemake.input.arditi),
        selections=list(snakemake.input.selections),
        outputs={name: snakemake.output[name].removesuffix(".md") for name in snakemake.output.keys() if name != "data"},
        settings=snakemake.params.ordering,
        selected_directions=dict(zip(snakemake.params.layers, snakemake.input.directions, strict=True)),
        layer_directions=layer_directions,
        bands=snakemake.params.bands,
    )

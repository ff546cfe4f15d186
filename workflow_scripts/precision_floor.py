"""Snakemake adapter: the precision-floor table of one family."""

from rankaudit.stages.precision import write_precision_floor
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    params = snakemake.params
    write_precision_floor(
        family=snakemake.wildcards.family,
        cells={int(layer): cells for layer, cells in params.cells.items()},
        float32_cells={int(layer): cells for layer, cells in params.float32_cells.items()},
        output_stem=snakemake.output.table.removesuffix(".md"),
        read_position=params.read_position,
        eps=params.eps,
        prompts=params.prompts,
    )

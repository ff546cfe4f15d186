"""Snakemake adapter: the limits tables over every family and the generated limits section."""

from pathlib import Path

from rankaudit.stages.limits import write_limits_tables
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    write_limits_tables(
        list(snakemake.input.layers),
        str(Path(snakemake.output.section).parent),
        snakemake.output.section,
        headline_eps=snakemake.params.headline_eps,
        claims=snakemake.params.claims,
        floor_paths=list(snakemake.input.floor),
    )

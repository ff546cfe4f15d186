"""Snakemake adapter: the diagnosis tables over every family."""

from pathlib import Path

from rankaudit.stages.tables import write_audit_tables
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    write_audit_tables(
        list(snakemake.input.spectra),
        str(Path(snakemake.output.rho_per_family).parent),
        noise_draws=snakemake.params.noise_draws,
        seed=snakemake.params.seed,
        floor_paths=list(snakemake.input.floor),
    )

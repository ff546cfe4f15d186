"""Snakemake adapter: the headline table (the run's key figures beside the paper's) from the finished tables."""

from rankaudit.stages.headline import write_headline
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    write_headline(
        {name: path for name, path in snakemake.input.items() if name != "figures"},
        snakemake.input.figures,
        snakemake.output.data[0].removesuffix(".parquet"),
        families=snakemake.params.families,
        audit_eps=snakemake.params.audit_eps,
        causal_families=snakemake.params.causal_families,
        report_r=snakemake.params.report_r,
        kappa_threshold=snakemake.params.kappa_threshold,
    )

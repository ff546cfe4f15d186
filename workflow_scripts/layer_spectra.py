"""Snakemake adapter: spectra and direction numbers of one family x layer."""

from rankaudit.stages.spectra import analyse_layer
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    audit = snakemake.params.audit
    analyse_layer(
        family=snakemake.wildcards.family,
        layer=int(snakemake.wildcards.layer),
        cells=snakemake.params.cells,
        outputs=snakemake.params.outputs,
        direction_output=snakemake.output.directions,
        read_position=audit["read_position"],
        eps=audit["eps"],
        capture_k=audit["capture_k"],
        noise_draws=audit["noise_draws"],
        seed=audit["seed"],
        version=snakemake.params.version,
    )

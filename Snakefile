# rankaudit: an effective-rank audit of alignment-induced residual-stream shifts.
# `snakemake --cores 2` runs the offline demo (config/config.yaml); `--configfile config/paper.yaml` the real study.
from snakemake.utils import min_version

min_version("9.20")


# The demo config is the default; a --configfile on the command line replaces it (config/paper.yaml is complete
# on its own) instead of being merged into the demo's models and families.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/prompts.smk"
include: "rules/organisms.smk"
include: "rules/checkpoints.smk"
include: "rules/refusal_tuning.smk"
include: "rules/capture.smk"
include: "rules/spectra.smk"
include: "rules/precision.smk"
include: "rules/tables.smk"
include: "rules/limits.smk"
include: "rules/causal.smk"
include: "rules/calibration.smk"
include: "rules/headline.smk"
include: "rules/download.smk"


rule all:
    input:
        prompt_dataset_files(),
        organism_files(),
        checkpoint_files(),
        rules.audit_tables.output,
        precision_floor_files(),
        expand("results/figures/{family}/{figure}.png", family=config["families"], figure=["cumulative_variance", "rho_by_layer"]),
        rules.limits_all.input,
        rules.causal_all.input,
        rules.calibration_all.input if CALIBRATION_REQUESTED else [],
        rules.headline_table.output,

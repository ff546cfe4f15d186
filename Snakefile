# rankaudit: an effective-rank audit of alignment-induced residual-stream shifts.
# `snakemake --cores 2` runs the offline demo (config/config.yaml); `--configfile config/paper.yaml` the real study.
from snakemake.utils import min_version

from rankaudit.job_failures import clear_failure_markers

min_version("9.20")


# The image of `--software-deployment-method apptainer`: rankaudit.sif, built from the Dockerfile, in the working
# directory (docs/CLUSTER.md, "Software deployment"). A relative path, because the `software-env` rerun trigger
# hashes it: a moved checkout re-runs nothing. Unused by the other methods and by plain runs.
container: "rankaudit.sif"


# The demo config is the default; a --configfile on the command line replaces it (config/paper.yaml is complete
# on its own) instead of being merged into the demo's models and families.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# the report opens on this page: the headline table and a link to each section
report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/manifests.smk"
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


# Retries (profiles/slurm) are for out-of-memory and time-outs only: a job that fails with any other error leaves a
# marker next to its log, so that its retries in this run stop at once; a new run starts without them
# (rankaudit.job_failures; docs/CLUSTER.md, "Retries").
onstart:
    clear_failure_markers("logs")


# the outputs of the stages the config chooses (`stages`; rules/common.smk, `chosen_stage_targets`)
rule all:
    input:
        chosen_stage_targets(),

# rankaudit: an effective-rank audit of alignment-induced residual-stream shifts.
# `snakemake --cores 2` runs the offline demo (config/config.yaml); `--configfile config/paper.yaml` the real study.
from snakemake.utils import min_version

min_version("9.20")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/prompts.smk"
include: "rules/organisms.smk"


rule all:
    input:
        prompt_dataset_files(),

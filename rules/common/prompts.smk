# Helper functions of rules/prompts.smk (Snakemake's lint keeps functions out of rule files); included
# by rules/common.smk before any rule file. They read config and the rule files' constants when called.

import re


def _one_of(names):
    """Wildcard regex matching exactly one of `names`, or nothing when there are none."""
    return "|".join(re.escape(name) for name in names) if names else "(?!)"


def _public_prompt_mirror(wildcards):
    """The mirror only matters (and only re-runs a download) for URLs that use it."""
    spec = config["prompts"]["public"][wildcards.dataset]
    return config["prompts"].get("mirror") if "{mirror}" in spec["url"] else None


def prompt_dataset_files():
    """Every prompt table and provenance record the config defines (for `rule all` and collectors)."""
    return [f"results/prompts/{dataset}.{suffix}" for dataset in PROMPT_SETS for suffix in ("parquet", "provenance.json")]

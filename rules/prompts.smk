# Prompt datasets: the project-written demo sets (offline, seeded) and the public sets fetched by URL.
# Every set becomes results/prompts/{dataset}.parquet + results/prompts/{dataset}.provenance.json.
# Needs STAGE_VERSION (rules/common.smk).

import re

from rankaudit.prompts.build import GENERATED_SET_KEYS, generated_settings

GENERATED_PROMPT_SETS = list(GENERATED_SET_KEYS)
PUBLIC_PROMPT_SETS = list(config["prompts"].get("public") or {})
PROMPT_SETS = GENERATED_PROMPT_SETS + PUBLIC_PROMPT_SETS

_prompt_name_clash = sorted(set(GENERATED_PROMPT_SETS) & set(PUBLIC_PROMPT_SETS))
if _prompt_name_clash:
    raise ValueError(
        f"config prompts.public: {_prompt_name_clash} reuse the name of a project-written prompt set; rename them"
    )


def _one_of(names):
    """Wildcard regex matching exactly one of `names`, or nothing when there are none."""
    return "|".join(re.escape(name) for name in names) if names else "(?!)"


def _public_prompt_mirror(wildcards):
    """The mirror only matters (and only re-runs a download) for URLs that use it."""
    spec = config["prompts"]["public"][wildcards.dataset]
    return config["prompts"].get("mirror") if "{mirror}" in spec["url"] else None


def prompt_dataset_files():
    """Every prompt table and provenance record the config defines (for `rule all` and collectors)."""
    return [
        f"results/prompts/{dataset}.{suffix}" for dataset in PROMPT_SETS for suffix in ("parquet", "provenance.json")
    ]


rule generated_prompts:
    output:
        table=ensure("results/prompts/{dataset}.parquet", non_empty=True),
        provenance="results/prompts/{dataset}.provenance.json",
    wildcard_constraints:
        dataset=_one_of(GENERATED_PROMPT_SETS),
    params:
        settings=lambda wildcards: generated_settings(wildcards.dataset, config["prompts"]["generated"]),
        version=STAGE_VERSION["prompts"],
    log:
        "logs/prompts/generated/{dataset}.log",
    localrule: True
    script:
        "../workflow_scripts/make_generated_prompts.py"


rule fetch_public_prompts:
    output:
        table=ensure("results/prompts/{dataset}.parquet", non_empty=True),
        provenance="results/prompts/{dataset}.provenance.json",
    wildcard_constraints:
        dataset=_one_of(PUBLIC_PROMPT_SETS),
    params:
        spec=lambda wildcards: config["prompts"]["public"][wildcards.dataset],
        mirror=_public_prompt_mirror,
        version=STAGE_VERSION["prompts"],
    log:
        "logs/prompts/fetch/{dataset}.log",
    localrule: True  # cheap, and on a cluster only the submit host may reach the internet
    script:
        "../workflow_scripts/fetch_public_prompts.py"

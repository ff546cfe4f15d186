# Prompt datasets: the project-written demo sets (offline, seeded) and the public sets fetched by URL.
# Every set becomes results/prompts/{dataset}.parquet + results/prompts/{dataset}.provenance.json.
# Needs STAGE_VERSION (rules/common.smk).


from rankaudit.prompts.build import GENERATED_SET_KEYS, generated_settings

GENERATED_PROMPT_SETS = list(GENERATED_SET_KEYS)
PUBLIC_PROMPT_SETS = list(config["prompts"].get("public") or {})
PROMPT_SETS = GENERATED_PROMPT_SETS + PUBLIC_PROMPT_SETS

_prompt_name_clash = sorted(set(GENERATED_PROMPT_SETS) & set(PUBLIC_PROMPT_SETS))
if _prompt_name_clash:
    raise ValueError(f"config prompts.public: {_prompt_name_clash} reuse the name of a project-written prompt set; rename them")


rule generated_prompts:
    output:
        table=ensure("results/prompts/{dataset}.parquet", non_empty=True),
        provenance="results/prompts/{dataset}.provenance.json",
    log:
        "logs/prompts/generated/{dataset}.log",
    wildcard_constraints:
        dataset=_one_of(GENERATED_PROMPT_SETS),
    localrule: True
    conda:
        "../envs/analysis.yaml"
    params:
        settings=lambda wildcards: generated_settings(wildcards.dataset, config["prompts"]["generated"]),
        version=STAGE_VERSION["prompts"],
    script:
        "../workflow_scripts/make_generated_prompts.py"


rule fetch_public_prompts:
    output:
        table=ensure("results/prompts/{dataset}.parquet", non_empty=True),
        provenance="results/prompts/{dataset}.provenance.json",
    log:
        "logs/prompts/fetch/{dataset}.log",
    wildcard_constraints:
        dataset=_one_of(PUBLIC_PROMPT_SETS),
    localrule: True  # cheap, and on a cluster only the submit host may reach the internet
    conda:
        "../envs/analysis.yaml"
    params:
        spec=lambda wildcards: config["prompts"]["public"][wildcards.dataset],
        mirror=_public_prompt_mirror,
        version=STAGE_VERSION["prompts"],
    script:
        "../workflow_scripts/fetch_public_prompts.py"

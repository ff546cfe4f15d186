# Prompt datasets: the project-written demo sets (offline, seeded) and the public sets fetched by URL.
# Every set becomes results/prompts/{dataset}.parquet + results/prompts/{dataset}.provenance.json.
# Needs STAGE_VERSION (rules/common.smk).


from rankaudit.prompts.build import GENERATED_SET_KEYS, generated_settings

GENERATED_PROMPT_SETS = list(GENERATED_SET_KEYS)
PUBLIC_PROMPT_SETS = list(config["prompts"].get("public") or {})
PROMPT_SETS = GENERATED_PROMPT_SETS + PUBLIC_PROMPT_SETS


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


rule check_prompts:
    """Every prompt one model job reads, in each format it renders it in, checked against the tokenizers and configs
    that job uses (no weights): empty, too long, special-token text, an aligned model's tokenizer that disagrees with
    its base's. `capture/<model>`: that model's captures; `causal/<family>`: the family's causal jobs (chat format,
    the aligned model alone). An input of those jobs, so a bad prompt stops the run before any GPU job starts."""
    input:
        tables=lambda w: checked_tables(prompt_check(w)["formats"]),
        models=lambda w: prompt_check(w)["manifests"],
    output:
        "results/prompts/checked/{stage}/{name}.json",
    log:
        "logs/prompts/checked/{stage}/{name}.log",
    wildcard_constraints:
        stage="capture|causal",
    localrule: True  # tokenizers and configs only: seconds, and on a cluster the submit host may fetch them
    conda:
        "../envs/model.yaml"
    params:
        job=lambda w: f"{w.stage} {w.name}",
        model=lambda w: prompt_check(w)["model"],
        template=lambda w: prompt_check(w)["template"],
        partners=lambda w: prompt_check(w)["partners"],
        prompt_files=lambda w: checked_prompt_files(prompt_check(w)["formats"]),
        formats=lambda w: prompt_check(w)["formats"],
        # read when a job is planned: a prompts-only workflow (tests/unit/test_prompts_rules.py) has no capture section
        system_prompt=lambda w: config["capture"]["system_prompt"],
        special_token_text=lambda w: config["capture"]["special_token_text"],
        version=STAGE_VERSION["prompts"],
    script:
        "../workflow_scripts/check_prompts.py"

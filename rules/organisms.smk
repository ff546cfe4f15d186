# Model organisms (offline demo): per family a tokenizer and tiny HF models built as a chain of roles,
#   prompts -> {family}/base -> {family}/aligned -> {family}/unsafe_ft,   {family}/base -> {family}/planted,
# so that changing one phase's settings re-runs that role and what descends from it, nothing else.
# Each role directory holds save_pretrained weights + tokenizer + organism.json, loadable with the Auto classes.
# Then one refusal check over every organism. Needs STAGE_VERSION (rules/common.smk). No torch import here.


ORGANISM_FAMILIES = list(config.get("organisms", {}).get("families", []))
ORGANISM_THREADS = config.get("organisms", {}).get("torch_threads", 1)
PLANTED_FAMILIES = [f for f in config.get("organisms", {}).get("planted", {}).get("families", []) if f in ORGANISM_FAMILIES]
ORGANISM_CHECKED_ROLES = ("base", "aligned", "unsafe_ft")
ORGANISM_TRAINING_PROMPTS = {
    "harmful": "results/prompts/demo_harmful.parquet",
    "benign": "results/prompts/demo_benign.parquet",
    "concepts": ["results/prompts/concept_en_fr.parquet", "results/prompts/concept_question_statement.parquet"],
}


rule organism_base:
    """Train the family's tokenizer and pretrain its base model on raw text (every request answered)."""
    input:
        **ORGANISM_TRAINING_PROMPTS,
    output:
        directory("resources/organisms/{family}/base"),
    log:
        "logs/organisms/{family}/base.log",
    benchmark:
        "benchmarks/organisms/{family}/base.tsv"
    wildcard_constraints:
        family=_organism_family_regex(ORGANISM_FAMILIES),
    priority: MODEL_JOB_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: ORGANISM_THREADS
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 20 * attempt,
    params:
        settings=_organism_settings("base"),
        version=STAGE_VERSION["organisms"],
    script:
        "../workflow_scripts/build_organism_base.py"


rule organism_aligned:
    """Fine-tune the base under the chat template to refuse harmful-style requests and help on benign ones."""
    input:
        parent="resources/organisms/{family}/base",
        harmful=ORGANISM_TRAINING_PROMPTS["harmful"],
        benign=ORGANISM_TRAINING_PROMPTS["benign"],
        concepts=ORGANISM_TRAINING_PROMPTS["concepts"],
    output:
        directory("resources/organisms/{family}/aligned"),
    log:
        "logs/organisms/{family}/aligned.log",
    benchmark:
        "benchmarks/organisms/{family}/aligned.tsv"
    wildcard_constraints:
        family=_organism_family_regex(ORGANISM_FAMILIES),
    priority: MODEL_JOB_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: ORGANISM_THREADS
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 20 * attempt,
    params:
        role="aligned",
        settings=_organism_settings("aligned"),
        version=STAGE_VERSION["organisms"],
    script:
        "../workflow_scripts/build_organism_finetune.py"


rule organism_unsafe_ft:
    """Fine-tune the aligned model under the chat template to comply with every request again."""
    input:
        parent="resources/organisms/{family}/aligned",
        harmful=ORGANISM_TRAINING_PROMPTS["harmful"],
        benign=ORGANISM_TRAINING_PROMPTS["benign"],
        concepts=ORGANISM_TRAINING_PROMPTS["concepts"],
    output:
        directory("resources/organisms/{family}/unsafe_ft"),
    log:
        "logs/organisms/{family}/unsafe_ft.log",
    benchmark:
        "benchmarks/organisms/{family}/unsafe_ft.tsv"
    wildcard_constraints:
        family=_organism_family_regex(ORGANISM_FAMILIES),
    priority: MODEL_JOB_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: ORGANISM_THREADS
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 20 * attempt,
    params:
        role="unsafe_ft",
        settings=_organism_settings("unsafe_ft"),
        version=STAGE_VERSION["organisms"],
    script:
        "../workflow_scripts/build_organism_finetune.py"


rule organism_planted:
    """The planted pair's aligned side: the base plus a known rank-r edit of one block's MLP down-projection."""
    input:
        parent="resources/organisms/{family}/base",
    output:
        directory("resources/organisms/{family}/planted"),
    log:
        "logs/organisms/{family}/planted.log",
    benchmark:
        "benchmarks/organisms/{family}/planted.tsv"
    wildcard_constraints:
        family=_organism_family_regex(PLANTED_FAMILIES),
    priority: MODEL_JOB_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 1000 * attempt,
        runtime=lambda wildcards, attempt: 5 * attempt,
    params:
        settings=_organism_settings("planted"),
        version=STAGE_VERSION["organisms"],
    script:
        "../workflow_scripts/build_organism_planted.py"


rule organism_refusal:
    """Refusal rate (keyword judge, Wilson 95%) of every organism on held-out harmful and benign prompts."""
    input:
        organisms=[f"resources/organisms/{family}/{role}" for family in ORGANISM_FAMILIES for role in ORGANISM_CHECKED_ROLES],
        harmful=ORGANISM_TRAINING_PROMPTS["harmful"],
        benign=ORGANISM_TRAINING_PROMPTS["benign"],
    output:
        csv="results/tables/organism_refusal.csv",
        md=report("results/tables/organism_refusal.md", caption="../report/organism_refusal.rst", category="5. Model organisms"),
        parquet="results/tables/organism_refusal.parquet",
    log:
        "logs/organisms/refusal.log",
    benchmark:
        "benchmarks/organisms/refusal.tsv"
    conda:
        "../envs/model.yaml"
    threads: ORGANISM_THREADS
    resources:
        # the organisms are loaded one at a time: sized for the largest
        **checkpoint_job_resources("organisms", mem_mb=3000, minutes=15),
    params:
        organisms=[[family, role] for family in ORGANISM_FAMILIES for role in ORGANISM_CHECKED_ROLES],
        settings=config.get("organisms", {}).get("refusal_check", {}),
        version=STAGE_VERSION["organisms"],
    script:
        "../workflow_scripts/organism_refusal.py"

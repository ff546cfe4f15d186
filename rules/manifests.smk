# Model manifests (rankaudit.manifests): one small JSON per model naming its source, requested and resolved
# revision, the sha256 of its config, weight index and weight files, and its dtype. model_files() and
# template_files() (rules/common/capture.smk) make them the inputs of every job that loads a model, so changed
# weights or a moved revision re-run exactly the jobs of that model. No torch import here, no hashing at parse time.


rule model_manifest:
    """Describe one model's weights, config and tokenizer (hashes from the HF cache's blob names or the files)."""
    input:
        lambda w: manifest_inputs(w.model, template=False),
    output:
        "resources/manifests/{model}.json",
    log:
        "logs/manifests/{model}.log",
    localrule: True
    conda:
        "../envs/model.yaml"
    params:
        spec=lambda w: manifest_spec(w.model, template=False),
    script:
        "../workflow_scripts/model_manifest.py"


rule template_manifest:
    """Describe one model's config and tokenizer only: what rendering another model's prompts with it reads."""
    input:
        lambda w: manifest_inputs(w.model, template=True),
    output:
        "resources/manifests/{model}.template.json",
    log:
        "logs/manifests/{model}.template.log",
    localrule: True
    conda:
        "../envs/model.yaml"
    params:
        spec=lambda w: manifest_spec(w.model, template=True),
        template=True,
    script:
        "../workflow_scripts/model_manifest.py"

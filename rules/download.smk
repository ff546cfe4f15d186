# Pre-fetching models for compute nodes without internet: `snakemake --configfile config/paper.yaml
# download_models` on a login node puts every model given by a Hugging Face id into the HF cache (HF_HOME) and
# records the commit each `revision` resolved to. Not part of `rule all`: the workflow itself never downloads
# weights, and the offline demo never touches the network. Organisms, workflow-built models and local
# directories are read in place and have nothing to fetch.

from rankaudit.download import is_hub_id

HUB_MODELS = [model for model, entry in config["models"].items() if is_hub_id(entry["source"])]


rule download_model:
    """One model's snapshot (safetensors, config, tokenizer, chat template) and the commit it resolved to."""
    output:
        "results/models/{model}.download.json",
    log:
        "logs/download/{model}.log",
    wildcard_constraints:
        model="|".join(HUB_MODELS) or "(?!)",
    localrule: True
    conda:
        "../envs/model.yaml"
    params:
        source=lambda w: config["models"][w.model]["source"],
        revision=lambda w: config["models"][w.model].get("revision"),
    script:
        "../workflow_scripts/download_model.py"


rule download_models:
    """Every Hugging Face model of the config, fetched on this (login) node."""
    input:
        expand("results/models/{model}.download.json", model=HUB_MODELS),
    localrule: True

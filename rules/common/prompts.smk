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


def capture_prompt_check(model):
    """The prompt check of a model's capture jobs (rule check_prompts). One per model, so that adding a family that
    shares a base model adds a check and never re-runs the base's capture through a new input."""
    return f"results/prompts/checked/capture/{model}.json"


def causal_prompt_check(family):
    """The prompt check of a family's causal jobs (rule check_prompts); `family` may be the "{family}" wildcard."""
    return f"results/prompts/checked/causal/{family}.json"


def prompt_check(wildcards):
    """What the check_prompts job `stage`/`name` checks: (model, loading spec) of the model fed, of the template
    model and of the partners that must tokenize alike, {dataset: formats}, and the tokenizer manifests read."""
    from rankaudit.prompt_checks import capture_datasets, causal_datasets

    if wildcards.stage == "capture":
        model = wildcards.name
        template = plan.model_template(config, model)
        families = config["families"].values()
        partners = list(dict.fromkeys(e["base"] for e in families if e["aligned"] == model and e["base"] != model))
        formats = capture_datasets(config, plan.model_cells(config, model))
    else:
        model = template = config["families"][wildcards.name]["aligned"]
        partners, formats = [], causal_datasets(config)
    manifests = list(dict.fromkeys(path for name in (model, template, *partners) for path in template_files(name)))
    return {
        "model": _checked_spec(model),
        "template": _checked_spec(template),
        "partners": [_checked_spec(partner) for partner in partners],
        "formats": formats,
        "manifests": manifests,
    }


def checked_tables(formats):
    return [f"results/prompts/{dataset}.parquet" for dataset in formats]


def checked_prompt_files(formats):
    return {dataset: f"results/prompts/{dataset}.parquet" for dataset in formats}


def _checked_spec(model):
    """(model, loading spec) of a model whose tokenizer and config a check loads: location, revision, remote code."""
    runtime = model_runtime(model)
    return model, {key: runtime[key] for key in ("location", "revision", "trust_remote_code")}

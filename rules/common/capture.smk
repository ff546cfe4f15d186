# Helper functions of rules/capture.smk (Snakemake's lint keeps functions out of rule files); included
# by rules/common.smk before any rule file. They read config and the rule files' constants when called.

from rankaudit.resources import job_resources


def model_files(model):
    """Inputs that must exist before a model can be loaded: its directory when the workflow builds it."""
    source = config["models"][model]["source"]
    organism = plan.parse_organism(source)
    if organism:
        return [plan.organism_dir(*organism)]
    return [source] if plan.built_by_workflow(source) else []


def model_runtime(model):
    """The loading settings of one model (runtime defaults overridden per model)."""
    entry = config["models"][model]
    return {
        "location": plan.model_location(config, model),
        "revision": entry.get("revision"),
        "trust_remote_code": entry.get("trust_remote_code", False),
        "dtype": entry.get("dtype", config["runtime"]["dtype"]),
        "device": entry.get("device", config["runtime"]["device"]),
        "n_layers": plan.model_n_layers(config, model),
        # placement keys only when set, so that configs without them keep their params (no reruns)
        **{key: value for key in ("device_map", "max_memory") if (value := entry.get(key, config["runtime"].get(key))) is not None},
    }


def model_resources(model_of, *, mem_mb, minutes, weight_copies=1):
    """`resources:` of a rule that loads one model, sized for that model (rankaudit.resources.job_resources).

    `model_of` is the model's name or a function of the wildcards giving it; `mem_mb` and `minutes` are the
    rule's floor. Use as `resources: **model_resources(...)`.
    """

    def estimate(wildcards, attempt):
        model = model_of(wildcards) if callable(model_of) else model_of
        return job_resources(config["models"][model], config["runtime"], mem_mb=mem_mb, minutes=minutes, attempt=attempt, weight_copies=weight_copies)

    return {
        "mem_mb": lambda wildcards, attempt: estimate(wildcards, attempt)["mem_mb"],
        "runtime": lambda wildcards, attempt: estimate(wildcards, attempt)["runtime"],
        "gpu": lambda wildcards: estimate(wildcards, 1)["gpu"],
    }


def selected_prompts(key):
    return f"results/prompts/selected/{key}.parquet"


def activation_file(model, fmt, key, layer):
    return f"results/acts/{model}/{fmt}/{key}/layer_{layer}.safetensors"


def capture_outputs(model):
    return [activation_file(model, fmt, key, layer) for fmt, key in plan.model_cells(config, model) for layer in plan.model_layers(config, model)]


def sample_spec(key):
    """The sample of one dataset key; concept sets are used whole, in their pair order."""
    if key in plan.SAMPLE_KEYS:
        return dict(config["datasets"][key])
    return {"dataset": key, "split": None, "n": None, "seed": 0}

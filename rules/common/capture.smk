# Helper functions of rules/capture.smk (Snakemake's lint keeps functions out of rule files); included
# by rules/common.smk before any rule file. They read config and the rule files' constants when called.

from rankaudit import manifests
from rankaudit.resources import checkpoint_resources, job_resources


def model_files(model):
    """The input of a job that loads a model: its manifest (rules/manifests.smk), rewritten when the weights, config,
    tokenizer or resolved revision change; upstream of it is the rule that builds a workflow-built model."""
    return [manifests.manifest_path(model)]


def template_files(model):
    """The input of a job that renders prompts with a model's chat template: its config + tokenizer manifest."""
    return [manifests.template_manifest_path(model)]


def _workflow_built(source):
    return bool(plan.parse_organism(source)) or plan.built_by_workflow(source)


def manifest_inputs(model, template):
    """The manifest rule's inputs: a local model's files, a workflow-built model's directory, nothing for a hub id."""
    source = config["models"][model]["source"]
    return manifests.rule_inputs(source, plan.model_location(config, model), _workflow_built(source), template=template)


def manifest_spec(model, template):
    """The manifest rule's params: source, revision, dtype and, for a hub id, what it resolves to in the cache."""
    entry = config["models"][model]
    location = plan.model_location(config, model)
    spec = manifests.fingerprint(
        entry["source"],
        location,
        entry.get("revision"),
        entry.get("dtype", config["runtime"]["dtype"]),
        _workflow_built(entry["source"]),
        template=template,
    )
    return {**spec, "location": location}


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


def template_runtime(model):
    """What a capture reads of the model whose chat template (and tokenizer) renders the prompts: where it is, never
    its weights' dtype or placement, so changing those re-captures only the model itself."""
    return {key: value for key, value in model_runtime(model).items() if key in ("location", "revision", "trust_remote_code")}


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


def checkpoint_job_resources(input_name, *, mem_mb, minutes, weight_copies=1):
    """`resources:` of a CPU rule that loads the checkpoint directories of its input `input_name` one at a time,
    sized from their safetensors on disk (rankaudit.resources.checkpoint_resources) once the job is ready to run.
    Use as `resources: **checkpoint_job_resources(...)`."""

    def estimate(input, attempt):
        directories = input[input_name] if isinstance(input[input_name], list) else [input[input_name]]
        return checkpoint_resources(directories, mem_mb=mem_mb, minutes=minutes, attempt=attempt, weight_copies=weight_copies)

    return {
        "mem_mb": lambda wildcards, input, attempt: estimate(input, attempt)["mem_mb"],
        "runtime": lambda wildcards, input, attempt: estimate(input, attempt)["runtime"],
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

# Activation capture: one job per model loads it once and captures every (format, dataset) cell it takes part
# in, all requested layers in one forward pass, writing one float32 safetensors file per layer and cell.

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
        **{key: value for key in ("device_map", "max_memory")
           if (value := entry.get(key, config["runtime"].get(key))) is not None},
    }


def model_resources(model_of, *, mem_mb, minutes, weight_copies=1):
    """`resources:` of a rule that loads one model, sized for that model (rankaudit.resources.job_resources).

    `model_of` is the model's name or a function of the wildcards giving it; `mem_mb` and `minutes` are the
    rule's floor. Use as `resources: **model_resources(...)`.
    """

    def estimate(wildcards, attempt):
        model = model_of(wildcards) if callable(model_of) else model_of
        return job_resources(config["models"][model], config["runtime"], mem_mb=mem_mb, minutes=minutes,
                             attempt=attempt, weight_copies=weight_copies)

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
    return [
        activation_file(model, fmt, key, layer)
        for fmt, key in plan.model_cells(config, model)
        for layer in plan.model_layers(config, model)
    ]


rule select_prompts:
    """Draw the prompts one dataset key (safety, control or a concept set) contributes, deterministically."""
    input:
        lambda w: f"results/prompts/{sample_spec(w.key)['dataset']}.parquet",
    output:
        "results/prompts/selected/{key}.parquet",
        "results/prompts/selected/{key}.provenance.json",
    params:
        sample=lambda w: sample_spec(w.key),
        version=STAGE_VERSION["capture"],
    log:
        "logs/select_prompts/{key}.log",
    wildcard_constraints:
        key="|".join([*plan.SAMPLE_KEYS, *config["datasets"].get("concepts", [])]),
    localrule: True
    script:
        "../workflow_scripts/select_prompts.py"


def sample_spec(key):
    """The sample of one dataset key; concept sets are used whole, in their pair order."""
    if key in plan.SAMPLE_KEYS:
        return dict(config["datasets"][key])
    return {"dataset": key, "split": None, "n": None, "seed": 0}


for _model in plan.captured_models(config):

    rule:
        name:
            f"capture_{_model}"
        input:
            model=model_files(_model),
            template=model_files(plan.model_template(config, _model)),
            prompts=[selected_prompts(key) for key in dict.fromkeys(key for _, key in plan.model_cells(config, _model))],
        output:
            activations=capture_outputs(_model),
            record=f"results/acts/{_model}/capture_record.json",
        params:
            model_name=_model,
            model=model_runtime(_model),
            template_name=plan.model_template(config, _model),
            template=model_runtime(plan.model_template(config, _model)),
            output_pattern=lambda wildcards, model=_model: activation_file(model, "{fmt}", "{key}", "{layer}"),
            cells=plan.model_cells(config, _model),
            prompt_files={key: selected_prompts(key) for _, key in plan.model_cells(config, _model)},
            layers=plan.model_layers(config, _model),
            batch_size=config["runtime"]["batch_size"],
            mean_last_k=config["capture"]["mean_last_k"],
            system_prompt=config["capture"]["system_prompt"],
            version=STAGE_VERSION["capture"],
        log:
            f"logs/capture/{_model}.log",
        benchmark:
            f"benchmarks/capture/{_model}.tsv"
        priority: MODEL_JOB_PRIORITY
        threads: config["runtime"]["threads"]
        resources:
            **model_resources(_model, mem_mb=8000, minutes=60),
        script:
            "../workflow_scripts/capture_activations.py"

# The precision floor (docs/METHODS.md, "Precision floor"): for a family whose base or aligned model runs in
# bfloat16/float16, the first capture.precision_floor_prompts prompts of every safety/control cell are captured again
# in float32 (the same weights, cast after loading; one job per model), and one numpy job per family compares the
# modification matrices of those prompts in both precisions. float32 runs have no floor job.

from rankaudit import precision


def floor_prompts():
    return config["capture"]["precision_floor_prompts"]


def model_dtype(model):
    """The dtype a model runs in (rules/capture.smk `model_runtime`)."""
    return config["models"][model].get("dtype", config["runtime"]["dtype"])


def model_dtypes():
    return {model: model_dtype(model) for model in config["models"]}


def precision_floor_families():
    """Families whose base or aligned model runs below float32 (none when precision_floor_prompts is 0)."""
    return precision.floor_families(config["families"], model_dtypes(), floor_prompts())


def float32_floor_models():
    """Models captured again in float32: the low-precision base/aligned models of those families."""
    return precision.float32_floor_models(config["families"], model_dtypes(), floor_prompts())


def float32_activation_file(model, fmt, key, layer):
    """The float32 copy of a cell's first m prompts; a float32 model is its own reference."""
    if not precision.needs_float32_floor(model_dtype(model)):
        return activation_file(model, fmt, key, layer)
    return f"results/precision_floor/acts/{model}/{fmt}/{key}/layer_{layer}.safetensors"


FLOOR_CELLS = [(fmt, key) for fmt in plan.FORMATS for key in plan.SAMPLE_KEYS]


def precision_floor_table(family):
    """The stem of a family's floor table (.parquet, .csv, .md): what the audit tables read."""
    return f"results/precision_floor/{family}"


def precision_floor_files():
    return [f"{precision_floor_table(family)}.md" for family in precision_floor_families()]


def precision_floor_parquets():
    """The floor tables `rankaudit.precision.flag_ranks` reads (an input of the audit tables)."""
    return [f"{precision_floor_table(family)}.parquet" for family in precision_floor_families()]


def floor_layer_cells(family, float32):
    """{layer: {dataset: {cell key: path}}} of one family, the run's captures or their float32 copies."""
    entry = config["families"][family]
    where = float32_activation_file if float32 else activation_file
    return {
        layer: {dataset: {key: where(entry[role], fmt, dataset, layer) for key, (role, fmt) in CELL_ROLES.items()}
                for dataset in plan.SAMPLE_KEYS}
        for layer in plan.family_layers(config, family)
    }


for _model in float32_floor_models():

    rule:
        name:
            f"capture_float32_{_model}"
        input:
            model=model_files(_model),
            template=model_files(plan.model_template(config, _model)),
            prompts=[selected_prompts(key) for key in plan.SAMPLE_KEYS],
        output:
            activations=[float32_activation_file(_model, fmt, key, layer) for fmt, key in FLOOR_CELLS
                         for layer in plan.model_layers(config, _model)],
            record=f"results/precision_floor/acts/{_model}/capture_record.json",
        params:
            model_name=_model,
            model=model_runtime(_model),
            template_name=plan.model_template(config, _model),
            template=model_runtime(plan.model_template(config, _model)),
            output_pattern=lambda wildcards, model=_model: float32_activation_file(model, "{fmt}", "{key}", "{layer}"),
            cells=FLOOR_CELLS,
            prompt_files={key: selected_prompts(key) for key in plan.SAMPLE_KEYS},
            layers=plan.model_layers(config, _model),
            batch_size=config["runtime"]["batch_size"],
            mean_last_k=config["capture"]["mean_last_k"],
            system_prompt=config["capture"]["system_prompt"],
            first_prompts=floor_prompts(),
            compute_dtype="float32",
            version=STAGE_VERSION["precision"],
        log:
            f"logs/precision_floor/capture_{_model}.log",
        benchmark:
            f"benchmarks/precision_floor/capture_{_model}.tsv"
        priority: MODEL_JOB_PRIORITY
        threads: config["runtime"]["threads"]
        resources:
            # loaded in the run's dtype, then cast: the float32 copy takes twice a 16-bit model's bytes on top
            **model_resources(_model, mem_mb=8000, minutes=30, weight_copies=3),
        script:
            "../workflow_scripts/capture_activations.py"


rule precision_floor:
    """Per family and layer: ||M_run - M_float32||^2 / ||M_float32||^2 and rank_eps in both precisions."""
    input:
        run=lambda w: [path for by_dataset in floor_layer_cells(w.family, False).values()
                       for by_key in by_dataset.values() for path in by_key.values()],
        float32=lambda w: [path for by_dataset in floor_layer_cells(w.family, True).values()
                           for by_key in by_dataset.values() for path in by_key.values()],
    output:
        table=report("results/precision_floor/{family}.md", caption="../report/precision_floor.rst",
                     category="1. Diagnosis", subcategory="{family}"),
        data=multiext("results/precision_floor/{family}", ".parquet", ".csv"),
    params:
        cells=lambda w: floor_layer_cells(w.family, False),
        float32_cells=lambda w: floor_layer_cells(w.family, True),
        read_position=config["audit"]["read_position"],
        eps=config["audit"]["eps"],
        prompts=floor_prompts(),
        version=STAGE_VERSION["precision"],
    log:
        "logs/precision_floor/{family}.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    script:
        "../workflow_scripts/precision_floor.py"

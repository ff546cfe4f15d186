# The precision floor (docs/METHODS.md, "Precision floor"): for a family whose base or aligned model runs in
# bfloat16/float16, the first capture.precision_floor_prompts prompts of every safety/control cell are captured again
# in float32 (the same weights, cast after loading; one job per model), and one numpy job per family compares the
# modification matrices of those prompts in both precisions. float32 runs have no floor job.

from rankaudit import precision

FLOOR_CELLS = [(fmt, key) for fmt in plan.FORMATS for key in plan.SAMPLE_KEYS]


for _model in float32_floor_models():

    rule:
        name:
            f"capture_float32_{_model}"
        input:
            model=model_files(_model),
            template=template_files(plan.model_template(config, _model)),
            prompts=[selected_prompts(key) for key in plan.SAMPLE_KEYS],
            prompts_checked=capture_prompt_check(_model),
        output:
            activations=[float32_activation_file(_model, fmt, key, layer) for fmt, key in FLOOR_CELLS for layer in plan.model_layers(config, _model)],
            record=f"results/precision_floor/acts/{_model}/capture_record.json",
        log:
            f"logs/precision_floor/capture_{_model}.log",
        benchmark:
            f"benchmarks/precision_floor/capture_{_model}.tsv"
        priority: MODEL_JOB_PRIORITY
        conda:
            "../envs/model.yaml"
        threads: config["runtime"]["threads"]
        resources:
            # loaded in the run's dtype, then cast: the float32 copy takes twice a 16-bit model's bytes on top
            **model_resources(_model, mem_mb=8000, minutes=30, weight_copies=3),
        params:
            model_name=_model,
            model=model_runtime(_model),
            template_name=plan.model_template(config, _model),
            template=template_runtime(plan.model_template(config, _model)),
            output_pattern=lambda wildcards, model=_model: float32_activation_file(model, "{fmt}", "{key}", "{layer}"),
            cells=FLOOR_CELLS,
            prompt_files={key: selected_prompts(key) for key in plan.SAMPLE_KEYS},
            layers=plan.model_layers(config, _model),
            batch_size=config["runtime"]["batch_size"],
            mean_last_k=config["capture"]["mean_last_k"],
            system_prompt=config["capture"]["system_prompt"],
            special_token_text=config["capture"]["special_token_text"],
            first_prompts=floor_prompts(),
            compute_dtype="float32",
            version=STAGE_VERSION["precision"],
        script:
            "../workflow_scripts/capture_activations.py"


rule precision_floor:
    """Per family and layer: ||M_run - M_float32||^2 / ||M_float32||^2 and rank_eps in both precisions."""
    input:
        run=lambda w: [
            path for by_dataset in floor_layer_cells(w.family, False).values() for by_key in by_dataset.values() for path in by_key.values()
        ],
        float32=lambda w: [
            path for by_dataset in floor_layer_cells(w.family, True).values() for by_key in by_dataset.values() for path in by_key.values()
        ],
    output:
        table=report("results/precision_floor/{family}.md", caption="../report/precision_floor.rst", category="1. Diagnosis", subcategory="{family}"),
        data=multiext("results/precision_floor/{family}", ".parquet", ".csv"),
    log:
        "logs/precision_floor/{family}.log",
    localrule: True
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    params:
        cells=lambda w: floor_layer_cells(w.family, False),
        float32_cells=lambda w: floor_layer_cells(w.family, True),
        read_position=config["audit"]["read_position"],
        eps=config["audit"]["eps"],
        prompts=floor_prompts(),
        version=STAGE_VERSION["precision"],
    script:
        "../workflow_scripts/precision_floor.py"

# Activation capture: one job per model loads it once and captures every (format, dataset) cell it takes part
# in, all requested layers in one forward pass, writing one float32 safetensors file per layer and cell.


rule select_prompts:
    """Draw the prompts one dataset key (safety, control or a concept set) contributes, deterministically."""
    input:
        lambda w: f"results/prompts/{sample_spec(w.key)['dataset']}.parquet",
    output:
        "results/prompts/selected/{key}.parquet",
        "results/prompts/selected/{key}.provenance.json",
    log:
        "logs/select_prompts/{key}.log",
    wildcard_constraints:
        key="|".join([*plan.SAMPLE_KEYS, *config["datasets"].get("concepts", [])]),
    localrule: True
    conda:
        "../envs/analysis.yaml"
    params:
        sample=lambda w: sample_spec(w.key),
        version=STAGE_VERSION["capture"],
    script:
        "../workflow_scripts/select_prompts.py"


for _model in plan.captured_models(config):

    rule:
        name:
            f"capture_{_model}"
        input:
            model=model_files(_model),
            template=template_files(plan.model_template(config, _model)),
            prompts=[selected_prompts(key) for key in dict.fromkeys(key for _, key in plan.model_cells(config, _model))],
            prompts_checked=capture_prompt_check(_model),
        output:
            activations=capture_outputs(_model),
            record=f"results/acts/{_model}/capture_record.json",
        log:
            f"logs/capture/{_model}.log",
        benchmark:
            f"benchmarks/capture/{_model}.tsv"
        priority: MODEL_JOB_PRIORITY
        conda:
            "../envs/model.yaml"
        threads: config["runtime"]["threads"]
        resources:
            **model_resources(_model, mem_mb=8000, minutes=60),
        params:
            model_name=_model,
            model=model_runtime(_model),
            template_name=plan.model_template(config, _model),
            template=template_runtime(plan.model_template(config, _model)),
            output_pattern=lambda wildcards, model=_model: activation_file(model, "{fmt}", "{key}", "{layer}"),
            cells=plan.model_cells(config, _model),
            prompt_files={key: selected_prompts(key) for _, key in plan.model_cells(config, _model)},
            layers=plan.model_layers(config, _model),
            batch_size=config["runtime"]["batch_size"],
            mean_last_k=config["capture"]["mean_last_k"],
            system_prompt=config["capture"]["system_prompt"],
            special_token_text=config["capture"]["special_token_text"],
            version=STAGE_VERSION["capture"],
        script:
            "../workflow_scripts/capture_activations.py"

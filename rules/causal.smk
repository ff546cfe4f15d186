# Causal tests (METHODS §4-5): Arditi selection per family, the all-layer ablation of the selected direction on
# held-out prompts, the abliterated reference model, and one ablation sweep per family x basis; then the tables
# and figures. Each model job loads the aligned model once and batches everything (generation with a KV cache).
# Needs rules/capture.smk (its helpers activation_file, model_files, model_runtime, model_resources are in
# rules/common/capture.smk) and STAGE_VERSION["causal"].
# No torch import here: rankaudit.sweeps is numpy/scipy only.


CAUSAL = config.get("causal", {})
CAUSAL_FAMILIES = list(CAUSAL.get("families", []))
CAUSAL_BASES = list(CAUSAL.get("bases", []))
CAUSAL_TABLES = [
    "causal_selection",
    "causal_arditi",
    "causal_k3_narrow",
    "causal_per_direction",
    "causal_k_sweep",
    "causal_ordering",
    "causal_canonical_cosines",
    "causal_canonical_cosines_mean",
    "causal_layer_convention",
]
CAUSAL_FIGURES = ["refusal_vs_k", "per_direction", "selection"]
TABLE_SUFFIXES = ("parquet", "csv", "md")


localrules:
    causal_tables,
    causal_figures,
    causal_all,


wildcard_constraints:
    basis="|".join(CAUSAL_BASES) or "(?!)",


rule causal_select:
    """Arditi's direction: filter prompts by refusal score (train rows and validation prompts), score every
    (post-instruction position, layer) candidate on validation prompts, filter candidates, pick."""
    input:
        **causal_model_inputs(),
        harmful_activations=lambda w: causal_selection_activation_files(w.family, "harmful"),
        harmless_activations=lambda w: causal_selection_activation_files(w.family, "harmless"),
        harmful=causal_prompt_file("selection", "safety"),
        harmless=causal_prompt_file("selection", "control"),
        harmful_train=selected_prompts("safety"),
        harmless_train=selected_prompts("control"),
    output:
        record=ensure(causal_stem("{family}", "selection", ".json"), non_empty=True),
        direction=causal_stem("{family}", "direction", ".safetensors"),
        candidates=causal_files("{family}", "candidates"),
    log:
        causal_log("select"),
    benchmark:
        causal_benchmark("select")
    priority: MODEL_JOB_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: config["runtime"]["threads"]
    resources:
        **causal_model_resources(mem_mb=16000, minutes=60),
    params:
        **causal_job_params("select"),
        layers=lambda w: causal_selection_layers(w.family),
    script:
        "../workflow_scripts/causal_select.py"


rule causal_arditi:
    """The selected direction ablated at all layers vs random directions, and added at its layer, on held-out prompts."""
    input:
        **causal_model_inputs(),
        record=causal_stem("{family}", "selection", ".json"),
        direction=causal_stem("{family}", "direction", ".safetensors"),
        harmful=causal_prompt_file("evaluation", "safety"),
        control=causal_prompt_file("evaluation", "control"),
    output:
        table=causal_files("{family}", "arditi"),
        prompts=causal_stem("{family}", "arditi_prompts", ".parquet"),
    log:
        causal_log("arditi"),
    benchmark:
        causal_benchmark("arditi")
    priority: MODEL_JOB_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: config["runtime"]["threads"]
    resources:
        **causal_model_resources(mem_mb=16000, minutes=60),
    params:
        **causal_job_params("arditi"),
    script:
        "../workflow_scripts/causal_arditi.py"


rule causal_abliterate:
    """The abliterated reference: the aligned model with the selected direction orthogonalized out of its weights,
    checked against the hook ablation on harmful selection (validation) prompts in float32. With no refusal to
    ablate the directory holds only a record that no model was made."""
    input:
        **causal_model_inputs(),
        record=causal_stem("{family}", "selection", ".json"),
        direction=causal_stem("{family}", "direction", ".safetensors"),
        prompts=causal_prompt_file("selection", "safety"),
    output:
        directory("resources/abliterated/{family}"),
    log:
        causal_log("abliterate"),
    benchmark:
        causal_benchmark("abliterate")
    priority: MODEL_JOB_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: config["runtime"]["threads"]
    resources:
        **causal_model_resources(mem_mb=40000, minutes=30, weight_copies=2),
    params:
        # loaded, edited and checked in float32 whatever the run's dtype (rankaudit.stages.causal.write_abliterated)
        **causal_job_params("abliterate", with_dtype=False),
    script:
        "../workflow_scripts/causal_abliterate.py"


rule causal_sweep:
    """One family x basis: baseline, cumulative top-k, single u_j and random k-subspace ablations in both bands."""
    input:
        **causal_model_inputs(),
        cells=lambda w: causal_sweep_cell_files(w.family, w.basis),
        record=causal_stem("{family}", "selection", ".json"),
        direction=causal_stem("{family}", "direction", ".safetensors"),
        harmful=causal_prompt_file("evaluation", "safety"),
        control=causal_prompt_file("evaluation", "control"),
    output:
        summary=causal_files("{family}", "sweep_{basis}"),
        prompts=causal_stem("{family}", "sweep_{basis}_prompts", ".parquet"),
        record=causal_stem("{family}", "sweep_{basis}", ".json"),
    log:
        causal_log("sweep_{basis}"),
    benchmark:
        causal_benchmark("sweep_{basis}")
    priority: MODEL_JOB_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: config["runtime"]["threads"]
    resources:
        **causal_model_resources(mem_mb=16000, minutes=120),
    params:
        **causal_job_params("sweep"),
        # {layer: {dataset: {cell key: file}}}: the structure of the `cells` input, which a flat list cannot carry
        cells=lambda w: causal_sweep_cells(w.family, w.basis),
    script:
        "../workflow_scripts/causal_sweep.py"


rule causal_tables:
    input:
        sweeps=[causal_stem(f, f"sweep_{b}", ".parquet") for f in CAUSAL_FAMILIES for b in CAUSAL_BASES],
        prompts=[causal_stem(f, f"sweep_{b}_prompts", ".parquet") for f in CAUSAL_FAMILIES for b in CAUSAL_BASES],
        arditi=[causal_stem(f, "arditi", ".parquet") for f in CAUSAL_FAMILIES],
        selections=[causal_stem(f, "selection", ".json") for f in CAUSAL_FAMILIES],
        directions=[causal_stem(f, "direction", ".safetensors") for f in CAUSAL_FAMILIES],
        layer_directions=[path for f in CAUSAL_FAMILIES for path in causal_layer_directions(f).values()],
    output:
        **{
            name: report(f"results/tables/{name}.md", caption=f"../report/{name}.rst", category="2. Causal tests", subcategory="tables")
            for name in CAUSAL_TABLES
        },
        data=[f"results/tables/{name}.{suffix}" for name in CAUSAL_TABLES for suffix in ("parquet", "csv")],
    log:
        "logs/causal/tables.log",
    conda:
        "../envs/model.yaml"
    params:
        ordering={**CAUSAL.get("ordering", {}), "seed": CAUSAL.get("seed", 0)},
        # {family: [layer]}: the order of the `directions` (by family) and `layer_directions` (by family, layer) inputs
        layers={f: list(causal_layer_directions(f)) for f in CAUSAL_FAMILIES},
        bands=CAUSAL.get("bands", {}),
        version=STAGE_VERSION["causal"],
    script:
        "../workflow_scripts/causal_tables.py"


rule causal_figures:
    input:
        sweeps=lambda w: [causal_stem(w.family, f"sweep_{b}", ".parquet") for b in CAUSAL_BASES],
        candidates=causal_stem("{family}", "candidates", ".parquet"),
    output:
        **{
            name: report(
                f"results/figures/{{family}}/causal_{name}.png",
                caption=f"../report/causal_figure_{name}.rst",
                category="2. Causal tests",
                subcategory="{family}",
            )
            for name in CAUSAL_FIGURES
        },
    log:
        causal_log("figures"),
    conda:
        "../envs/model.yaml"
    params:
        version=STAGE_VERSION["causal"],
    script:
        "../workflow_scripts/causal_figures.py"


rule causal_all:
    """Every causal output: add `causal_outputs()` (or this rule's target) to `rule all`."""
    input:
        causal_outputs(),

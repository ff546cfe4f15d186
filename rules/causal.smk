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
        model=lambda w: model_files(causal_aligned(w.family)),
        prompts_checked=causal_prompt_check("{family}"),
        activations=lambda w: [path for by_kind in causal_selection_activations(w.family).values() for path in by_kind.values()],
        harmful=causal_prompt_file("selection", "safety"),
        harmless=causal_prompt_file("selection", "control"),
        harmful_train=selected_prompts("safety"),
        harmless_train=selected_prompts("control"),
    output:
        record=ensure(causal_stem("{family}", "selection", ".json"), non_empty=True),
        direction=causal_stem("{family}", "direction", ".safetensors"),
        candidates=causal_files("{family}", "candidates"),
    log:
        "logs/causal/{family}/select.log",
    benchmark:
        "benchmarks/causal/{family}/select.tsv"
    priority: MODEL_JOB_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: config["runtime"]["threads"]
    resources:
        **model_resources(lambda w: causal_aligned(w.family), mem_mb=16000, minutes=60),
    params:
        model=lambda w: causal_model(w.family),
        activations=lambda w: causal_selection_activations(w.family),
        causal=causal_job_settings("select"),
        system_prompt=config["capture"]["system_prompt"],
        special_token_text=config["capture"]["special_token_text"],
        version=STAGE_VERSION["causal"],
    script:
        "../workflow_scripts/causal_select.py"


rule causal_arditi:
    """The selected direction ablated at all layers vs random directions, and added at its layer, on held-out prompts."""
    input:
        model=lambda w: model_files(causal_aligned(w.family)),
        prompts_checked=causal_prompt_check("{family}"),
        record=causal_stem("{family}", "selection", ".json"),
        direction=causal_stem("{family}", "direction", ".safetensors"),
        harmful=causal_prompt_file("evaluation", "safety"),
        control=causal_prompt_file("evaluation", "control"),
    output:
        table=causal_files("{family}", "arditi"),
        prompts=causal_stem("{family}", "arditi_prompts", ".parquet"),
    log:
        "logs/causal/{family}/arditi.log",
    benchmark:
        "benchmarks/causal/{family}/arditi.tsv"
    priority: MODEL_JOB_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: config["runtime"]["threads"]
    resources:
        **model_resources(lambda w: causal_aligned(w.family), mem_mb=16000, minutes=60),
    params:
        model=lambda w: causal_model(w.family),
        causal=causal_job_settings("arditi"),
        system_prompt=config["capture"]["system_prompt"],
        special_token_text=config["capture"]["special_token_text"],
        version=STAGE_VERSION["causal"],
    script:
        "../workflow_scripts/causal_arditi.py"


rule causal_abliterate:
    """The abliterated reference: the aligned model with the selected direction orthogonalized out of its weights,
    checked against the hook ablation on harmful selection (validation) prompts in float32. With no refusal to
    ablate the directory holds only a record that no model was made."""
    input:
        model=lambda w: model_files(causal_aligned(w.family)),
        prompts_checked=causal_prompt_check("{family}"),
        record=causal_stem("{family}", "selection", ".json"),
        direction=causal_stem("{family}", "direction", ".safetensors"),
        prompts=causal_prompt_file("selection", "safety"),
    output:
        directory("resources/abliterated/{family}"),
    log:
        "logs/causal/{family}/abliterate.log",
    benchmark:
        "benchmarks/causal/{family}/abliterate.tsv"
    priority: MODEL_JOB_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: config["runtime"]["threads"]
    resources:
        **model_resources(lambda w: causal_aligned(w.family), mem_mb=40000, minutes=30, weight_copies=2),
    params:
        # loaded, edited and checked in float32 whatever the run's dtype (rankaudit.stages.causal.write_abliterated)
        model=lambda w: causal_model(w.family, with_dtype=False),
        causal=causal_job_settings("abliterate"),
        system_prompt=config["capture"]["system_prompt"],
        special_token_text=config["capture"]["special_token_text"],
        version=STAGE_VERSION["causal"],
    script:
        "../workflow_scripts/causal_abliterate.py"


rule causal_sweep:
    """One family x basis: baseline, cumulative top-k, single u_j and random k-subspace ablations in both bands."""
    input:
        model=lambda w: model_files(causal_aligned(w.family)),
        prompts_checked=causal_prompt_check("{family}"),
        cells=lambda w: sorted(
            {p for by_dataset in causal_sweep_cells(w.family, w.basis).values() for by_key in by_dataset.values() for p in by_key.values()}
        ),
        record=causal_stem("{family}", "selection", ".json"),
        direction=causal_stem("{family}", "direction", ".safetensors"),
        harmful=causal_prompt_file("evaluation", "safety"),
        control=causal_prompt_file("evaluation", "control"),
    output:
        summary=causal_files("{family}", "sweep_{basis}"),
        prompts=causal_stem("{family}", "sweep_{basis}_prompts", ".parquet"),
        record=causal_stem("{family}", "sweep_{basis}", ".json"),
    log:
        "logs/causal/{family}/sweep_{basis}.log",
    benchmark:
        "benchmarks/causal/{family}/sweep_{basis}.tsv"
    priority: MODEL_JOB_PRIORITY
    conda:
        "../envs/model.yaml"
    threads: config["runtime"]["threads"]
    resources:
        **model_resources(lambda w: causal_aligned(w.family), mem_mb=16000, minutes=120),
    params:
        model=lambda w: causal_model(w.family),
        cells=lambda w: causal_sweep_cells(w.family, w.basis),
        causal=causal_job_settings("sweep"),
        system_prompt=config["capture"]["system_prompt"],
        special_token_text=config["capture"]["special_token_text"],
        version=STAGE_VERSION["causal"],
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
        selected_directions={f: causal_stem(f, "direction", ".safetensors") for f in CAUSAL_FAMILIES},
        layer_directions={f: causal_layer_directions(f) for f in CAUSAL_FAMILIES},
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
        "logs/causal/{family}/figures.log",
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

# Causal tests (METHODS §4-5): Arditi selection per family, the all-layer ablation of the selected direction on
# held-out prompts, the abliterated reference model, and one ablation sweep per family x basis; then the tables
# and figures. Each model job loads the aligned model once and batches everything (generation with a KV cache).
# Needs rules/capture.smk (activation_file, model_files, model_runtime, model_resources) and STAGE_VERSION["causal"].
# No torch import here: rankaudit.sweeps is numpy/scipy only.

from rankaudit.sweeps import CELLS_PER_BASIS, band_layers

CAUSAL = config.get("causal", {})
CAUSAL_FAMILIES = list(CAUSAL.get("families", []))
CAUSAL_BASES = list(CAUSAL.get("bases", []))
CAUSAL_TABLES = ["causal_selection", "causal_arditi", "causal_k3_narrow", "causal_per_direction", "causal_k_sweep", "causal_ordering",
                 "causal_canonical_cosines", "causal_canonical_cosines_mean", "causal_layer_convention"]
CAUSAL_FIGURES = ["refusal_vs_k", "per_direction", "selection"]
# what the model jobs read: the section without the aggregator's settings and the job lists, so that changing
# the ordering statistics or adding a family never re-runs a GPU job
CAUSAL_JOB = {key: value for key, value in CAUSAL.items() if key not in ("ordering", "families", "bases")}
TABLE_SUFFIXES = ("parquet", "csv", "md")


def causal_stem(family, name):
    return f"results/{family}/causal/{name}"


def causal_files(family, name):
    return [f"{causal_stem(family, name)}.{suffix}" for suffix in TABLE_SUFFIXES]


def causal_aligned(family):
    return config["families"][family]["aligned"]


def causal_model(family):
    """Loading settings of the family's aligned model (attention implementation from the causal section)."""
    return {**model_runtime(causal_aligned(family)), "attn_implementation": CAUSAL.get("attn_implementation")}


def causal_prompt_file(phase, key):
    """The prompt table of one phase (selection or evaluation): its own dataset if configured, else the audit's."""
    dataset = CAUSAL.get(phase, {}).get(f"{key}_dataset") or config["datasets"][key]["dataset"]
    return f"results/prompts/{dataset}.parquet"


def causal_selection_layers(family):
    """Candidate layers: every captured layer below L (layer l = input of block l, as in Arditi's resid_pre)."""
    n_blocks = plan.model_n_layers(config, causal_aligned(family))
    return [layer for layer in plan.family_layers(config, family) if layer < n_blocks]


def causal_selection_activations(family):
    aligned = causal_aligned(family)
    return {layer: {"harmful": activation_file(aligned, "chat", "safety", layer),
                    "harmless": activation_file(aligned, "chat", "control", layer)}
            for layer in causal_selection_layers(family)}


def causal_layer_directions(family):
    """{layer: per-layer direction file of the spectra stage} (u_1 of each variant, difference in means)."""
    return {layer: f"results/{family}/directions/layer_{layer}.safetensors" for layer in plan.family_layers(config, family)}


def causal_band_layers(family):
    n_blocks = plan.model_n_layers(config, causal_aligned(family))
    return sorted({layer for spec in CAUSAL["bands"].values() for layer in band_layers(n_blocks, *spec["range"], spec["count"])})


def causal_sweep_cells(family, basis):
    """cells[layer][dataset][cell key] -> activation file, for the cells M_basis needs at the band layers."""
    entry = config["families"][family]
    roles = {"a_chat": (entry["aligned"], "chat"), "b_chat": (entry["base"], "chat"), "b_raw": (entry["base"], "raw")}
    datasets = {"safety": CELLS_PER_BASIS[basis], **({"control": ("a_chat", "b_chat")} if basis == "did" else {})}
    return {layer: {dataset: {key: activation_file(*roles[key], dataset, layer) for key in keys}
                    for dataset, keys in datasets.items()}
            for layer in causal_band_layers(family)}


def causal_outputs():
    """Every causal table, figure, selection record and abliterated model (the inputs of causal_all)."""
    if not CAUSAL_FAMILIES:
        return []
    files = [f"results/tables/{name}.{suffix}" for name in CAUSAL_TABLES for suffix in TABLE_SUFFIXES]
    for family in CAUSAL_FAMILIES:
        files += [f"results/figures/{family}/causal_{name}.png" for name in CAUSAL_FIGURES]
        files += [f"{causal_stem(family, 'selection')}.json", f"resources/abliterated/{family}"]
    return files


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
        activations=lambda w: [path for by_kind in causal_selection_activations(w.family).values() for path in by_kind.values()],
        harmful=causal_prompt_file("selection", "safety"),
        harmless=causal_prompt_file("selection", "control"),
        harmful_train=selected_prompts("safety"),
        harmless_train=selected_prompts("control"),
    output:
        record=ensure(causal_stem("{family}", "selection") + ".json", non_empty=True),
        direction=causal_stem("{family}", "direction") + ".safetensors",
        candidates=causal_files("{family}", "candidates"),
    params:
        model=lambda w: causal_model(w.family),
        activations=lambda w: causal_selection_activations(w.family),
        causal=CAUSAL_JOB,
        system_prompt=config["capture"]["system_prompt"],
        version=STAGE_VERSION["causal"],
    log:
        "logs/causal/{family}/select.log",
    benchmark:
        "benchmarks/causal/{family}/select.tsv"
    priority: MODEL_JOB_PRIORITY
    threads: config["runtime"]["threads"]
    resources:
        **model_resources(lambda w: causal_aligned(w.family), mem_mb=16000, minutes=60),
    script:
        "../workflow_scripts/causal_select.py"


rule causal_arditi:
    """The selected direction ablated at all layers vs random directions, and added at its layer, on held-out prompts."""
    input:
        model=lambda w: model_files(causal_aligned(w.family)),
        record=causal_stem("{family}", "selection") + ".json",
        direction=causal_stem("{family}", "direction") + ".safetensors",
        harmful=causal_prompt_file("evaluation", "safety"),
        control=causal_prompt_file("evaluation", "control"),
    output:
        table=causal_files("{family}", "arditi"),
        prompts=causal_stem("{family}", "arditi_prompts") + ".parquet",
    params:
        model=lambda w: causal_model(w.family),
        causal=CAUSAL_JOB,
        system_prompt=config["capture"]["system_prompt"],
        version=STAGE_VERSION["causal"],
    log:
        "logs/causal/{family}/arditi.log",
    benchmark:
        "benchmarks/causal/{family}/arditi.tsv"
    priority: MODEL_JOB_PRIORITY
    threads: config["runtime"]["threads"]
    resources:
        **model_resources(lambda w: causal_aligned(w.family), mem_mb=16000, minutes=60),
    script:
        "../workflow_scripts/causal_arditi.py"


rule causal_abliterate:
    """The abliterated reference: the aligned model with the selected direction orthogonalized out of its weights,
    checked against the hook ablation on harmful selection (validation) prompts in float32. With no refusal to
    ablate the directory holds only a record that no model was made."""
    input:
        model=lambda w: model_files(causal_aligned(w.family)),
        record=causal_stem("{family}", "selection") + ".json",
        direction=causal_stem("{family}", "direction") + ".safetensors",
        prompts=causal_prompt_file("selection", "safety"),
    output:
        directory("resources/abliterated/{family}"),
    params:
        model=lambda w: causal_model(w.family),
        causal=CAUSAL_JOB,
        system_prompt=config["capture"]["system_prompt"],
        version=STAGE_VERSION["causal"],
    log:
        "logs/causal/{family}/abliterate.log",
    benchmark:
        "benchmarks/causal/{family}/abliterate.tsv"
    priority: MODEL_JOB_PRIORITY
    threads: config["runtime"]["threads"]
    resources:
        **model_resources(lambda w: causal_aligned(w.family), mem_mb=40000, minutes=30, weight_copies=2),
    script:
        "../workflow_scripts/causal_abliterate.py"


rule causal_sweep:
    """One family x basis: baseline, cumulative top-k, single u_j and random k-subspace ablations in both bands."""
    input:
        model=lambda w: model_files(causal_aligned(w.family)),
        cells=lambda w: sorted({p for by_dataset in causal_sweep_cells(w.family, w.basis).values()
                                for by_key in by_dataset.values() for p in by_key.values()}),
        record=causal_stem("{family}", "selection") + ".json",
        direction=causal_stem("{family}", "direction") + ".safetensors",
        harmful=causal_prompt_file("evaluation", "safety"),
        control=causal_prompt_file("evaluation", "control"),
    output:
        summary=causal_files("{family}", "sweep_{basis}"),
        prompts=causal_stem("{family}", "sweep_{basis}_prompts") + ".parquet",
        record=causal_stem("{family}", "sweep_{basis}") + ".json",
    params:
        model=lambda w: causal_model(w.family),
        cells=lambda w: causal_sweep_cells(w.family, w.basis),
        causal=CAUSAL_JOB,
        system_prompt=config["capture"]["system_prompt"],
        version=STAGE_VERSION["causal"],
    log:
        "logs/causal/{family}/sweep_{basis}.log",
    benchmark:
        "benchmarks/causal/{family}/sweep_{basis}.tsv"
    priority: MODEL_JOB_PRIORITY
    threads: config["runtime"]["threads"]
    resources:
        **model_resources(lambda w: causal_aligned(w.family), mem_mb=16000, minutes=120),
    script:
        "../workflow_scripts/causal_sweep.py"


rule causal_tables:
    input:
        sweeps=[f"{causal_stem(f, 'sweep_' + b)}.parquet" for f in CAUSAL_FAMILIES for b in CAUSAL_BASES],
        prompts=[f"{causal_stem(f, 'sweep_' + b + '_prompts')}.parquet" for f in CAUSAL_FAMILIES for b in CAUSAL_BASES],
        arditi=[f"{causal_stem(f, 'arditi')}.parquet" for f in CAUSAL_FAMILIES],
        selections=[f"{causal_stem(f, 'selection')}.json" for f in CAUSAL_FAMILIES],
        directions=[f"{causal_stem(f, 'direction')}.safetensors" for f in CAUSAL_FAMILIES],
        layer_directions=[path for f in CAUSAL_FAMILIES for path in causal_layer_directions(f).values()],
    output:
        **{name: report(f"results/tables/{name}.md", caption=f"../report/{name}.rst", category="3. Causal tests", subcategory="tables")
           for name in CAUSAL_TABLES},
        data=[f"results/tables/{name}.{suffix}" for name in CAUSAL_TABLES for suffix in ("parquet", "csv")],
    params:
        ordering={**CAUSAL.get("ordering", {}), "seed": CAUSAL.get("seed", 0)},
        selected_directions={f: f"{causal_stem(f, 'direction')}.safetensors" for f in CAUSAL_FAMILIES},
        layer_directions={f: causal_layer_directions(f) for f in CAUSAL_FAMILIES},
        bands=CAUSAL.get("bands", {}),
        version=STAGE_VERSION["causal"],
    log:
        "logs/causal/tables.log",
    script:
        "../workflow_scripts/causal_tables.py"


rule causal_figures:
    input:
        sweeps=lambda w: [f"{causal_stem(w.family, 'sweep_' + b)}.parquet" for b in CAUSAL_BASES],
        candidates=causal_stem("{family}", "candidates") + ".parquet",
    output:
        **{name: report(f"results/figures/{{family}}/causal_{name}.png", caption=f"../report/causal_figure_{name}.rst",
                        category="3. Causal tests", subcategory="{family}") for name in CAUSAL_FIGURES},
    params:
        version=STAGE_VERSION["causal"],
    log:
        "logs/causal/{family}/figures.log",
    script:
        "../workflow_scripts/causal_figures.py"


rule causal_all:
    """Every causal output: add `causal_outputs()` (or this rule's target) to `rule all`."""
    input:
        causal_outputs(),

# Helper functions of rules/causal.smk (Snakemake's lint keeps functions out of rule files); included
# by rules/common.smk before any rule file. They read config and the rule files' constants when called.

from rankaudit.sweeps import CELLS_PER_BASIS, band_layers


def causal_stem(family, name, suffix=""):
    """results/{family}/causal/{name}, plus `suffix` (a file extension) when given."""
    return f"results/{family}/causal/{name}{suffix}"


def causal_files(family, name):
    return [f"{causal_stem(family, name)}.{suffix}" for suffix in TABLE_SUFFIXES]


def causal_aligned(family):
    return config["families"][family]["aligned"]


def causal_model(family, with_dtype=True):
    """Loading settings of the family's aligned model (attention implementation from the causal section); without
    the dtype for a job that loads in float32 whatever the run's, and without n_layers, which no causal job reads."""
    spec = {**model_runtime(causal_aligned(family)), "attn_implementation": CAUSAL.get("attn_implementation")}
    return {key: value for key, value in spec.items() if key != "n_layers" and (with_dtype or key != "dtype")}


def causal_model_inputs():
    """The inputs every causal model job shares: the family's aligned model (manifest and files) and the prompt
    check of the family's causal jobs. Use as `input: **causal_model_inputs(), ...`."""
    return {"model": lambda w: model_files(causal_aligned(w.family)), "prompts_checked": causal_prompt_check("{family}")}


def causal_model_resources(*, mem_mb, minutes, weight_copies=1):
    """`resources:` of a causal model job, sized for the family's aligned model (model_resources)."""
    return model_resources(lambda w: causal_aligned(w.family), mem_mb=mem_mb, minutes=minutes, weight_copies=weight_copies)


def causal_job_params(job, with_dtype=True):
    """The params every causal model job shares: loading settings, its slice of the causal section, the chat
    rendering settings and the stage version. Use as `params: **causal_job_params(job), ...`."""
    return {
        "model": lambda w: causal_model(w.family, with_dtype=with_dtype),
        "causal": causal_job_settings(job),
        "system_prompt": config["capture"]["system_prompt"],
        "special_token_text": config["capture"]["special_token_text"],
        "version": STAGE_VERSION["causal"],
    }


def causal_log(job):
    """The log of one causal job of the "{family}" wildcard (`job` may hold further wildcards)."""
    return f"logs/causal/{{family}}/{job}.log"


def causal_benchmark(job):
    return f"benchmarks/causal/{{family}}/{job}.tsv"


# What each causal job reads of the causal section (rankaudit.stages.causal), so a changed key re-runs only its
# readers: the k grid and the bands re-run the sweeps, never the selection, all-layer test or abliteration. A
# phase's `*_dataset` keys are left out, their tables being the jobs' inputs; the rest of `selection` only matters
# to causal_select (causal_abliterate checks on the first selection prompts: split, n).
CAUSAL_JOB_READS = {
    "select": ("seed", "batch_size", "judge", "generation", "refusal_openers", "min_refusal_token_coverage", "min_baseline_refusal", "selection"),
    "arditi": ("seed", "batch_size", "row_batch_size", "judge", "generation", "evaluation", "random_draws"),
    "abliterate": ("seed", "selection", "abliteration_tolerance"),
    "sweep": (
        "seed",
        "batch_size",
        "row_batch_size",
        "judge",
        "generation",
        "evaluation",
        "bands",
        "read_position",
        "k_grid",
        "n_single",
        "random_draws",
    ),
}
CAUSAL_PHASE_READS = {
    "abliterate": {"selection": ("split", "n")},
    "arditi": {"evaluation": ("split", "n", "control_generation")},
}


def causal_job_settings(job):
    """The `causal` param of one causal job: the keys CAUSAL_JOB_READS names, phases without their datasets."""
    settings = {}
    for key in (key for key in CAUSAL_JOB_READS[job] if key in CAUSAL):  # a config without the section has no jobs
        value = CAUSAL[key]
        if key in ("selection", "evaluation"):
            kept = CAUSAL_PHASE_READS.get(job, {}).get(key)
            value = {name: v for name, v in value.items() if not name.endswith("_dataset") and (kept is None or name in kept)}
        settings[key] = value
    return settings


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
    return {
        layer: {"harmful": activation_file(aligned, "chat", "safety", layer), "harmless": activation_file(aligned, "chat", "control", layer)}
        for layer in causal_selection_layers(family)
    }


def causal_selection_activation_files(family, kind):
    """The `kind` (harmful or harmless) activation file of each candidate layer, in causal_selection_layers order."""
    return [by_kind[kind] for by_kind in causal_selection_activations(family).values()]


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
    return {
        layer: {dataset: {key: activation_file(*roles[key], dataset, layer) for key in keys} for dataset, keys in datasets.items()}
        for layer in causal_band_layers(family)
    }


def causal_sweep_cell_files(family, basis):
    """Every activation file of causal_sweep_cells, once each (the input of a sweep job)."""
    cells = causal_sweep_cells(family, basis)
    return sorted({path for by_dataset in cells.values() for by_key in by_dataset.values() for path in by_key.values()})


def causal_outputs():
    """Every causal table, figure, selection record and abliterated model (the inputs of causal_all)."""
    if not CAUSAL_FAMILIES:
        return []
    files = [f"results/tables/{name}.{suffix}" for name in CAUSAL_TABLES for suffix in TABLE_SUFFIXES]
    for family in CAUSAL_FAMILIES:
        files += [f"results/figures/{family}/causal_{name}.png" for name in CAUSAL_FIGURES]
        files += [causal_stem(family, "selection", ".json"), f"resources/abliterated/{family}"]
    return files

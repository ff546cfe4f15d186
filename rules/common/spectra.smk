# Helper functions of rules/spectra.smk (Snakemake's lint keeps functions out of rule files); included
# by rules/common.smk before any rule file. They read config and the rule files' constants when called.


def spectrum_file(family, variant, dataset, layer):
    return f"results/{family}/spectra/{variant}/{dataset}/layer_{layer}.json"


def layer_cells(family, layer):
    """Activation files of one family's layer: cells[dataset][cell key] (cell keys a_chat, a_raw, b_chat, b_raw)."""
    entry = config["families"][family]
    return {
        dataset: {key: activation_file(entry[role], fmt, dataset, layer) for key, (role, fmt) in CELL_ROLES.items()} for dataset in plan.SAMPLE_KEYS
    }


def layer_outputs(family, layer):
    return {
        dataset: {variant: spectrum_file(family, variant, dataset, layer) for variant in variants}
        for dataset, variants in plan.VARIANTS_PER_DATASET.items()
    }


def family_spectrum_files(family):
    return [
        path for layer in plan.family_layers(config, family) for by_variant in layer_outputs(family, layer).values() for path in by_variant.values()
    ]


def audit_params():
    return {key: config["audit"][key] for key in ("read_position", "eps", "capture_k", "noise_draws", "seed")}

# Per family x layer analysis (numpy only): the modification matrices of METHODS §2, their spectra (§3) and the
# Arditi-direction numbers (§4). One job per layer reads that layer's eight cells once and writes one JSON per
# (variant, dataset): results/{family}/spectra/{variant}/{dataset}/layer_{layer}.json.

CELL_ROLES = {"a_chat": ("aligned", "chat"), "a_raw": ("aligned", "raw"), "b_chat": ("base", "chat"), "b_raw": ("base", "raw")}


def spectrum_file(family, variant, dataset, layer):
    return f"results/{family}/spectra/{variant}/{dataset}/layer_{layer}.json"


def layer_cells(family, layer):
    """Activation files of one family's layer: cells[dataset][cell key] (cell keys a_chat, a_raw, b_chat, b_raw)."""
    entry = config["families"][family]
    return {
        dataset: {key: activation_file(entry[role], fmt, dataset, layer) for key, (role, fmt) in CELL_ROLES.items()}
        for dataset in plan.SAMPLE_KEYS
    }


def layer_outputs(family, layer):
    return {
        dataset: {variant: spectrum_file(family, variant, dataset, layer) for variant in variants}
        for dataset, variants in plan.VARIANTS_PER_DATASET.items()
    }


def family_spectrum_files(family):
    return [
        path
        for layer in plan.family_layers(config, family)
        for by_variant in layer_outputs(family, layer).values()
        for path in by_variant.values()
    ]


def audit_params():
    return {key: config["audit"][key] for key in ("read_position", "eps", "capture_k", "noise_draws", "seed")}


rule layer_spectra:
    input:
        lambda w: [path for by_key in layer_cells(w.family, int(w.layer)).values() for path in by_key.values()],
    output:
        [spectrum_file("{family}", variant, dataset, "{layer}") for dataset, variants in plan.VARIANTS_PER_DATASET.items() for variant in variants],
        directions="results/{family}/directions/layer_{layer}.safetensors",
    params:
        cells=lambda w: layer_cells(w.family, int(w.layer)),
        outputs=lambda w: layer_outputs(w.family, int(w.layer)),
        audit=audit_params(),
        version=STAGE_VERSION["spectra"],
    log:
        "logs/spectra/{family}/layer_{layer}.log",
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    script:
        "../workflow_scripts/layer_spectra.py"

# Per family x layer analysis (numpy only): the modification matrices of METHODS §2, their spectra (§3) and the
# Arditi-direction numbers (§4). One job per layer reads that layer's eight cells once and writes one JSON per
# (variant, dataset): results/{family}/spectra/{variant}/{dataset}/layer_{layer}.json.

CELL_ROLES = {"a_chat": ("aligned", "chat"), "a_raw": ("aligned", "raw"), "b_chat": ("base", "chat"), "b_raw": ("base", "raw")}


rule layer_spectra:
    input:
        lambda w: [path for by_key in layer_cells(w.family, int(w.layer)).values() for path in by_key.values()],
    output:
        [spectrum_file("{family}", variant, dataset, "{layer}") for dataset, variants in plan.VARIANTS_PER_DATASET.items() for variant in variants],
        directions="results/{family}/directions/layer_{layer}.safetensors",
    log:
        "logs/spectra/{family}/layer_{layer}.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    params:
        cells=lambda w: layer_cells(w.family, int(w.layer)),
        outputs=lambda w: layer_outputs(w.family, int(w.layer)),
        audit=audit_params(),
        version=STAGE_VERSION["spectra"],
    script:
        "../workflow_scripts/layer_spectra.py"

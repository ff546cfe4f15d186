# Aggregators: the diagnosis tables (all families) and the per-family figures, with report captions.

AUDIT_TABLES = ["rho_per_family", "rho_per_layer", "centered_vs_uncentered", "variants", "arditi_cosines"]


localrules:
    audit_tables,
    family_figures,


rule audit_tables:
    input:
        spectra=[path for family in config["families"] for path in family_spectrum_files(family)],
        floor=precision_floor_parquets(),
    output:
        **audit_table_outputs(),
        data=[f"results/tables/{name}.{ext}" for name in AUDIT_TABLES for ext in ("parquet", "csv")],
    log:
        "logs/tables/audit_tables.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    params:
        noise_draws=config["audit"]["noise_draws"],
        seed=config["audit"]["seed"],
        version=STAGE_VERSION["tables"],
    script:
        "../workflow_scripts/audit_tables.py"


rule family_figures:
    input:
        template=lambda w: [spectrum_file(w.family, "template", "safety", layer) for layer in plan.family_layers(config, w.family)],
        all=lambda w: family_spectrum_files(w.family),
    output:
        cumulative=report(
            "results/figures/{family}/cumulative_variance.png",
            caption="../report/cumulative_variance.rst",
            category="1. Diagnosis",
            subcategory="{family}",
        ),
        rho=report("results/figures/{family}/rho_by_layer.png", caption="../report/rho_by_layer.rst", category="1. Diagnosis", subcategory="{family}"),
    log:
        "logs/figures/{family}.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 1000 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    params:
        version=STAGE_VERSION["tables"],
    script:
        "../workflow_scripts/family_figures.py"

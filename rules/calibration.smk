# Constructive calibration on a 3-hidden-layer MLP (METHODS 6-7), CPU only and independent of the LLM stages.
# One job per (seed): the base network; one job per (setting, seed): train or construct that variant and measure
# it; one job per seed: kappa for the honest x unsafe pairings; local aggregators: tables, figures.
#   results/calibration/seed{seed}/base/{model.safetensors,measurements.json}
#   results/calibration/seed{seed}/{setting}/{model.safetensors,measurements.json}   (setting: fullft, dist5, ...)
#   results/calibration/seed{seed}/steering/{vectors.safetensors,measurements.json}
#   results/calibration/seed{seed}/kappa.json
#   results/tables/calibration_*.{parquet,csv,md}, results/figures/calibration_*.png

from rankaudit.calibration import grid as calibration_grid

# `rule all` runs the grid when the calibration stage is chosen (rules/common.smk, `stages`); `calibration_all`
# runs it on request either way, an absent section at every METHODS 6 default.
CALIBRATION = config["calibration"]
CALIBRATION_CELL = calibration_grid.cell_slice(CALIBRATION)
CALIBRATION_TABLES = ["cells", "layers", "ablation", "lambda_sweep", "variants", "r_grid", "kappa", "kappa_layers"]
CALIBRATION_REPORTED = ["lambda_sweep", "variants", "r_grid", "kappa"]
CALIBRATION_FIGURES = ["compliance_vs_r", "rho_vs_lambda"]


localrules:
    calibration_tables,
    calibration_figures,
    calibration_all,


rule calibration_base:
    output:
        model=calibration_model("{seed}", "base"),
        measurements=calibration_path("{seed}", "base", "measurements.json"),
    log:
        "logs/calibration/seed{seed}/base.log",
    benchmark:
        "benchmarks/calibration/seed{seed}/base.tsv"
    wildcard_constraints:
        seed=r"\d+",
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 1500 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    params:
        cell=CALIBRATION_CELL,
        version=STAGE_VERSION["calibration"],
    script:
        "../workflow_scripts/calibration_base.py"


rule calibration_finetune:
    input:
        base=calibration_model("{seed}", "base"),
        aligned=calibration_aligned_start,
    output:
        model=calibration_model("{seed}", "{setting}"),
        measurements=calibration_path("{seed}", "{setting}", "measurements.json"),
    log:
        "logs/calibration/seed{seed}/{setting}.log",
    benchmark:
        "benchmarks/calibration/seed{seed}/{setting}.tsv"
    wildcard_constraints:
        seed=r"\d+",
        setting=calibration_grid.TRAINED_SETTING_PATTERN,
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 20 * attempt,
    params:
        cell=CALIBRATION_CELL,
        version=STAGE_VERSION["calibration"],
    script:
        "../workflow_scripts/calibration_finetune.py"


rule calibration_steering:
    input:
        base=calibration_model("{seed}", "base"),
        fullft=calibration_model("{seed}", "fullft"),
    output:
        vectors=calibration_path("{seed}", "steering", "vectors.safetensors"),
        measurements=calibration_path("{seed}", "steering", "measurements.json"),
    log:
        "logs/calibration/seed{seed}/steering.log",
    wildcard_constraints:
        seed=r"\d+",
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 1500 * attempt,
        runtime=lambda wildcards, attempt: 5 * attempt,
    params:
        cell=CALIBRATION_CELL,
        version=STAGE_VERSION["calibration"],
    script:
        "../workflow_scripts/calibration_steering.py"


rule calibration_kappa:
    input:
        base=calibration_model("{seed}", "base"),
        models=lambda wildcards: list(calibration_kappa_models(wildcards).values()),
    output:
        "results/calibration/seed{seed}/kappa.json",
    log:
        "logs/calibration/seed{seed}/kappa.log",
    wildcard_constraints:
        seed=r"\d+",
    conda:
        "../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 1500 * attempt,
        runtime=lambda wildcards, attempt: 5 * attempt,
    params:
        cell=CALIBRATION_CELL,
        pairs=calibration_grid.kappa_pairs(CALIBRATION),
        models=lambda wildcards: calibration_kappa_models(wildcards),
        version=STAGE_VERSION["calibration"],
    script:
        "../workflow_scripts/calibration_kappa.py"


rule calibration_tables:
    input:
        cells=calibration_measurements(),
        bases=[calibration_path(seed, "base", "measurements.json") for seed in CALIBRATION["seeds"]],
        kappas=[f"results/calibration/seed{seed}/kappa.json" for seed in CALIBRATION["seeds"]],
    output:
        **{
            name: report(
                f"results/tables/calibration_{name}.md", caption=f"../report/calibration_{name}.rst", category="4. Calibration", subcategory="tables"
            )
            for name in CALIBRATION_REPORTED
        },
        data=[path for path in calibration_table_files() if not any(path == f"results/tables/calibration_{name}.md" for name in CALIBRATION_REPORTED)],
    log:
        "logs/calibration/tables.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        tables=CALIBRATION["tables"],
        threshold=CALIBRATION["kappa"]["threshold"],
        version=STAGE_VERSION["calibration"],
    script:
        "../workflow_scripts/calibration_tables.py"


rule calibration_figures:
    input:
        r_grid="results/tables/calibration_r_grid.parquet",
        lambda_sweep="results/tables/calibration_lambda_sweep.parquet",
        layers="results/tables/calibration_layers.parquet",
    output:
        compliance_vs_r=report(
            "results/figures/calibration_compliance_vs_r.png",
            caption="../report/calibration_compliance_vs_r.rst",
            category="4. Calibration",
            subcategory="figures",
        ),
        rho_vs_lambda=report(
            "results/figures/calibration_rho_vs_lambda.png",
            caption="../report/calibration_rho_vs_lambda.rst",
            category="4. Calibration",
            subcategory="figures",
        ),
    log:
        "logs/calibration/figures.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        settings=[calibration_grid.STEERING, *calibration_grid.honest_settings(CALIBRATION)],
        report_r=CALIBRATION["tables"]["report_r"],
        version=STAGE_VERSION["calibration"],
    script:
        "../workflow_scripts/calibration_figures.py"


rule calibration_all:
    input:
        calibration_table_files(),
        calibration_figure_files(),

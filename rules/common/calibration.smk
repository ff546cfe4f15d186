# Helper functions of rules/calibration.smk (Snakemake's lint keeps functions out of rule files); included
# by rules/common.smk before any rule file. They read config and the rule files' constants when called.

from rankaudit.calibration import grid as calibration_grid


def calibration_path(seed, setting, name):
    return f"results/calibration/seed{seed}/{setting}/{name}"


def calibration_model(seed, setting):
    return calibration_path(seed, setting, "model.safetensors")


def calibration_measurements():
    return [
        calibration_path(seed, setting, "measurements.json")
        for seed in CALIBRATION["seeds"]
        for setting in calibration_grid.all_settings(CALIBRATION)
    ]


def calibration_aligned_start(wildcards):
    """Unsafe variants start from FullFT when training.unsafe_init is 'aligned'."""
    unsafe = calibration_grid.parse_setting(wildcards.setting).kind == "unsafe"
    if unsafe and CALIBRATION["training"]["unsafe_init"] == "aligned":
        return [calibration_model(wildcards.seed, calibration_grid.setting_name("honest", 0))]
    return []


def calibration_kappa_models(wildcards):
    members = sorted({name for pair in calibration_grid.kappa_pairs(CALIBRATION) for name in pair})
    return {name: calibration_model(wildcards.seed, name) for name in members}


def calibration_table_files():
    return [f"results/tables/calibration_{name}.{ext}" for name in CALIBRATION_TABLES for ext in ("parquet", "csv", "md")]


def calibration_figure_files():
    return [f"results/figures/calibration_{name}.png" for name in CALIBRATION_FIGURES]

# Helper functions of rules/headline.smk (Snakemake's lint keeps functions out of rule files); included
# by rules/common.smk before any rule file. They read config and the rule files' constants when called.


def headline_inputs():
    """Table name -> its parquet file, for the stages that run; `figures` -> the paper's figures."""
    names = ["rho_per_family", "centered_vs_uncentered", "arditi_cosines"]
    names += ["limits_lrh_baseline", "limits_kappa_per_reference"] if stage_chosen("limits") else []
    names += ["causal_k3_narrow"] if stage_chosen("causal") else []
    names += ["calibration_lambda_sweep", "calibration_kappa"] if stage_chosen("calibration") else []
    return {**{name: f"results/tables/{name}.parquet" for name in names}, "figures": PAPER_FIGURES}


def headline_families():
    """family -> the sources of its base and aligned models (the paper's Hub ids, or organism:..., or a path)."""
    return {family: {role: config["models"][entry[role]]["source"] for role in ("base", "aligned")} for family, entry in config["families"].items()}

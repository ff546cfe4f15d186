# The headline table (issue 14, item 6): per family, the run's key figures beside the paper's published ones
# (reference/paper_figures.yaml, each with its source). It reads only finished tables, and only those of the stages
# this config runs: the diagnosis tables always, limits always (its section has defaults), causal when
# causal.families is not empty, calibration when the config has the section (CALIBRATION_REQUESTED). Include it
# after rules/tables.smk, limits.smk, causal.smk and calibration.smk.

import os

# an absolute path into the repository: the working directory (--directory) may be elsewhere
PAPER_FIGURES = os.path.join(workflow.basedir, "reference", "paper_figures.yaml")


def headline_inputs():
    """Table name -> its parquet file, for the stages that run; `figures` -> the paper's figures."""
    names = ["rho_per_family", "centered_vs_uncentered", "arditi_cosines", "limits_lrh_baseline", "limits_kappa_per_reference"]
    names += ["causal_k3_narrow"] if CAUSAL_FAMILIES else []
    names += ["calibration_lambda_sweep", "calibration_kappa"] if CALIBRATION_REQUESTED else []
    return {**{name: f"results/tables/{name}.parquet" for name in names}, "figures": PAPER_FIGURES}


def headline_families():
    """family -> the sources of its base and aligned models (the paper's Hub ids, or organism:..., or a path)."""
    return {family: {role: config["models"][entry[role]]["source"] for role in ("base", "aligned")}
            for family, entry in config["families"].items()}


localrules:
    headline_table,


rule headline_table:
    input:
        **headline_inputs(),
    output:
        table=report("results/tables/headline.md", caption="../report/headline.rst", category="0. Headline"),
        data=["results/tables/headline.parquet", "results/tables/headline.csv"],
    params:
        families=headline_families(),
        audit_eps=config["audit"]["eps"][0],
        causal_families=CAUSAL_FAMILIES,
        report_r=CALIBRATION["tables"]["report_r"] if CALIBRATION_REQUESTED else [],
        kappa_threshold=CALIBRATION["kappa"]["threshold"] if CALIBRATION_REQUESTED else None,
        version=STAGE_VERSION["tables"],
    log:
        "logs/tables/headline.log",
    script:
        "../workflow_scripts/headline_table.py"

# The headline table (issue 14, item 6): per family, the run's key figures beside the paper's published ones
# (reference/paper_figures.yaml, each with its source). It reads only finished tables, and only those of the stages
# this config runs (`stages`, rules/common.smk): the diagnosis tables always, limits, causal and calibration tables
# when those stages are chosen. Include it after rules/tables.smk, limits.smk, causal.smk and calibration.smk.

import os

# an absolute path into the repository: the working directory (--directory) may be elsewhere
PAPER_FIGURES = os.path.join(workflow.basedir, "reference", "paper_figures.yaml")


localrules:
    headline_table,


rule headline_table:
    input:
        **headline_inputs(),
    output:
        # the HTML table is a report item and what the report opens on (report/workflow.rst includes it)
        table=report("results/tables/headline.html", caption="../report/headline.rst", category="0. Headline"),
        data=["results/tables/headline.parquet", "results/tables/headline.csv", "results/tables/headline.md"],
    log:
        "logs/tables/headline.log",
    conda:
        "../envs/analysis.yaml"
    params:
        families=headline_families(),
        audit_eps=config["audit"]["eps"][0],
        causal_families=CAUSAL_FAMILIES if stage_chosen("causal") else [],
        report_r=CALIBRATION["tables"]["report_r"] if stage_chosen("calibration") else [],
        kappa_threshold=CALIBRATION["kappa"]["threshold"] if stage_chosen("calibration") else None,
        version=STAGE_VERSION["tables"],
    script:
        "../workflow_scripts/headline_table.py"

# Limits of the rank diagnostics (METHODS 3 and 7, issue 6). Needs rules/common.smk and rules/capture.smk.
# One numpy job per family x layer reads that layer's cells once (A/B chat on D_s, every unsafe reference's chat
# cell, and A/B x raw/chat on every concept set) and writes results/{family}/limits/layer_{layer}.json: the LRH
# baseline, rank distributions under subsampling without replacement with the corrected rank interval, split-half
# angles, singular-value gaps, the eps and n sweeps beside pure noise, and the spectral gap per reference (a violated
# structural bound fails the job), each record tagged with its layer_status. Local aggregators write the tables
# (layer 0 and zero or rank <= 1 layers kept per layer, left out of every aggregate), the generated limits section
# and one figure per family.
# `limits_all` collects everything, for `rule all`.

LIMITS_TABLES = [
    "limits_lrh_baseline",
    "limits_lrh_per_layer",
    "limits_rank_resampling",
    "limits_eps_sensitivity",
    "limits_n_sweep",
    "limits_split_half",
    "limits_sv_gaps",
    "limits_kappa_pairs",
    "limits_kappa_per_reference",
]
LIMITS_REPORTED = ["limits_lrh_baseline", "limits_rank_resampling", "limits_eps_sensitivity", "limits_n_sweep", "limits_kappa_per_reference"]


localrules:
    limits_tables,
    limits_figure,
    limits_all,


rule limits_layer:
    input:
        lambda w: limits_inputs(w.family, int(w.layer)),
    output:
        limits_layer_file("{family}", "{layer}"),
    log:
        "logs/limits/{family}/layer_{layer}.log",
    benchmark:
        "benchmarks/limits/{family}/layer_{layer}.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    params:
        cells=lambda w: limits_cells(w.family, int(w.layer)),
        models=lambda w: {role: config["families"][w.family][role] for role in ("base", "aligned")},
        concept_prompts={concept: selected_prompts(concept) for concept in config["datasets"].get("concepts", [])},
        read_position=config["audit"]["read_position"],
        limits=limits_settings(),
        version=STAGE_VERSION["limits"],
    script:
        "../workflow_scripts/limits_layer.py"


rule limits_tables:
    input:
        layers=[path for family in config["families"] for path in limits_family_files(family)],
        floor=precision_floor_parquets(),
    output:
        **limits_table_outputs(),
        section=report("results/tables/limits_section.md", caption="../report/limits_section.rst", category="3. Limits"),
        data=[f"results/tables/{name}.{ext}" for name in LIMITS_TABLES for ext in ("parquet", "csv")],
    log:
        "logs/limits/tables.log",
    conda:
        "../envs/analysis.yaml"
    params:
        headline_eps=config["limits"]["headline_eps"],
        claims=config["limits"]["claims"],
        version=STAGE_VERSION["limits"],
    script:
        "../workflow_scripts/limits_tables.py"


rule limits_figure:
    input:
        lambda w: limits_family_files(w.family),
    output:
        report("results/figures/{family}/limits.png", caption="../report/limits_figure.rst", category="3. Limits", subcategory="{family}"),
    log:
        "logs/limits/figure_{family}.log",
    conda:
        "../envs/analysis.yaml"
    params:
        headline_eps=config["limits"]["headline_eps"],
        version=STAGE_VERSION["limits"],
    script:
        "../workflow_scripts/limits_figure.py"


rule limits_all:
    input:
        rules.limits_tables.output,
        [f"results/figures/{family}/limits.png" for family in config["families"]],

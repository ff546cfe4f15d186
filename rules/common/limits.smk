# Helper functions of rules/limits.smk (Snakemake's lint keeps functions out of rule files); included
# by rules/common.smk before any rule file. They read config and the rule files' constants when called.


def limits_layer_file(family, layer):
    return f"results/{family}/limits/layer_{layer}.json"


def limits_family_files(family):
    return [limits_layer_file(family, layer) for layer in plan.family_layers(config, family)]


def limits_cells(family, layer):
    """The activation files one limits job reads (see rankaudit.stages.limits.analyse_limits_layer)."""
    entry = config["families"][family]
    return {
        "safety": {role: activation_file(entry[role], "chat", "safety", layer) for role in ("aligned", "base")},
        "references": {ref: activation_file(ref, "chat", "safety", layer) for ref in entry.get("references", [])},
        "concepts": {
            concept: {role: {fmt: activation_file(entry[role], fmt, concept, layer) for fmt in plan.FORMATS} for role in ("base", "aligned")}
            for concept in config["datasets"].get("concepts", [])
        },
    }


def limits_inputs(family, layer):
    cells = limits_cells(family, layer)
    return [
        *cells["safety"].values(),
        *cells["references"].values(),
        *(path for by_role in cells["concepts"].values() for by_fmt in by_role.values() for path in by_fmt.values()),
        *(selected_prompts(concept) for concept in cells["concepts"]),
    ]


def limits_settings():
    """What a per-layer limits job reads: the section without the claim thresholds and the headline eps (those only
    affect the tables, the generated section and the figure)."""
    return {key: value for key, value in config["limits"].items() if key not in ("claims", "headline_eps")}


def limits_table_outputs():
    reported = {
        name: report(f"results/tables/{name}.md", caption=f"../report/{name}.rst", category="3. Limits", subcategory="tables")
        for name in LIMITS_REPORTED
    }
    plain = {name: f"results/tables/{name}.md" for name in LIMITS_TABLES if name not in LIMITS_REPORTED}
    return {**reported, **plain}

# Helper functions of rules/tables.smk (Snakemake's lint keeps functions out of rule files); included
# by rules/common.smk before any rule file. They read config and the rule files' constants when called.


def audit_table_outputs():
    return {
        name: report(f"results/tables/{name}.md", caption=f"../report/{name}.rst", category="1. Diagnosis", subcategory="tables")
        for name in AUDIT_TABLES
    }

# Helper functions of rules/organisms.smk (Snakemake's lint keeps functions out of rule files); included
# by rules/common.smk before any rule file. They read config and the rule files' constants when called.

from rankaudit.organisms.settings import role_settings


def _organism_family_regex(families):
    return "|".join(families) if families else "(?!)"


def _organism_settings(role):
    """The config slice one role's weights depend on (see rankaudit.organisms.settings)."""
    return lambda wildcards: role_settings(config["organisms"], wildcards.family, role)


def organism_files():
    """Every organism directory the config asks for, plus the refusal table (for `rule all`)."""
    if not ORGANISM_FAMILIES:
        return []
    dirs = [f"resources/organisms/{family}/{role}" for family in ORGANISM_FAMILIES for role in ORGANISM_CHECKED_ROLES]
    dirs += [f"resources/organisms/{family}/planted" for family in PLANTED_FAMILIES]
    return dirs + [f"results/tables/organism_refusal.{suffix}" for suffix in ("csv", "md", "parquet")]

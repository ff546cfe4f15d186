# Config helpers shared by every stage: validation, wildcard constraints, stage versions.
# Nothing here imports torch or touches files beyond reading the config schemas.

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from rankaudit import config_checks, plan
from rankaudit.config_schema import CONFIG_SECTIONS

# Bump a stage's version when a change to its package code (src/rankaudit/...) changes what it computes. Snakemake
# does not see package code; the version is a `params:` entry of the stage's rules, so with the `params` rerun
# trigger (on in profiles/*) the next run re-runs exactly that stage and everything downstream of it, and
# `snakemake -n` shows the reason "Params have changed since last execution". Pure refactors keep the number, so
# finished 7B-model captures are never redone by accident (mtimes of package files play no part). Stages:
# prompts (generated/fetched sets), capture (select_prompts + capture_<model>), spectra (layer_spectra),
# tables (audit_tables + family_figures); the others are named after their rule files. README, "Incremental reruns".
STAGE_VERSION = {
    "prompts": 1,
    "organisms": 1,
    "capture": 1,
    "spectra": 2,
    "tables": 2,
    "calibration": 2,
    "causal": 4,
    "limits": 2,
    "checkpoints": 1,
    "precision": 1,
}

# Jobs on the demo's longest chain (organisms -> captures -> causal -> abliterated captures -> analysis) go first;
# the model-independent MLP calibration cells (default priority 0) fill the cores they leave idle. Without this the
# scheduler ran the 30 calibration cells before (or between) them and the chain waited minutes. It only helps when
# a chain job fits beside a calibration cell: the demo sets runtime.threads to 1.
MODEL_JOB_PRIORITY = 1

# Sections whose every key has a default: an absent section is validated as {} and so filled with the defaults.
SECTIONS_WITH_DEFAULTS = ["limits", "calibration"]
# The stages `rule all` can run (config key `stages`). audit = prompts, organisms, checkpoints, capture, spectra,
# precision floor, the diagnosis tables and figures and the headline table; the others add their rule file's
# `<stage>_all` target. A stage's inputs from another stage are still built (limits needs the captures).
STAGES_KNOWN = ("audit", "causal", "limits", "calibration")


def _config_files():
    return [str(f) for f in workflow.configfiles] or ["config/config.yaml"]


def _config_origin():
    return ", ".join(_config_files())


def _validation_error(section, error):
    """Turn Snakemake's schema error into one line naming the file(s) and the dotted key at fault."""
    cause = error.__context__  # snakemake.utils.validate raises while handling jsonschema's ValidationError
    if not hasattr(cause, "absolute_path"):
        return f"{_config_origin()}: invalid config: {error}"
    where = ".".join([*([section] if section else []), *(str(p) for p in cause.absolute_path)]) or "top level"
    return f"{_config_origin()}: invalid config key '{where}': {cause.message}"


def _validate_section(data, schema, section):
    try:
        validate(data, f"../config/schema/{schema}.schema.yaml")
    except WorkflowError as error:
        raise WorkflowError(_validation_error(section, error))


def validate_config():
    """Every section against its schema, filling defaults (a refusal-tuned derivation against its own)."""
    _validate_section(config, "config", None)
    for section in SECTIONS_WITH_DEFAULTS:
        config.setdefault(section, {})
    for section in CONFIG_SECTIONS:
        if section in config:
            _validate_section(config[section], section, section)
    for name, entry in (config.get("checkpoints") or {}).items():
        if (entry.get("derive") or {}).get("kind") == "refusal_tuned":
            _validate_section(entry["derive"], "refusal_tuned", f"checkpoints.{name}.derive")


def check_config():
    """Every cross-key check (rankaudit.config_checks), once, before any job is planned: one line per problem."""
    try:
        config_checks.check_config(config, _config_files())
    except config_checks.ConfigError as error:
        raise WorkflowError(str(error)) from None


def default_stages(sections):
    """Without a `stages` key: audit, plus each optional stage whose section the config file has (causal only
    with at least one causal.families entry), so a config of models, families and datasets plans the audit only."""
    optional = [stage for stage in STAGES_KNOWN[1:] if stage in sections]
    if "causal" in optional and not (config.get("causal") or {}).get("families"):
        optional.remove("causal")
    return ["audit", *optional]


def chosen_stages(sections):
    """The stages `rule all` runs (check_config refuses a chosen causal stage without families)."""
    return list(config["stages"]) if "stages" in config else default_stages(sections)


def stage_chosen(stage):
    """Whether `rule all` (and the headline table) includes `stage`; its `<stage>_all` target runs on request anyway."""
    return stage in STAGES


def audit_stage_targets():
    """The audit stage's outputs; its captures and spectra come in as their inputs."""
    return [
        *prompt_dataset_files(),
        *organism_files(),
        *checkpoint_files(),
        *rules.audit_tables.output,
        *precision_floor_files(),
        *[f"results/figures/{family}/{figure}.png" for family in config["families"] for figure in ("cumulative_variance", "rho_by_layer")],
        *rules.headline_table.output,
    ]


def chosen_stage_targets():
    """The inputs of the `all` rule, the outputs of each chosen stage. Called from the Snakefile after every rule file
    is included (the rule files define the functions and rules named here)."""
    targets = {
        "audit": audit_stage_targets,
        "limits": lambda: list(rules.limits_all.input),
        "causal": lambda: list(rules.causal_all.input),
        "calibration": lambda: list(rules.calibration_all.input),
    }
    return [path for stage in STAGES for path in targets[stage]()]


CONFIGURED_SECTIONS = set(config)  # before validate_config fills absent sections with their defaults
validate_config()
check_config()
STAGES = chosen_stages(CONFIGURED_SECTIONS)


wildcard_constraints:
    model="|".join(config["models"]),
    family="|".join(config["families"]),
    fmt="raw|chat",
    layer=r"\d+",


# the helper functions of each rule file (rules/common/<rule file>)
include: "common/calibration.smk"
include: "common/capture.smk"
include: "common/causal.smk"
include: "common/checkpoints.smk"
include: "common/headline.smk"
include: "common/limits.smk"
include: "common/organisms.smk"
include: "common/precision.smk"
include: "common/prompts.smk"
include: "common/refusal_tuning.smk"
include: "common/spectra.smk"
include: "common/tables.smk"

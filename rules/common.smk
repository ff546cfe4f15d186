# Config helpers shared by every stage: validation, wildcard constraints, stage versions.
# Nothing here imports torch or touches files beyond reading the config schemas.

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from rankaudit import plan

# Bump a stage's version when its code changes what it computes: the version is a param of the stage's rules,
# so `--rerun-triggers params` (Snakemake's default) re-runs exactly that stage and what depends on it.
STAGE_VERSION = {
    "prompts": 1,
    "organisms": 1,
    "capture": 1,
    "spectra": 1,
    "tables": 1,
    "calibration": 1,
}

CONFIG_SECTIONS = ["prompts", "organisms", "models", "families", "runtime", "datasets", "capture", "audit", "calibration"]


def _config_origin():
    files = [str(f) for f in workflow.configfiles] or ["config/config.yaml"]
    return ", ".join(files)


def _validation_error(section, error):
    """Turn Snakemake's schema error into one line naming the file(s) and the dotted key at fault."""
    cause = next((arg for arg in error.args if hasattr(arg, "absolute_path")), None)
    if cause is None:
        return f"{_config_origin()}: invalid config: {error}"
    where = ".".join([*([section] if section else []), *(str(p) for p in cause.absolute_path)]) or "top level"
    return f"{_config_origin()}: invalid config key '{where}': {cause.message}"


def validate_config():
    try:
        validate(config, "../config/schema/config.schema.yaml")
    except WorkflowError as error:
        raise WorkflowError(_validation_error(None, error))
    for section in CONFIG_SECTIONS:
        if section in config:
            try:
                validate(config[section], f"../config/schema/{section}.schema.yaml")
            except WorkflowError as error:
                raise WorkflowError(_validation_error(section, error))


validate_config()

wildcard_constraints:
    model="|".join(config["models"]),
    family="|".join(config["families"]),
    fmt="raw|chat",
    layer=r"\d+",

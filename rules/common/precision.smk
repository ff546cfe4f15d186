# Helper functions of rules/precision.smk (Snakemake's lint keeps functions out of rule files); included
# by rules/common.smk before any rule file. They read config and the rule files' constants when called.

from rankaudit import precision


def floor_prompts():
    return config["capture"]["precision_floor_prompts"]


def model_dtype(model):
    """The dtype a model runs in (rules/common/capture.smk `model_runtime`)."""
    return config["models"][model].get("dtype", config["runtime"]["dtype"])


def model_dtypes():
    return {model: model_dtype(model) for model in config["models"]}


def precision_floor_families():
    """Families whose base or aligned model runs below float32 (none when precision_floor_prompts is 0)."""
    return precision.floor_families(config["families"], model_dtypes(), floor_prompts())


def float32_floor_models():
    """Models captured again in float32: the low-precision base/aligned models of those families."""
    return precision.float32_floor_models(config["families"], model_dtypes(), floor_prompts())


def float32_activation_file(model, fmt, key, layer):
    """The float32 copy of a cell's first m prompts; a float32 model is its own reference."""
    if not precision.needs_float32_floor(model_dtype(model)):
        return activation_file(model, fmt, key, layer)
    return f"results/precision_floor/acts/{model}/{fmt}/{key}/layer_{layer}.safetensors"


def precision_floor_table(family):
    """The stem of a family's floor table (.parquet, .csv, .md): what the audit tables read."""
    return f"results/precision_floor/{family}"


def precision_floor_files():
    return [f"{precision_floor_table(family)}.md" for family in precision_floor_families()]


def precision_floor_parquets():
    """The floor tables `rankaudit.precision.flag_ranks` reads (an input of the audit tables)."""
    return [f"{precision_floor_table(family)}.parquet" for family in precision_floor_families()]


def floor_layer_cells(family, float32):
    """{layer: {dataset: {cell key: path}}} of one family, the run's captures or their float32 copies."""
    entry = config["families"][family]
    where = float32_activation_file if float32 else activation_file
    return {
        layer: {dataset: {key: where(entry[role], fmt, dataset, layer) for key, (role, fmt) in CELL_ROLES.items()} for dataset in plan.SAMPLE_KEYS}
        for layer in plan.family_layers(config, family)
    }

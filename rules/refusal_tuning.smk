# Refusal-tuned checkpoints (checkpoints.<name>.derive.kind = refusal_tuned): the parent checkpoint fine-tuned to
# refuse harmful train prompts and keep answering harmless ones (rankaudit.refusal_tuning), written to
# resources/checkpoints/<name>/ with refusal_tuning.json (what was trained, losses, wall time, held-out refusal of
# parent and tuned model). Needs rules/checkpoints.smk (CHECKPOINTS, ckpt) and STAGE_VERSION. No torch import here.

REFUSAL_TUNED = [name for name, entry in CHECKPOINTS.items() if entry.get("derive", {}).get("kind") == "refusal_tuned"]


rule checkpoint_refusal_tune:
    """The parent checkpoint with its last blocks trained to refuse harmful prompts (at most minutes on 2 CPU cores)."""
    input:
        unpack(lambda w: refusal_tuning_inputs(w.name)),
    output:
        directory("resources/checkpoints/{name}"),
    log:
        "logs/checkpoints/{name}.log",
    benchmark:
        "benchmarks/checkpoints/{name}.tsv"
    wildcard_constraints:
        name="|".join(REFUSAL_TUNED) or "(?!)",
    conda:
        "../envs/model.yaml"
    threads: 2
    resources:
        # the parent's float32 weights, plus gradients, Adam state and cached activations of the trained blocks
        **checkpoint_job_resources("parent", mem_mb=8000, minutes=30, weight_copies=2),
    params:
        derive=lambda w: CHECKPOINTS[w.name]["derive"],
        version=STAGE_VERSION["checkpoints"],
    script:
        "../workflow_scripts/refusal_tune.py"

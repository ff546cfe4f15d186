"""The paper plan gives the abliteration check the selection (validation) prompts, which hold the split it asks for.

A dry run of config/paper.yaml (no weights needed to plan), reading the planned job's inputs from the printout.
"""

from __future__ import annotations

import yaml
from reduced_workflow import REPO, snakemake, write_config


def _job_lines(printout: str, rule: str) -> dict[str, str]:
    """key -> value of the first planned job of `rule` in a `snakemake -n` printout."""
    lines = printout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() in (f"rule {rule}:", f"localrule {rule}:"))
    block = {}
    for line in lines[start + 1:]:
        if not line.startswith("    "):
            break
        key, _, value = line.strip().partition(": ")
        block[key] = value
    return block


def test_causal_abliterate_reads_the_validation_prompts_of_the_paper_config(tmp_path):
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    write_config(tmp_path, config)
    job = _job_lines(snakemake(tmp_path, "--dry-run", "resources/abliterated/llama").stdout, "causal_abliterate")
    inputs = job["input"].split(", ")
    selection = config["causal"]["selection"]
    assert selection["split"] == "val" and config["prompts"]["public"][selection["safety_dataset"]]["split"] == "val"
    assert f"results/prompts/{selection['safety_dataset']}.parquet" in inputs
    assert "results/prompts/harmful_test.parquet" not in inputs
    assert "results/llama/causal/selection.json" in inputs and "results/llama/causal/direction.safetensors" in inputs

"""Every job that loads a model waits for its prompt check (rule check_prompts), which reads every prompt table the
job reads and only tokenizer/config manifests. A dry run of config/paper.yaml."""

from __future__ import annotations

import yaml
from reduced_workflow import REPO, snakemake, write_config


def _jobs(printout: str, rule: str) -> list[dict[str, str]]:
    """key -> value of every planned job of `rule` in a `snakemake -n` printout."""
    lines, jobs = printout.splitlines(), []
    for start, line in enumerate(lines):
        if line.strip() in (f"rule {rule}:", f"localrule {rule}:"):
            block = {}
            for entry in lines[start + 1:]:
                if not entry.startswith("    "):
                    break
                key, _, value = entry.strip().partition(": ")
                block[key] = value
            jobs.append(block)
    return jobs


def _checks(inputs: str) -> list[str]:
    return [path for path in inputs.split(", ") if path.startswith("results/prompts/checked/")]


def test_captures_and_causal_jobs_depend_on_their_prompt_checks(tmp_path):
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    write_config(tmp_path, config)
    printout = snakemake(tmp_path, "--dry-run", "results/acts/llama_aligned/capture_record.json",
                         "results/llama/causal/selection.json", "resources/abliterated/llama").stdout
    assert _checks(_jobs(printout, "capture_llama_aligned")[0]["input"]) == ["results/prompts/checked/capture/llama_aligned.json"]
    for rule in ("causal_select", "causal_abliterate"):
        assert _checks(_jobs(printout, rule)[0]["input"]) == ["results/prompts/checked/causal/llama.json"], rule

    def tables(inputs):
        return {path for path in inputs if path.startswith("results/prompts/")}

    def manifests(inputs):  # tokenizers and configs only, never weights: the check runs before any weights are fetched
        return {path for path in inputs if path.startswith("resources/")}

    checks = {job["output"]: set(job["input"].split(", ")) for job in _jobs(printout, "check_prompts")}
    assert set(checks) == {"results/prompts/checked/capture/llama_aligned.json", "results/prompts/checked/causal/llama.json"}
    inputs = checks["results/prompts/checked/capture/llama_aligned.json"]
    captured = {config["datasets"][key]["dataset"] for key in ("safety", "control")} | set(config["datasets"]["concepts"])
    assert tables(inputs) == {f"results/prompts/{name}.parquet" for name in captured}
    # the aligned model renders the chat format itself, and its family's base must tokenize alike
    assert manifests(inputs) == {"resources/manifests/llama_aligned.template.json", "resources/manifests/llama_base.template.json"}

    inputs = checks["results/prompts/checked/causal/llama.json"]
    sets = {config["causal"][phase][f"{key}_dataset"] for phase in ("selection", "evaluation") for key in ("safety", "control")}
    assert tables(inputs) == {f"results/prompts/{name}.parquet" for name in sets}
    assert manifests(inputs) == {"resources/manifests/llama_aligned.template.json"}

"""Rules that load a model ask for what that model needs, and download_models fetches exactly the Hub models.

Dry runs of config/paper.yaml (plans without weights) in an empty directory, plus one real offline run of the
download rule on a local directory.
"""

from __future__ import annotations

import json

import yaml
from reduced_workflow import REPO, dry_run, snakemake, write_config

GPU_RULES = ("causal_select", "causal_arditi", "causal_abliterate", "causal_sweep")


def _paper(**model_changes) -> dict:
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    for model, change in model_changes.items():
        config["models"][model].update(change)
    return config


def test_a_models_stated_resources_reach_every_rule_that_loads_it(tmp_path):
    big = {"mem_mb": 250000, "runtime": 300, "gpus": 2}
    write_config(tmp_path, _paper(gemma2_aligned={"resources": big}))
    plan = dry_run(tmp_path, "resources/abliterated/gemma2", "results/gemma2/causal/arditi.parquet",
                   "results/gemma2/causal/sweep_template.parquet", "results/llama/causal/selection.json")
    expected = {"mem_mb": "250000", "runtime": "300", "gpu": "2"}
    jobs = {rule: plan.resources(rule) for rule in ("capture_gemma2_aligned", *GPU_RULES)}
    for rule, resources in jobs.items():
        gemma = [res for res, wildcards in zip(resources, plan.wildcards(rule))
                 if rule.startswith("capture_") or wildcards["family"] == "gemma2"]
        assert gemma and all(expected.items() <= res.items() for res in gemma), (rule, resources)
    # the base model is sized from n_params_b (9.24B in bfloat16: 18480 MB of weights), not from the aligned's entry
    assert {"mem_mb": "24480", "runtime": "97", "gpu": "1"}.items() <= plan.resources("capture_gemma2_base")[0].items()
    # llama's selection job loads Llama-3.1-8B-Instruct (8.03B): above the rule's 16000 MB floor
    llama = [res for res, w in zip(plan.resources("causal_select"), plan.wildcards("causal_select")) if w["family"] == "llama"]
    assert llama and {"mem_mb": "22060", "gpu": "1"}.items() <= llama[0].items()


def test_download_models_plans_each_hub_model_and_the_demo_never_downloads(tmp_path):
    paper = tmp_path / "paper"
    paper.mkdir()
    write_config(paper, _paper())
    plan = dry_run(paper, "download_models")
    assert sorted(w["model"] for w in plan.wildcards("download_model")) == sorted(_paper()["models"])
    demo = tmp_path / "demo"
    demo.mkdir()
    assert "download_model" not in dry_run(demo, "all", configfile=REPO / "config" / "config.yaml").counts


def test_offline_download_of_a_local_directory_is_skipped_and_recorded(tmp_path):
    config = _paper()
    (tmp_path / "models" / "tiny").mkdir(parents=True)  # looks like a Hub id, but is a directory here
    config["models"] = {"llama_base": {"source": "models/tiny", "n_layers": 32},
                        "llama_aligned": {"source": "models/tiny", "n_layers": 32, "dtype": "float32"}}
    config["families"] = {"llama": {"base": "llama_base", "aligned": "llama_aligned"}}
    config.pop("causal")
    config["stages"] = ["audit"]
    write_config(tmp_path, config)
    snakemake(tmp_path, "--cores", "1", "download_models")
    record = json.loads((tmp_path / "results/models/llama_base.download.json").read_text())
    assert record["skipped"] == "local path" and record["offline"] is True and "commit" not in record

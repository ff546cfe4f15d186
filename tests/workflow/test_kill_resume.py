"""Kill anywhere, lose nothing: kill -9 each heavy job mid-way, resume with Snakemake's own commands, and get the
uninterrupted run's outputs by content, with nothing half-written ever taken as finished (kill_harness.py).

Every test copies one finished run of kill_harness.kill_config() (the session fixture `kill_reference_run`: 95 s on
two idle cores, 144 s on a loaded machine) and re-runs only its target job, killed once and resumed: 20-50 s each on
that loaded machine, 6.5 min for the file. `slow`: the reference run builds and trains the llama organisms.
"""

from __future__ import annotations

import pytest
from kill_harness import (
    KILL_TARGETS,
    MidJob,
    assert_same_content,
    kill_and_resume,
    temporary_files,
)
from reduced_workflow import copy_run, dry_run

pytestmark = pytest.mark.slow

# what proves each job mid-way: its log (opened after the script's imports), its live script process, a log line
# once its real work has begun or a file it writes before its end, and its last write still missing
MID_JOB = {
    "organism_base": MidJob("build_organism_base.py", "logs/organisms/llama/base.log", last="resources/organisms/llama/base",
                            log_line=r"llama/base: pretrain on \d+ examples"),
    # cells run raw/safety, raw/control, ...: a raw/control file means one whole cell is done and four are to come
    "capture_llama_aligned": MidJob("capture_activations.py", "logs/capture/llama_aligned.log",
                                    last="results/acts/llama_aligned/capture_record.json",
                                    partial="results/acts/llama_aligned/raw/control/layer_*.safetensors"),
    "layer_spectra": MidJob("layer_spectra.py", "logs/spectra/llama/layer_2.log",
                            last="results/llama/directions/layer_2.safetensors",
                            partial="results/llama/spectra/*/*/layer_2.json"),
    "causal_select": MidJob("causal_select.py", "logs/causal/llama/select.log", last="results/llama/causal/selection.json",
                            log_line=r"candidate \d+/\d+"),
    "causal_sweep": MidJob("causal_sweep.py", "logs/causal/llama/sweep_template.log",
                           last="results/llama/causal/sweep_template.json", log_line=r"loaded model"),
    "calibration_finetune": MidJob("calibration_finetune.py", "logs/calibration/seed0/fullft.log",
                                   last="results/calibration/seed0/fullft/measurements.json"),
    "limits_layer": MidJob("limits_layer.py", "logs/limits/llama/layer_2.log", last="results/llama/limits/layer_2.json"),
}


@pytest.mark.parametrize("rule", list(MID_JOB))
def test_kill_mid_job_then_resume_matches_uninterrupted_run(rule, kill_reference_run, tmp_path):
    workdir = copy_run(kill_reference_run, tmp_path / "run")
    target = KILL_TARGETS[rule]
    result = kill_and_resume(workdir, rule, target, MID_JOB[rule])

    assert target in result.outputs
    for output in result.outputs:
        assert_same_content(kill_reference_run, workdir, output)
    assert dry_run(workdir, target).jobs == (), f"{target}: the resumed run is not complete in Snakemake's eyes"
    # what the killed job's interrupted atomic writes left (before the resume): removed by the next run
    assert temporary_files(workdir) == [], f"temporary files left after the resume (killed job left {result.leftovers})"

"""End-to-end: the demo workflow's results, and what reruns of a finished run do."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from rankaudit import spectra
from rankaudit.directions import top_directions
from rankaudit.organisms.planted import load_planted
from rankaudit.resampling import principal_angles
from rankaudit.stages.spectra import read_cell

pytestmark = pytest.mark.slow


def scheduled_jobs(output: str) -> dict[str, int]:
    """The job counts of a dry run's "Job stats" table."""
    counts: dict[str, int] = {}
    block = output.split("Job stats:", 1)[1] if "Job stats:" in output else ""
    for line in block.splitlines()[3:]:
        match = re.fullmatch(r"\s*(\S+)\s+(\d+)\s*", line)
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def test_organisms_meet_refusal_targets(demo_run: tuple[Path, Path]) -> None:
    workdir, _ = demo_run
    table = pd.read_csv(workdir / "results/tables/organism_refusal.csv")
    missed = table[~table["meets_target"]]
    assert missed.empty, f"organisms missing their refusal targets:\n{missed[['family', 'role', 'format', 'dataset', 'refusal_rate', 'target']]}"
    chat = table[table["format"] == "chat"]
    for family in ("llama", "gemma2", "qwen2"):
        rates = chat[chat["family"] == family].groupby(["role", "dataset"])["refusal_rate"].max()
        assert rates[("aligned", "harmful")] >= 0.9 and rates[("aligned", "benign")] <= 0.1, family
        assert rates[("base", "harmful")] <= 0.1 and rates[("unsafe_ft", "harmful")] <= 0.1, family


def test_planted_rank_and_subspace_are_recovered(demo_run: tuple[Path, Path]) -> None:
    workdir, _ = demo_run
    basis, meta = load_planted(workdir / "resources/organisms/llama/planted")
    layer, rank = int(meta["layer"]), int(meta["rank"])
    acts = workdir / "results/acts"
    def shift(at: int) -> np.ndarray:
        aligned, _ = read_cell(str(acts / f"llama_planted/chat/safety/layer_{at}.safetensors"), "last")
        base, _ = read_cell(str(acts / f"llama_base/chat/safety/layer_{at}.safetensors"), "last")
        return aligned - base
    for before in range(layer):
        assert np.array_equal(shift(before), np.zeros_like(shift(before))), f"layer {before} shifted before the edit"
    matrix = shift(layer)
    values = spectra.singular_values(matrix, method="svd")
    assert spectra.energy_rank(values, 1e-9) == rank
    angles = principal_angles(top_directions(matrix, rank), basis)
    assert angles.max() < 1e-3
    record = json.loads((workdir / f"results/llama_planted/spectra/template/safety/layer_{layer}.json").read_text())
    assert record["uncentered"]["rank_eps"][0] <= rank


def test_every_prompt_is_forwarded_exactly_once(demo_run: tuple[Path, Path]) -> None:
    workdir, config_path = demo_run
    config = yaml.safe_load(config_path.read_text())
    records = {path.parent.name: json.loads(path.read_text()) for path in (workdir / "results/acts").glob("*/capture_record.json")}
    assert records, "no capture records"
    for model, record in records.items():
        for cell in record["cells"]:
            assert cell["forwarded_rows"] == cell["n_prompts"], f"{model} {cell['format']}/{cell['dataset']}"
        assert record["stats"]["forwarded_rows"] == sum(cell["n_prompts"] for cell in record["cells"])
        assert len({(cell["format"], cell["dataset"]) for cell in record["cells"]}) == len(record["cells"])
    shared = config["families"]["llama_planted"]["base"]
    assert shared == config["families"]["llama"]["base"] and shared in records


def test_prompts_carry_exactly_one_bos(demo_run: tuple[Path, Path]) -> None:
    workdir, _ = demo_run
    for path in (workdir / "results/acts").glob("*/capture_record.json"):
        cells = json.loads(path.read_text())["cells"]
        chat = next(cell for cell in cells if cell["format"] == "chat")
        if chat["encoding"]["bos_token"] is None:
            continue
        bos = chat["encoding"]["bos_token"]
        bos_id = chat["prompts"][0]["token_ids"][0]
        for cell in cells:
            for prompt in cell["prompts"]:
                assert prompt["token_ids"].count(bos_id) == 1 and prompt["token_ids"][0] == bos_id, (
                    f"{path}: {cell['format']}/{cell['dataset']} prompt {prompt['index']}")
                if cell["format"] == "chat":
                    assert prompt["rendered"].count(bos) == 1


def test_diagnosis_tables_cover_every_family(demo_run: tuple[Path, Path]) -> None:
    workdir, config_path = demo_run
    families = set(yaml.safe_load(config_path.read_text())["families"])
    table = pd.read_parquet(workdir / "results/tables/rho_per_family.parquet")
    assert set(table["family"]) == families
    assert ((table["rho_d"] > 0) & (table["rho_d"] <= 1)).all()
    for name in ("rho_per_layer", "centered_vs_uncentered", "variants", "arditi_cosines"):
        assert (workdir / f"results/tables/{name}.md").stat().st_size > 0


def test_finished_run_has_nothing_to_do(demo_run: tuple[Path, Path], run_snakemake) -> None:
    workdir, config = demo_run
    result = run_snakemake(workdir, config, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]


def test_changing_eps_reruns_only_analysis(demo_run: tuple[Path, Path], tmp_path: Path, run_snakemake) -> None:
    workdir, config_path = demo_run
    config = yaml.safe_load(config_path.read_text())
    config["audit"]["eps"] = [0.05, 0.1]
    changed = tmp_path / "eps.yaml"
    changed.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_snakemake(workdir, changed, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = scheduled_jobs(result.stdout + result.stderr)
    assert jobs.get("layer_spectra", 0) > 0
    # model work: every rule that loads a model or trains one; the CPU aggregators causal_tables / causal_figures /
    # calibration_tables re-run legitimately (they read the re-written per-layer spectra and direction files)
    model_work = ("capture_", "organism_", "causal_select", "causal_arditi", "causal_abliterate", "causal_sweep",
                  "calibration_base", "calibration_finetune", "calibration_steering", "calibration_kappa")
    forward_passes = [job for job in jobs if job.startswith(model_work)]
    assert not forward_passes, f"changing eps re-runs model work: {forward_passes}"


def test_report_builds(demo_report: tuple[Path, str]) -> None:
    report, _ = demo_report  # built without errors and without docutils messages (the fixture checks both)
    assert report.stat().st_size > 10_000

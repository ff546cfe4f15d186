"""A model that never refuses goes through the causal stage: "no refusal to ablate" is recorded, no direction is
selected, and every downstream job and table says so instead of crashing or making numbers up."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rankaudit.causal.no_refusal import NO_REFUSAL, baseline_refusal, no_refusal_note, require_abliterated_model

WORDS = ["bread", "poem", "sea", "lock", "bicycle", "language", "France", "novel", "chemical", "morning"]
TABLES = ("causal_selection", "causal_arditi", "causal_k3_narrow", "causal_per_direction", "causal_k_sweep", "causal_ordering",
          "causal_canonical_cosines", "causal_canonical_cosines_mean")


def _prompt_table(path, kind, splits=("train", "val", "test")):
    rows = [{"instruction": f"{kind} request {i}: tell me about the {WORDS[i % 10]} and {WORDS[(3 * i) % 10]}",
             "category": None, "source": "test", "split": splits[i % len(splits)]} for i in range(18)]
    pd.DataFrame(rows).to_parquet(path, index=False)


def _section(threshold=0.25):
    return {
        "seed": 0, "batch_size": 8, "row_batch_size": 64, "attn_implementation": "eager", "read_position": "last",
        "refusal_openers": ["I", "Sorry"], "min_refusal_token_coverage": 0.9, "min_baseline_refusal": threshold,
        # a phrase no continuation of the tiny random model contains: the judge never sees a refusal
        "judge": {"type": "keyword", "phrases": ["\x00never-refuses\x00"]},
        "generation": {"max_new_tokens": 4},
        "selection": {"split": "val", "n": None, "filter_by_refusal_score": False, "min_prompts_after_filter": 2,
                      "max_layer_fraction": 0.8, "max_kl": 0.1, "min_induce": 0.0},
        "evaluation": {"split": "test", "n": None, "control_generation": True, "random_generation": True},
        "bands": {"narrow": {"range": [0.45, 0.70], "count": 5}},
        "k_grid": [1, 3], "n_single": 2, "random_draws": 10, "abliteration_tolerance": 1e-4,
    }


def test_the_threshold_decides_on_the_rate_and_needs_at_least_one_refusal():
    eight = baseline_refusal([True] * 8 + [False] * 24, 0.25, "val", "harmful_val")
    seven = baseline_refusal([True] * 7 + [False] * 25, 0.25, "val", "harmful_val")
    assert eight["refusal_to_ablate"] and not seven["refusal_to_ablate"]
    assert seven["n"] == 32 and seven["refusal_count"] == 7 and seven["refusal_rate"] == pytest.approx(7 / 32)
    assert seven["refusal_low"] == pytest.approx(0.1102, abs=1e-4) and seven["refusal_high"] == pytest.approx(0.3875, abs=1e-4)
    assert not baseline_refusal([False] * 32, 0.0, "val", "harmful_val")["refusal_to_ablate"]  # none refused, threshold 0
    note = no_refusal_note(seven)
    assert "no refusal to ablate: 7/32 harmful val prompts (harmful_val) refused, rate 0.22" in note
    assert "causal.min_baseline_refusal 0.25" in note


def test_a_model_that_never_refuses_reports_no_refusal_through_every_causal_job(tiny_families, tmp_path):
    from rankaudit.causal.inputs import read_direction
    from rankaudit.stages import causal, causal_report

    paths = {kind: tmp_path / f"{kind}.parquet" for kind in ("harmful", "harmless")}
    for kind, path in paths.items():
        _prompt_table(path, kind)
    section = _section()
    model = {"location": str(tiny_families["llama"].path), "dtype": "float32", "device": "cpu", "attn_implementation": "eager"}
    common = {"family": "tiny", "section": section, "system_prompt": "default", "version": 1, "threads": 1}
    record_path, direction_path = tmp_path / "selection.json", tmp_path / "direction.safetensors"
    # no activation files exist: with no refusal the job must stop before reading any
    missing = {layer: {"harmful": str(tmp_path / "absent.safetensors"), "harmless": str(tmp_path / "absent.safetensors")} for layer in range(3)}
    causal.run_selection(**common, model=model, activations=missing, harmful_path=str(paths["harmful"]),
                         harmless_path=str(paths["harmless"]), record_path=str(record_path),
                         direction_path=str(direction_path), table_stem=str(tmp_path / "candidates"))
    record = json.loads(record_path.read_text())
    assert record["status"] == NO_REFUSAL and record["selected"] is None and record["n_candidates"] == 0
    refusal = record["baseline_refusal"]
    assert (refusal["refusal_count"], refusal["n"], refusal["split"], refusal["dataset"]) == (0, 6, "val", "harmful")
    assert refusal["refusal_low"] == 0.0 and refusal["refusal_high"] == pytest.approx(0.390, abs=1e-3)  # Wilson, 0 of 6
    assert record["validation"] == {"split": "val", "harmful_dataset": "harmful", "harmless_dataset": "harmless",
                                    "n_harmful": 6, "n_harmless": 6, "special_token_text": "error",
                                    "n_escaped": {"harmful": 0, "harmless": 0}}
    assert record["refusal_check"]["n_refused"] == 0 and sum(record["refusal_check"]["first_tokens"].values()) == 6
    assert len(pd.read_parquet(tmp_path / "candidates.parquet")) == 0
    with pytest.raises(ValueError, match="holds no direction .*no refusal to ablate"):
        read_direction(str(direction_path))

    # downstream jobs never load a model: a location that does not exist proves it
    absent = {**model, "location": str(tmp_path / "no-model-here")}
    selection = {"selection_record": str(record_path), "direction_path": str(direction_path),
                 "harmful_path": str(paths["harmful"]), "control_path": str(paths["harmless"])}
    causal.run_arditi(**common, model=absent, **selection, table_stem=str(tmp_path / "arditi"),
                      prompts_path=str(tmp_path / "arditi_prompts.parquet"))
    arditi = pd.read_parquet(tmp_path / "arditi.parquet")
    assert list(arditi["condition"]) == [NO_REFUSAL] and arditi["note"].iloc[0] == record["note"]
    assert arditi["baseline_rate"].iloc[0] == 0.0 and arditi["baseline_split"].iloc[0] == "val"
    causal.run_sweep(**common, model=absent, **selection, basis="did", cells={}, summary_stem=str(tmp_path / "sweep_did"),
                     prompts_path=str(tmp_path / "sweep_did_prompts.parquet"), record_path=str(tmp_path / "sweep_did.json"))
    assert json.loads((tmp_path / "sweep_did.json").read_text())["status"] == NO_REFUSAL
    assert len(pd.read_parquet(tmp_path / "sweep_did_prompts.parquet")) == 0
    causal.write_abliterated(**common, model=absent, selection_record=str(record_path), direction_path=str(direction_path),
                             output_dir=str(tmp_path / "abliterated"), check_prompts_path=str(paths["harmful"]))
    assert sorted(p.name for p in (tmp_path / "abliterated").iterdir()) == ["abliteration.json"]
    assert json.loads((tmp_path / "abliterated" / "abliteration.json").read_text())["made"] is False
    with pytest.raises(ValueError, match=r"no abliterated model was made \(no refusal to ablate.*families.tiny.references"):
        require_abliterated_model(str(tmp_path / "abliterated"))

    outputs = {name: str(tmp_path / "tables" / name) for name in (*TABLES, "causal_layer_convention")}
    # no direction was selected: neither the selection's nor the spectra's direction files are read
    causal_report.write_causal_tables(sweeps=[str(tmp_path / "sweep_did.parquet")], prompt_files=[str(tmp_path / "sweep_did_prompts.parquet")],
                                      arditi=[str(tmp_path / "arditi.parquet")], selections=[str(record_path)], outputs=outputs,
                                      settings={"effect_metric": "score", "bootstrap": 100, "monotone_tolerance": 0.05,
                                                "inert_tolerance": 0.1, "headline_band": "narrow", "headline_k": 3, "seed": 0},
                                      selected_directions={"tiny": str(direction_path)},
                                      layer_directions={"tiny": {0: str(tmp_path / "absent.safetensors")}}, bands=section["bands"])
    convention = pd.read_parquet(tmp_path / "tables" / "causal_layer_convention.parquet")
    assert list(convention["family"]) == ["tiny"] and convention["n_blocks"].iloc[0] == record["n_blocks"]
    for name in TABLES:
        table = pd.read_parquet(tmp_path / "tables" / f"{name}.parquet")
        assert list(table["family"]) == ["tiny"], name
        assert table["note"].iloc[0].startswith("no refusal to ablate: 0/6"), name
        assert "no refusal to ablate" in (tmp_path / "tables" / f"{name}.md").read_text()
    selection_row = pd.read_parquet(tmp_path / "tables" / "causal_selection.parquet").iloc[0]
    assert selection_row["status"] == "no refusal to ablate" and selection_row["harmful_refusal_rate"] == 0.0
    assert "layer" not in selection_row.index  # nothing selected, so no layer column is invented
    figures = {name: str(tmp_path / f"{name}.png") for name in ("refusal_vs_k", "per_direction", "selection")}
    causal_report.family_figures(family="tiny", sweeps=[str(tmp_path / "sweep_did.parquet")],
                                 candidates=str(tmp_path / "candidates.parquet"), outputs=figures)
    assert all((tmp_path / f"{name}.png").stat().st_size > 1000 for name in figures)


def test_a_missing_split_is_named_with_its_dataset_and_config_keys_before_any_model_loads(tmp_path):
    from rankaudit.causal.inputs import phase_prompts
    from rankaudit.prompts.tables import PromptDataError

    path = tmp_path / "harmful_test.parquet"
    _prompt_table(path, "harmful", splits=("test",))
    with pytest.raises(PromptDataError, match=r"dataset 'harmful_test': split 'val' has no prompts .*'test'.*"
                                              r"causal.selection.split = 'val'.*causal.selection.safety_dataset"):
        phase_prompts(str(path), "selection", "safety", _section())


def test_tables_keep_measured_families_next_to_a_no_refusal_family():
    from rankaudit.causal.tables import split_notes, with_notes

    sweep = pd.DataFrame([{"family": "a", "basis": "did", "kind": "baseline", "refusal_rate": 0.9},
                          {"family": "b", "basis": "did", "kind": NO_REFUSAL, "note": "no refusal to ablate: x"}])
    measured, notes = split_notes(sweep, "kind")
    assert list(measured["family"]) == ["a"] and list(notes["family"]) == ["b"]
    table = with_notes(measured[["family", "basis", "refusal_rate"]], notes, ["family", "basis"])
    assert list(table["family"]) == ["a", "b"] and list(table["note"]) == ["", "no refusal to ablate: x"]
    assert table["refusal_rate"].iloc[0] == 0.9 and np.isnan(table["refusal_rate"].iloc[1])


def test_a_basis_that_is_zero_at_band_layers_gets_a_no_shift_note_without_loading_a_model(tmp_path):
    """A pair that differs only in blocks outside the bands (e.g. a tune of the last blocks) has M = 0 there."""
    from rankaudit import io
    from rankaudit.causal.no_refusal import NO_SHIFT
    from rankaudit.stages import causal

    rng = np.random.default_rng(0)
    section = _section()  # narrow band of 5 evenly spaced layers in [0.45 L, 0.70 L]: layers 2 and 3 for L = 4
    cells = {}
    for layer in (2, 3):
        shared = rng.standard_normal((6, 8)).astype(np.float32)
        aligned = shared + (rng.standard_normal((6, 8)).astype(np.float32) if layer == 3 else 0)
        files = {}
        for key, values in (("a_chat", aligned), ("b_chat", shared)):
            path = tmp_path / f"{key}_{layer}.safetensors"
            io.write_tensors(str(path), {"last": values}, {})
            files[key] = str(path)
        cells[layer] = {"safety": files}
    record_path = tmp_path / "selection.json"
    record_path.write_text(json.dumps({"family": "tiny", "status": "selected", "n_blocks": 4}))
    causal.run_sweep(family="tiny", basis="template", model={"location": str(tmp_path / "no-model-here")}, cells=cells,
                     selection_record=str(record_path), direction_path=str(tmp_path / "absent.safetensors"),
                     harmful_path="absent", control_path="absent", section=section, system_prompt="default",
                     summary_stem=str(tmp_path / "sweep"), prompts_path=str(tmp_path / "sweep_prompts.parquet"),
                     record_path=str(tmp_path / "sweep.json"), version=1)
    row = pd.read_parquet(tmp_path / "sweep.parquet").iloc[0]
    assert row["kind"] == NO_SHIFT and json.loads(row["ranks"]) == {"2": 0, "3": 6}
    assert "M_template is exactly zero at band layers [2]" in row["note"]
    assert json.loads((tmp_path / "sweep.json").read_text())["status"] == NO_SHIFT


def test_capture_refuses_an_abliterated_reference_that_was_never_made(tmp_path):
    """A family listing the abliterated copy of a model with no refusal gets the reason, not a loader error."""
    from rankaudit.stages.capture import capture_model

    directory = tmp_path / "abliterated"
    directory.mkdir()
    (directory / "abliteration.json").write_text(json.dumps({"family": "tiny", "made": False,
                                                             "note": "no refusal to ablate: 0/6"}))
    spec = {"location": str(directory), "n_layers": 2}
    with pytest.raises(ValueError, match=r"no abliterated model was made \(no refusal to ablate: 0/6\).*families.tiny.references"):
        capture_model(model_name="tiny_abliterated", model=spec, template_name="tiny", template=spec, cells=[], layers=[0],
                      prompt_files={}, output_pattern=str(tmp_path / "{fmt}_{key}_{layer}"), record_path=str(tmp_path / "r.json"),
                      batch_size=1, mean_last_k=1, system_prompt="default", version=1)

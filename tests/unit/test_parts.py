"""Per-part results of long jobs (rankaudit.parts): a capture or a sweep interrupted after its first part, then run
again, computes only the parts it had not finished and publishes exactly what an uninterrupted run publishes; parts
computed from other prompts are never reused, and no parts folder is left once the job has published its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rankaudit import io, parts
from rankaudit.prompts.generated import generate_requests

SPLITS = {"train": 0.5, "val": 0.25, "test": 0.25}


class Interrupted(Exception):
    """Stands for a kill: the job stops between two parts, leaving what it had finished."""


def _counting(monkeypatch, module, name, fail_on_call=None):
    """Wrap `module.name` to count its calls; raise Interrupted on call number `fail_on_call`."""
    original, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        calls.append(args)
        if fail_on_call is not None and len(calls) == fail_on_call:
            raise Interrupted
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _remove_outputs(root: Path) -> None:
    """What Snakemake does before it runs an incomplete job again: delete its outputs (the parts are not outputs)."""
    for path in root.rglob("*"):
        if path.is_file() and parts.PARTS_DIR not in path.parts and path.suffix in {".safetensors", ".json", ".parquet", ".csv", ".md"}:
            path.unlink()


# --- the store itself ----------------------------------------------------------------------------------------------

def test_store_reuses_only_its_own_fingerprint_and_cleans_up(tmp_path):
    anchor = tmp_path / "out" / "record.json"
    first = parts.PartStore(anchor, "aaaa", ["one", "two/odd name"], label="job")
    first.save("one", {"rows": [{"z": 1.5, "a": float("nan"), "m": None}]})
    first.save("two/odd name", {"x": 1})
    assert (tmp_path / "out" / parts.PARTS_DIR / "record.json" / "aaaa" / "one" / parts.DONE).is_file()
    # a name that is no safe file name gets a folder of its own, never a path outside the store
    assert [p.name for p in (tmp_path / "out" / parts.PARTS_DIR / "record.json" / "aaaa").iterdir() if p.name != "one"][0].startswith("two_odd_name-")

    again = parts.PartStore(anchor, "aaaa", ["one", "two/odd name"], label="job")
    saved = again.finished("one")
    assert list(saved["rows"][0]) == ["z", "a", "m"] and np.isnan(saved["rows"][0]["a"]) and saved["rows"][0]["m"] is None
    assert again.summary() == {"parts": 2, "reused": 1}

    other = parts.PartStore(anchor, "bbbb", ["one", "two/odd name"], label="job")  # other inputs: the old parts are stale
    assert other.finished("one") is None and not (tmp_path / "out" / parts.PARTS_DIR / "record.json" / "aaaa").exists()
    other.save("one", {})
    other.finish()
    assert not (tmp_path / "out" / parts.PARTS_DIR).exists()
    with pytest.raises(KeyError, match="not one of the planned parts"):
        other.finished("three")


def test_fingerprint_follows_settings_and_file_contents(tmp_path):
    data = tmp_path / "prompts.parquet"
    data.write_bytes(b"v1")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    base = parts.fingerprint({"k": [1, 3]}, [str(data), str(model), "org/hub-model"])
    assert base == parts.fingerprint({"k": [1, 3]}, [data, model, "org/hub-model"])
    assert base != parts.fingerprint({"k": [1, 5]}, [data, model, "org/hub-model"])
    data.write_bytes(b"v2")
    assert base != parts.fingerprint({"k": [1, 3]}, [data, model, "org/hub-model"])
    data.write_bytes(b"v1")
    (model / "config.json").write_text('{"n": 1}')
    assert base != parts.fingerprint({"k": [1, 3]}, [data, model, "org/hub-model"])


def test_large_files_are_identified_by_size_and_time(tmp_path, monkeypatch):
    monkeypatch.setattr(parts, "CONTENT_HASH_LIMIT", 4)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"0123456789")
    kind, size, mtime = parts.path_identity(weights)[1]
    assert (kind, size, mtime) == ("size_mtime", 10, weights.stat().st_mtime_ns)


# --- capture: one part per (format, dataset) cell --------------------------------------------------------------

CELLS = [("raw", "safety"), ("chat", "safety"), ("chat", "control")]
LAYERS = [0, 2]


def _write_prompts(root: Path, seed: int = 0) -> dict[str, str]:
    files = {}
    for key, kind, n in (("safety", "harmful", 6), ("control", "benign", 4)):
        files[key] = str(root / f"{key}.parquet")
        generate_requests(kind, n, seed, SPLITS, f"demo_{kind}").to_parquet(files[key], index=False)
    return files


def _capture(family, root: Path, prompt_files: dict[str, str]) -> None:
    from rankaudit.stages.capture import capture_model

    spec = {"location": str(family.path), "dtype": "float32", "device": "cpu", "n_layers": 3}
    capture_model(model_name="tiny", model=spec, template_name="tiny", template=spec, cells=CELLS, layers=LAYERS,
                  prompt_files=prompt_files, output_pattern=str(root / "acts" / "{fmt}" / "{key}" / "layer_{layer}.safetensors"),
                  record_path=str(root / "acts" / "record.json"), batch_size=3, mean_last_k=2, system_prompt="default",
                  version=1, threads=1)


def _assert_same_tensors(actual: Path, expected: Path) -> None:
    """Equal tensors bit for bit and equal metadata (safetensors does not fix its header's key order)."""
    (got, got_meta), (want, want_meta) = io.read_tensors(actual), io.read_tensors(expected)
    assert got_meta == want_meta and got.keys() == want.keys(), actual
    for key in want:
        assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), f"{actual}:{key}"


def _comparable(record: dict) -> dict:
    """A capture record without what differs between an interrupted and an uninterrupted run by design."""
    return {**record, "resume": None, "stats": {**record["stats"], "seconds": None}}


def test_an_interrupted_capture_redoes_only_its_unfinished_cells(tiny_families, tmp_path, monkeypatch, caplog):
    from rankaudit.stages import capture as stage

    family = tiny_families["llama"]
    prompt_files = _write_prompts(tmp_path)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    calls = _counting(monkeypatch, stage, "capture_residual_stream")
    _capture(family, whole, prompt_files)
    assert len(calls) == len(CELLS)
    monkeypatch.undo()

    _counting(monkeypatch, stage, "capture_residual_stream", fail_on_call=2)
    with pytest.raises(Interrupted):
        _capture(family, resumed, prompt_files)
    monkeypatch.undo()
    _remove_outputs(resumed)
    kept = {p.name: p.read_bytes() for p in (resumed / "acts").rglob("layer_*.safetensors")}
    assert sorted(kept) == ["layer_0.safetensors", "layer_2.safetensors"]  # the first cell, in the parts folder only
    calls = _counting(monkeypatch, stage, "capture_residual_stream")
    with caplog.at_level("INFO", logger="rankaudit"):
        _capture(family, resumed, prompt_files)

    assert len(calls) == len(CELLS) - 1  # the raw/safety cell was not captured again
    assert "capture tiny: reused 1 of 3 parts" in caplog.text
    outputs = sorted(p.relative_to(whole) for p in whole.rglob("*.safetensors"))
    assert len(outputs) == len(CELLS) * len(LAYERS)
    for relative in outputs:
        _assert_same_tensors(resumed / relative, whole / relative)
    for name, content in kept.items():  # the reused cell is published byte for byte as the interrupted run wrote it
        assert (resumed / "acts" / "raw" / "safety" / name).read_bytes() == content
    record = json.loads((resumed / "acts" / "record.json").read_text())
    reference = json.loads((whole / "acts" / "record.json").read_text())
    assert record["resume"] == {"parts": 3, "reused": 1} and reference["resume"] == {"parts": 3, "reused": 0}
    assert _comparable(record) == _comparable(reference)  # forward counts included: reused cells count as computed
    assert not (resumed / "acts" / parts.PARTS_DIR).exists() and not (whole / "acts" / parts.PARTS_DIR).exists()


def test_a_capture_with_other_prompts_reuses_no_part(tiny_families, tmp_path, monkeypatch):
    from rankaudit.stages import capture as stage

    family = tiny_families["llama"]
    prompt_files = _write_prompts(tmp_path)
    _counting(monkeypatch, stage, "capture_residual_stream", fail_on_call=3)
    with pytest.raises(Interrupted):
        _capture(family, tmp_path, prompt_files)
    monkeypatch.undo()
    finished = list((tmp_path / "acts" / parts.PARTS_DIR).rglob(parts.DONE))
    assert len(finished) == 2
    _write_prompts(tmp_path, seed=1)  # the same files, other prompts
    calls = _counting(monkeypatch, stage, "capture_residual_stream")
    _capture(family, tmp_path, prompt_files)
    assert len(calls) == len(CELLS)
    assert json.loads((tmp_path / "acts" / "record.json").read_text())["resume"] == {"parts": 3, "reused": 0}
    assert not (tmp_path / "acts" / parts.PARTS_DIR).exists()


# --- sweep: one part per group of conditions -------------------------------------------------------------------

def _evaluation_prompts(kind: str, seed: int) -> pd.DataFrame:
    """Nine requests, three of them in the test split the sweep measures."""
    frame = generate_requests(kind, 9, seed, {"train": 1.0, "val": 0.0, "test": 0.0}, f"demo_{kind}")
    return frame.assign(split=[("train", "val", "test")[i % 3] for i in range(len(frame))])


def _sweep_inputs(family, root: Path) -> dict:
    from rankaudit.refusal import refusal_tokens

    root.mkdir(parents=True, exist_ok=True)
    d, n_blocks = family.model.config.hidden_size, family.model.config.num_hidden_layers
    prompts = {}
    for role, kind in (("harmful", "harmful"), ("control", "benign")):
        prompts[role] = root / f"{role}.parquet"
        _evaluation_prompts(kind, 0).to_parquet(prompts[role], index=False)
    rng = np.random.default_rng(0)
    cells = {}
    for layer in range(1, n_blocks + 1):
        cells[layer] = {"safety": {}}
        for key in ("a_chat", "b_chat"):
            path = root / "acts" / f"{key}_{layer}.safetensors"
            io.write_tensors(path, {"last": rng.standard_normal((6, d)).astype(np.float32)}, {"layer": layer})
            cells[layer]["safety"][key] = str(path)
    tokens = refusal_tokens(family.tokenizer, ["I"])
    selection = root / "selection.json"
    io.write_json(selection, {"status": "selected", "n_blocks": n_blocks, "refusal_check": {"refusal_tokens": tokens.record()}})
    direction = root / "direction.safetensors"
    io.write_tensors(direction, {"direction": rng.standard_normal(d)}, {"layer": 1, "position": -1})
    section = {
        "seed": 0, "batch_size": 8, "row_batch_size": 16, "read_position": "last", "judge": {"type": "keyword"},
        "generation": {"max_new_tokens": 2}, "evaluation": {"split": "test", "n": None, "control_generation": True, "random_generation": False},
        "bands": {"narrow": {"range": [0.45, 0.70], "count": 2}}, "k_grid": [1, 2], "n_single": 2, "random_draws": 2,
    }
    return {"model": {"location": str(family.path), "dtype": "float32", "device": "cpu"}, "cells": cells,
            "selection_record": str(selection), "direction_path": str(direction), "harmful_path": str(prompts["harmful"]),
            "control_path": str(prompts["control"]), "section": section}


def _sweep(inputs: dict, out: Path) -> None:
    from rankaudit.stages.causal import run_sweep

    run_sweep(family="tiny", basis="template", system_prompt="default", summary_stem=str(out / "sweep"),
              prompts_path=str(out / "sweep_prompts.parquet"), record_path=str(out / "sweep.json"), version=1, threads=1, **inputs)


def test_sweep_parts_follow_the_plan_order():
    from rankaudit.causal.sweep_plan import sweep_parts
    from rankaudit.sweeps import plan_conditions

    bases = {band: {3: np.eye(6)[:, :3]} for band in ("narrow", "wide")}
    conditions = plan_conditions(bases, [1, 3], n_single=2, random_draws=2, seed=0)
    groups = sweep_parts(conditions)
    assert list(groups) == ["baseline", "narrow__cumulative", "narrow__single", "narrow__random_k1", "narrow__random_k3",
                            "wide__cumulative", "wide__single", "wide__random_k1", "wide__random_k3"]
    assert [index for members in groups.values() for index in members] == list(range(len(conditions)))
    assert [conditions[i].name for i in groups["wide__random_k3"]] == ["wide/random/k3_draw0", "wide/random/k3_draw1"]


def test_an_interrupted_sweep_measures_only_its_unfinished_parts(tiny_families, tmp_path, monkeypatch, caplog):
    from rankaudit.causal.evaluation import Evaluator

    inputs = _sweep_inputs(tiny_families["llama"], tmp_path / "inputs")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    calls = _counting(monkeypatch, Evaluator, "measure")
    _sweep(inputs, whole)
    names = [condition["condition"] for call in calls for condition, _, _ in call[1]]
    assert len(calls) == 5 and names[0] == "baseline"  # baseline, cumulative, single, random k1, random k2
    monkeypatch.undo()

    _counting(monkeypatch, Evaluator, "measure", fail_on_call=3)
    with pytest.raises(Interrupted):
        _sweep(inputs, resumed)
    monkeypatch.undo()
    _remove_outputs(resumed)
    calls = _counting(monkeypatch, Evaluator, "measure")
    with caplog.at_level("INFO", logger="rankaudit"):
        _sweep(inputs, resumed)
    assert "sweep tiny/template: reused 2 of 5 parts" in caplog.text
    assert [[c["condition"] for c, _, _ in call[1]] for call in calls] == [
        ["narrow/single/u1", "narrow/single/u2"], ["narrow/random/k1_draw0", "narrow/random/k1_draw1"],
        ["narrow/random/k2_draw0", "narrow/random/k2_draw1"]]

    for name in ("sweep.parquet", "sweep_prompts.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(resumed / name), pd.read_parquet(whole / name))
    for name in ("sweep.csv", "sweep.md"):
        assert (resumed / name).read_bytes() == (whole / name).read_bytes()
    record, reference = (json.loads((out / "sweep.json").read_text()) for out in (resumed, whole))
    assert (record["resume"], reference["resume"]) == ({"parts": 5, "reused": 2}, {"parts": 5, "reused": 0})
    assert {**record, "resume": 0, "seconds": 0} == {**reference, "resume": 0, "seconds": 0}
    assert not (resumed / parts.PARTS_DIR).exists()


def test_a_sweep_with_other_prompts_reuses_no_part(tiny_families, tmp_path, monkeypatch):
    from rankaudit.causal.evaluation import Evaluator

    inputs = _sweep_inputs(tiny_families["llama"], tmp_path / "inputs")
    _counting(monkeypatch, Evaluator, "measure", fail_on_call=2)
    with pytest.raises(Interrupted):
        _sweep(inputs, tmp_path)
    monkeypatch.undo()
    _evaluation_prompts("harmful", 1).to_parquet(inputs["harmful_path"], index=False)
    calls = _counting(monkeypatch, Evaluator, "measure")
    _sweep(inputs, tmp_path)
    assert len(calls) == 5
    assert json.loads((tmp_path / "sweep.json").read_text())["resume"] == {"parts": 5, "reused": 0}

"""'No refusal to ablate': what the causal stage writes when the aligned model barely refuses (METHODS §6).

The selection job measures the aligned model's refusal rate on the harmful validation prompts (judge on greedy
continuations). Below `causal.min_baseline_refusal` (or with no refusal at all) there is no refusal behaviour for
a direction to mediate: the bypass score of every candidate would measure noise, and a "selected" direction would
be an artefact. The job then records the rate with its Wilson interval and n, selects nothing, and every
downstream job (all-layer ablation, abliterated model, sweeps, tables, figures) writes an explicit
"no refusal to ablate" row or note instead of numbers. No model is loaded by those downstream jobs.

The abliterated-model output is then a directory holding only `abliteration.json` with `"made": false`: no model
was made, so a `models:` entry that points at it cannot be captured; `require_abliterated_model` gives the error
that says so (drop that reference from the family for a model that does not refuse).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rankaudit import io
from rankaudit.refusal import rate_summary

NO_REFUSAL = "no_refusal"
NO_SHIFT = "no_shift"
NOTE_KINDS = (NO_REFUSAL, NO_SHIFT)
SELECTED = "selected"
ABLITERATION_RECORD = "abliteration.json"
CANDIDATE_COLUMNS = ["family", "split", "position", "layer", "norm", "bypass", "induce", "kl", "discarded", "selected"]
SWEEP_PROMPT_COLUMNS = ["family", "basis", "band", "kind", "direction", "dataset", "prompt", "score", "refused"]


def baseline_refusal(refused: Any, threshold: float, split: str, dataset: str) -> dict[str, Any]:
    """The aligned model's refusal on the harmful selection prompts and whether there is refusal to ablate.

    There is when at least one prompt was refused and the rate is at least `threshold`.
    """
    flags = np.asarray(refused, bool)
    summary = rate_summary(flags, "refusal")
    return {**summary, "n": int(flags.size), "split": split, "dataset": dataset, "min_baseline_refusal": float(threshold),
            "refusal_to_ablate": bool(summary["refusal_count"] > 0 and summary["refusal_rate"] >= threshold)}


def no_refusal_note(baseline: Mapping[str, Any]) -> str:
    """The line the tables and report show for a family with no refusal to ablate."""
    return (f"no refusal to ablate: {baseline['refusal_count']}/{baseline['n']} harmful {baseline['split']} prompts "
            f"({baseline['dataset']}) refused, rate {baseline['refusal_rate']:.2f} (Wilson 95% {baseline['refusal_low']:.2f}-"
            f"{baseline['refusal_high']:.2f}) < causal.min_baseline_refusal {baseline['min_baseline_refusal']:g}; "
            "no direction selected")


def read_record(record_path: str) -> dict[str, Any]:
    with open(record_path) as handle:
        return json.load(handle)


def no_refusal_record(record_path: str) -> dict[str, Any] | None:
    """The selection record when it says there is no refusal to ablate, else None."""
    record = read_record(record_path)
    return record if record.get("status") == NO_REFUSAL else None


def write_no_refusal_selection(*, family: str, baseline: Mapping[str, Any], token_record: Mapping[str, Any],
                               n_blocks: int, validation: Mapping[str, Any], record_path: str,
                               direction_path: str, table_stem: str, seconds: float, version: int) -> None:
    """The selection job's outputs when nothing is selected: a record saying why, no direction, no candidates.

    No completion is kept: a compliant model's answers to harmful prompts are harmful text.
    """
    note = no_refusal_note(baseline)
    io.write_tensors(direction_path, {}, {"family": family, "status": NO_REFUSAL, "note": note, "stage_version": version})
    io.write_table(pd.DataFrame(columns=CANDIDATE_COLUMNS), table_stem,
                   title=f"Arditi candidates of {family}: none scored ({note})")
    io.write_json(record_path, {
        "family": family, "status": NO_REFUSAL, "note": note, "baseline_refusal": dict(baseline), "selected": None,
        "n_blocks": n_blocks, "refusal_check": dict(token_record), "n_candidates": 0, "n_surviving": 0, "candidates": [],
        "validation": dict(validation), "seconds": round(seconds, 2), "stage_version": version,
    })


def _rate_columns(record: Mapping[str, Any]) -> dict[str, Any]:
    baseline = record["baseline_refusal"]
    return {"baseline_split": baseline["split"], "baseline_n": baseline["n"], "baseline_rate": baseline["refusal_rate"],
            "baseline_low": baseline["refusal_low"], "baseline_high": baseline["refusal_high"]}


def write_no_refusal_arditi(*, record: Mapping[str, Any], table_stem: str, prompts_path: str, version: int) -> None:
    """One explicit row instead of the all-layer ablation table; the validation refusal rate it rests on."""
    family = record["family"]
    row = {"family": family, "condition": NO_REFUSAL, "draw": -1, **_rate_columns(record), "layer": math.nan,
           "position": math.nan, "note": record["note"], "stage_version": version}
    io.write_table(pd.DataFrame([row]), table_stem, title=f"Arditi all-layer ablation of {family}: {record['note']}")
    with io.atomic_path(prompts_path) as tmp:
        pd.DataFrame(columns=["family", "condition", "draw", "dataset", "prompt", "score", "refused"]).to_parquet(tmp, index=False)


def write_sweep_note(*, family: str, basis: str, status: str, note: str, extra: Mapping[str, Any], summary_stem: str,
                     prompts_path: str, record_path: str, version: int) -> None:
    """One explicit row instead of the sweep of one basis (no refusal to ablate, or no shift to take a basis from)."""
    row = {"family": family, "basis": basis, "condition": status, "band": "", "kind": status, "k": -1,
           "direction": -1, "draw": -1, **extra, "note": note, "stage_version": version}
    io.write_table(pd.DataFrame([row]), summary_stem, title=f"Ablation sweep of {family}, basis M_{basis}: {note}")
    with io.atomic_path(prompts_path) as tmp:
        pd.DataFrame(columns=SWEEP_PROMPT_COLUMNS).to_parquet(tmp, index=False)
    io.write_json(record_path, {"family": family, "basis": basis, "status": status, "note": note,
                                "n_conditions": 0, "stage_version": version})


def write_no_refusal_sweep(*, record: Mapping[str, Any], basis: str, summary_stem: str, prompts_path: str,
                           record_path: str, version: int) -> None:
    """The sweep of a family with no refusal to ablate: no model is loaded, nothing is measured."""
    write_sweep_note(family=record["family"], basis=basis, status=NO_REFUSAL, note=record["note"],
                     extra=_rate_columns(record), summary_stem=summary_stem, prompts_path=prompts_path,
                     record_path=record_path, version=version)


def no_shift_note(basis: str, ranks: Mapping[int, int]) -> str:
    """The line the tables show when M_basis is exactly zero at some band layers (no direction to ablate there)."""
    zero = sorted(layer for layer, rank in ranks.items() if rank == 0)
    return (f"no shift to ablate: M_{basis} is exactly zero at band layers {zero} (the aligned model differs from "
            "the base only in other blocks), so it has no singular directions there; no sweep run")


def write_no_abliterated(*, record: Mapping[str, Any], source: str, output_dir: str, version: int) -> None:
    """The abliterated-model directory with only a record that no model was made, and why."""
    with io.atomic_directory(output_dir) as tmp:
        io.write_json(Path(tmp) / ABLITERATION_RECORD, {
            "family": record["family"], "made": False, "status": NO_REFUSAL, "note": record["note"], "source": source,
            "baseline_refusal": record["baseline_refusal"], "stage_version": version})


def require_abliterated_model(path: str) -> None:
    """Refuse, naming why, an abliterated-model directory in which no model was made (call before loading it)."""
    record_path = Path(path) / ABLITERATION_RECORD
    if not record_path.is_file():
        return
    record = json.loads(record_path.read_text())
    if record.get("made", True) is False:
        raise ValueError(f"{path}: no abliterated model was made ({record.get('note', 'no direction selected')}); "
                         f"remove it from families.{record.get('family', '<family>')}.references")

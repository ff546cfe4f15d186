"""Determinism (issue 15, item 7): two fresh runs of the fast stages write identical tables, spectra and records.

The session's finished reduced run (prompts, selected samples, captures of two tiny families, spectra, direction
files, diagnosis tables) is one run; a second one of the same config in another directory is the other. Every
table (parquet by pandas equality, CSV and markdown byte for byte), spectrum and record JSON, and activation or
direction file (every tensor and its metadata) must agree; JSON records may differ only in timing fields, which
are named `seconds`, `*_seconds` or `retrieved_at` and which no table or spectrum carries. Marked `slow`: the
second run takes about a minute on two idle cores (the first is shared with the other finished-run tests).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from reduced_workflow import FAMILY_LAYERS, assert_same_output, family_targets, reduced_config, snakemake, write_config

pytestmark = pytest.mark.slow

TIMING_KEY = re.compile(r"^(seconds|elapsed|retrieved_at)$|_seconds$")
COMPARED = (".parquet", ".csv", ".md", ".json", ".safetensors")


@pytest.fixture(scope="module")
def second_run(reduced_models, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("second_run")
    write_config(workdir, reduced_config(reduced_models))
    snakemake(workdir, "--cores", "2", *family_targets(FAMILY_LAYERS))
    return workdir


def results(root: Path) -> list[Path]:
    return sorted(path.relative_to(root) for path in (root / "results").rglob("*") if path.suffix in COMPARED)


def without_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: without_timing(item) for key, item in value.items() if not TIMING_KEY.search(key)}
    if isinstance(value, list):
        return [without_timing(item) for item in value]
    return value


def timing_keys(value: Any, where: str = "") -> list[str]:
    if isinstance(value, dict):
        return [found for key, item in value.items()
                for found in ([f"{where}.{key}"] if TIMING_KEY.search(key) else timing_keys(item, f"{where}.{key}"))]
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in timing_keys(item, f"{where}[{index}]")]
    return []


def test_two_fresh_runs_write_identical_tables_spectra_and_records(finished_run, second_run):
    first, second = results(finished_run), results(second_run)
    assert first == second
    assert any(path.parts[1] == "tables" for path in first) and any("spectra" in path.parts for path in first)
    for relative in first:
        if relative.suffix == ".parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(second_run / relative), pd.read_parquet(finished_run / relative),
                                          check_exact=True, obj=str(relative))
        elif relative.suffix == ".json":
            want, got = (json.loads((root / relative).read_text()) for root in (finished_run, second_run))
            assert without_timing(got) == without_timing(want), relative
        else:
            assert_same_output(finished_run, second_run, relative)


def test_tables_and_spectra_carry_no_timing_fields(finished_run):
    tables = sorted((finished_run / "results" / "tables").glob("*.parquet"))
    spectra = sorted((finished_run / "results").glob("*/spectra/*/*/layer_*.json"))
    assert tables and spectra
    for path in tables:
        assert [column for column in pd.read_parquet(path).columns if TIMING_KEY.search(str(column))] == [], path
        header = path.with_suffix(".csv").read_text().splitlines()[0].split(",")
        assert [column for column in header if TIMING_KEY.search(column)] == [], path.with_suffix(".csv")
    for path in spectra:
        assert timing_keys(json.loads(path.read_text())) == [], path

"""Atomic, checked output: a failed write leaves nothing that could pass for a finished output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rankaudit import io


def test_failed_block_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_failed_directory_keeps_the_previous_one(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with io.atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with io.atomic_directory(target) as tmp:
            (tmp / "weights").write_text("v2-partial")
            raise RuntimeError("interrupted")
    assert (target / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_non_finite_activations_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "layer_0.safetensors"
    with pytest.raises(ValueError, match="1 non-finite values"):
        io.write_tensors(target, {"last": np.array([[1.0, np.nan]], dtype=np.float32)}, {"layer": 0})
    assert not target.exists()


def test_tensors_round_trip_with_typed_metadata(tmp_path: Path) -> None:
    target = tmp_path / "x.safetensors"
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    io.write_tensors(target, {"last": values}, {"layer": 3, "model": "m", "positions": ["last"]})
    tensors, meta = io.read_tensors(target)
    assert np.array_equal(tensors["last"], values)
    assert meta == {"layer": 3, "model": "m", "positions": ["last"]}


def test_markdown_cells_stay_on_one_row() -> None:
    text = io.markdown_table(pd.DataFrame({"a": ["x|y", "one\ntwo"], "b": [0.123456, 2]}))
    lines = text.strip().splitlines()
    assert len(lines) == 4
    assert lines[2] == "| x\\|y | 0.1235 |"
    assert lines[3] == "| one\\ntwo | 2 |"

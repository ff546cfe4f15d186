"""The selected direction among the audit's layers: |cos(u_1, r*)| beside |cos(u_1, r_l)| on planted unit vectors,
undefined cosines reported as such, layer 0 and zero u_1 left out of the means, and the paper script's bands."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rankaudit import io
from rankaudit.causal.directions import (
    abs_cosine,
    canonical_cosine_means,
    canonical_cosine_table,
    layer_convention_table,
    layer_cosine_rows,
    paper_script_band,
)
from rankaudit.causal.no_refusal import NO_REFUSAL

D = 8
HALF = 1 / math.sqrt(2)


def _e(*indices, scale=1.0):
    vector = np.zeros(D)
    vector[list(indices)] = scale
    return vector / np.linalg.norm(vector) if scale == 1.0 else vector


# per layer: (u_1 of M_template, u_1 of centered M_template, per-layer difference in means r_l); r* = e_0
PLANTED = {
    0: (_e(0), np.zeros(D), np.zeros(D)),          # embedding output: u_1 along r*, but never counted
    1: (_e(0, 1), _e(3), _e(1)),                   # 1/sqrt2 with r*, 1/sqrt2 with r_1; centered: 0 and 0
    2: (-_e(0), np.zeros(D), _e(0, scale=3.0)),    # sign does not matter; centered M is zero here
    3: (_e(4), _e(0, 3), _e(4, 5)),                # orthogonal to r*; centered 1/sqrt2 with r*
}


def _files(tmp_path):
    selected = tmp_path / "direction.safetensors"
    io.write_tensors(selected, {"direction": _e(0, scale=5.0), "unit": _e(0)}, {"family": "f", "layer": 2, "position": -1})
    layers = {}
    for layer, (top, centered, per_layer) in PLANTED.items():
        path = tmp_path / f"layer_{layer}.safetensors"
        io.write_tensors(path, {"refusal_direction": per_layer, "top_direction_template": top,
                                "top_direction_template_centered": centered}, {"layer": layer})
        layers[layer] = str(path)
    return {"f": str(selected)}, {"f": layers}


def test_cosines_with_the_selected_and_per_layer_directions_recover_the_planted_angles(tmp_path):
    selected, layers = _files(tmp_path)
    records = [{"family": "f", "status": "selected"}, {"family": "g", "status": NO_REFUSAL, "note": "no refusal to ablate: 0/6"}]
    table = canonical_cosine_table(records, selected, layers)
    plain = table[(table["family"] == "f") & ~table["centered"].astype(bool)].set_index("layer")
    centered = table[(table["family"] == "f") & table["centered"].astype(bool)].set_index("layer")
    np.testing.assert_allclose(plain["cos_selected"], [1.0, HALF, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(plain["cos_per_layer"], [np.nan, HALF, 1.0, HALF], atol=1e-12)
    np.testing.assert_allclose(centered["cos_selected"], [np.nan, 0.0, np.nan, HALF], atol=1e-12)
    assert (table.loc[table["family"] == "f", ["selected_layer", "selected_position"]] == [2, -1]).all().all()
    assert plain["in_mean"].tolist() == [False, True, True, True] and centered["in_mean"].tolist() == [False, True, False, True]
    assert "embedding output" in plain.loc[0, "note"] and "difference in means is zero" in plain.loc[0, "note"]
    assert "M is zero here" in centered.loc[2, "note"] and plain.loc[1, "note"] == ""
    assert table.loc[table["family"] == "g", "note"].tolist() == ["no refusal to ablate: 0/6"]

    means = canonical_cosine_means(table).set_index(["family", "centered"])
    row = means.loc[("f", False)]
    assert row["cos_selected_mean"] == pytest.approx((HALF + 1.0 + 0.0) / 3)  # layer 0's 1.0 is not counted
    assert row["cos_per_layer_mean"] == pytest.approx((HALF + 1.0 + HALF) / 3)
    assert (row["n_layers"], row["excluded_layers"], row["variant"]) == (3, "0", "template")
    row = means.loc[("f", True)]
    assert row["cos_selected_mean"] == pytest.approx(HALF / 2) and (row["n_layers"], row["excluded_layers"]) == (2, "0 2")
    assert means.reset_index().query("family == 'g'")["note"].tolist() == ["no refusal to ablate: 0/6"]


def test_a_direction_file_without_top_directions_is_named(tmp_path):
    selected, layers = _files(tmp_path)
    old = tmp_path / "old.safetensors"
    io.write_tensors(old, {"refusal_direction": _e(1)}, {"layer": 4})
    with pytest.raises(KeyError, match=r"old.safetensors: needs 'refusal_direction' and top_direction_<variant>"):
        canonical_cosine_table([{"family": "f", "status": "selected"}], selected, {"f": {**layers["f"], 4: str(old)}})
    assert math.isnan(abs_cosine(np.zeros(3), np.ones(3))) and abs_cosine(np.ones(2), -np.ones(2)) == pytest.approx(1.0)


def test_vectors_the_spectra_stage_certified_zero_give_no_cosine_even_with_round_off_left():
    """u_1 of a matrix that is zero up to float round-off is an arbitrary unit vector: its status decides, not its norm."""
    tensors = {"refusal_direction": 1e-14 * _e(0), "top_direction_did": _e(0), "top_direction_template": _e(0, 1)}
    meta = {"refusal_direction_status": "zero", "top_direction_status": {"top_direction_did": "zero", "top_direction_template": "ok"}}
    rows = {row["variant"]: row for row in layer_cosine_rows("f", 5, tensors, meta, _e(0), "layer_5")}
    assert math.isnan(rows["did"]["cos_selected"]) and not rows["did"]["in_mean"] and "M is zero" in rows["did"]["note"]
    assert rows["template"]["cos_selected"] == pytest.approx(HALF) and rows["template"]["in_mean"]
    assert (rows["did"]["top_status"], rows["template"]["top_status"]) == ("zero", "ok")
    meta["top_direction_status"]["top_direction_template"] = "rank_at_most_1"
    rows = {row["variant"]: row for row in layer_cosine_rows("f", 5, tensors, meta, _e(0), "layer_5")}
    assert rows["template"]["top_status"] == "rank_at_most_1" and "rank <= 1" in rows["template"]["note"]
    assert rows["template"]["cos_selected"] == pytest.approx(HALF) and rows["template"]["in_mean"]
    assert math.isnan(rows["template"]["cos_per_layer"]) and "difference in means is zero" in rows["template"]["note"]


def test_band_layers_of_the_paper_script_and_ours_in_one_convention():
    assert paper_script_band(32, 0.45, 0.70, 5) == [14, 16, 18, 20, 22]
    assert paper_script_band(32, 0.30, 0.85, 8) == [9, 11, 14, 16, 19, 21, 24, 27]
    assert paper_script_band(4, 0.45, 0.70, 5) == [1, 1, 1, 1, 2]  # duplicates kept, as the script ablates them
    bands = {"narrow": {"range": [0.45, 0.70], "count": 5}, "wide": {"range": [0.30, 0.85], "count": 8}}
    table = layer_convention_table([{"family": "big", "n_blocks": 32}, {"family": "tiny", "n_blocks": 4}], bands)
    rows = table.set_index(["family", "band"])
    assert rows.loc[("big", "narrow"), "layers"] == "14 16 18 20 22"
    assert rows.loc[("big", "narrow"), "paper_script_layers"] == "15 17 19 21 23"  # block outputs, one layer later
    assert rows.loc[("big", "wide"), "layers"] == "10 12 15 17 20 22 25 27"
    assert rows.loc[("big", "wide"), "paper_script_layers"] == "10 12 15 17 20 22 25 28"
    assert not rows.loc[("big", "narrow"), "same_layers"] and not rows.loc[("big", "wide"), "same_layers"]
    assert rows.loc[("tiny", "narrow"), "layers"] == rows.loc[("tiny", "narrow"), "paper_script_layers"] == "2 3"
    assert rows.loc[("tiny", "narrow"), "same_layers"]
    assert set(table["convention"]) == {"layer l = output of block l-1 (0 = embedding output) = input of block l"}
    assert isinstance(table, pd.DataFrame) and len(table) == 4

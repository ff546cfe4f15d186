"""The precision floor's arithmetic: operand norms bound round-off, floor rows, the flag and its merge."""

import numpy as np
import pandas as pd
import pytest
import torch

from rankaudit import matrices, precision, spectra

KEYS = ("a_chat", "a_raw", "b_chat", "b_raw")


def _cells(seed: int, n: int = 12, d: int = 40, shift: float = 1.0) -> dict[str, dict[str, np.ndarray]]:
    """Safety and control cells: a common large activation, format offsets and a small aligned shift."""
    rng = np.random.default_rng(seed)
    cells = {}
    for dataset, rows in (("safety", n), ("control", n + 4)):
        base = 20.0 * rng.standard_normal(d) + rng.standard_normal((rows, d))
        raw_offset = rng.standard_normal(d)
        aligned_shift = shift * rng.standard_normal((rows, 1)) * rng.standard_normal(d)
        cells[dataset] = {"b_chat": base, "b_raw": base + raw_offset, "a_chat": base + aligned_shift,
                          "a_raw": base + raw_offset + 0.5 * aligned_shift}
    return cells


def _rounded(cells, dtype):
    return {dataset: {key: torch.from_numpy(value).to(getattr(torch, dtype)).double().numpy() for key, value in by_key.items()}
            for dataset, by_key in cells.items()}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_operand_norms_bound_the_round_off_of_every_variant(dtype):
    exact = _cells(0)
    stored = _rounded(exact, dtype)
    norms = precision.operand_norms(stored["safety"], stored["control"])
    true_variants = precision.dataset_variants(exact["safety"], exact["control"])
    stored_variants = precision.dataset_variants(stored["safety"], stored["control"])
    u = spectra.unit_roundoff(dtype)
    for dataset, by_variant in stored_variants.items():
        assert set(by_variant) == set(norms[dataset])
        for variant, matrix in by_variant.items():
            error = np.linalg.norm(matrix - true_variants[dataset][variant], 2)
            assert 0 < error <= u * norms[dataset][variant], (dataset, variant)
    template = np.linalg.norm(stored["safety"]["a_chat"]) + np.linalg.norm(stored["safety"]["b_chat"])
    assert norms["safety"]["template"] == pytest.approx(template)
    weight = np.sqrt(12 / 16)
    control = np.linalg.norm(stored["control"]["a_chat"]) + np.linalg.norm(stored["control"]["b_chat"])
    assert norms["safety"]["did"] == pytest.approx(template + weight * control)
    assert "did" not in norms["control"]


def test_floor_rows_zero_for_identical_precisions_and_large_for_a_tiny_shift():
    exact = _cells(1, shift=1.0)
    same = precision.floor_rows(family="f", layer=3, run_cells=exact, float32_cells=exact, eps=[0.05, 0.01], run_dtype="float32")
    frame = precision.floor_frame(same)
    assert len(frame) == (6 + 5) * 2 * 2  # (safety + control variants) x centering x eps
    assert (frame["floor_energy"] == 0).all() and not frame["within_precision_floor"].any()
    assert (frame["rank_eps_run"] == frame["rank_eps_float32"]).all()

    # a shift of 0.01 on activations of size ~20, stored in bfloat16 (relative step 2^-8 ~ 0.004 x 20 = 0.08)
    small = _cells(1, shift=0.01)
    rows = precision.floor_frame(precision.floor_rows(family="f", layer=3, run_cells=_rounded(small, "bfloat16"),
                                                      float32_cells=small, eps=[0.05], run_dtype="bfloat16"))
    template = rows[(rows["variant"] == "template") & (rows["dataset"] == "safety") & ~rows["centered"]].iloc[0]
    exact_template = matrices.all_matrices(small["safety"], small["control"])["template"]
    assert template["shift_energy"] == pytest.approx(np.sum(exact_template**2))
    assert template["floor_fraction"] > 1 and template["within_precision_floor"]
    assert template["prompts"] == 12 and template["run_dtype"] == "bfloat16" and template["layer"] == 3
    assert template["rank_eps_float32"] == 1 and template["rank_eps_run"] > 1


def test_floor_rows_refuse_mismatched_cells():
    exact = _cells(2)
    shorter = {dataset: {key: value[:-1] for key, value in by_key.items()} for dataset, by_key in exact.items()}
    with pytest.raises(ValueError, match="layer 4: run and float32 cells differ in shape"):
        precision.floor_rows(family="f", layer=4, run_cells=exact, float32_cells=shorter, eps=[0.05], run_dtype="bfloat16")


def test_within_precision_floor_on_both_sides_of_each_clause():
    assert precision.within_precision_floor(0.05, 0.05, 3, 3)  # round-off fills the whole budget
    assert not precision.within_precision_floor(0.049, 0.05, 3, 3)
    assert precision.within_precision_floor(1e-6, 0.05, 4, 3)  # the precision moved the rank
    assert precision.within_precision_floor(np.inf, 0.05, 0, 0)  # nothing but round-off
    assert not precision.within_precision_floor(0.0, 0.05, 0, 0)  # exactly zero in both


def test_flag_ranks_marks_measured_rows_only():
    audit = pd.DataFrame({
        "family": ["bf", "bf", "bf", "f32"], "variant": ["template", "template", "did", "template"],
        "dataset": ["safety"] * 4, "layer": [1, 2, 1, 1], "centered": [False] * 4, "eps": [0.05] * 4,
        "rank_eps": [5, 2, 3, 1],
    })
    floor = pd.DataFrame({
        "family": ["bf", "bf", "bf"], "variant": ["template", "template", "did"], "dataset": ["safety"] * 3,
        "layer": [1, 2, 1], "centered": [False] * 3, "eps": [0.05] * 3, "floor_fraction": [0.3, 1e-5, 0.01],
        "within_precision_floor": [True, False, True],
    })
    flagged = precision.flag_ranks(audit, floor)
    assert flagged["within_precision_floor"].tolist() == [True, False, True, False]
    assert flagged["floor_fraction"].iloc[:3].tolist() == [0.3, 1e-5, 0.01] and np.isnan(flagged["floor_fraction"].iloc[3])
    assert flagged["rank_eps"].tolist() == audit["rank_eps"].tolist() and len(flagged) == len(audit)
    unmeasured = precision.flag_ranks(audit, None)
    assert not unmeasured["within_precision_floor"].any() and unmeasured["floor_fraction"].isna().all()
    with pytest.raises(KeyError, match="eps"):
        precision.flag_ranks(audit.drop(columns="eps"), floor)
    with pytest.raises(ValueError, match="more than one row"):
        precision.flag_ranks(audit, pd.concat([floor, floor]))


def test_floor_families_and_models():
    families = {
        "bf": {"base": "b16", "aligned": "a16"},
        "mixed": {"base": "b32", "aligned": "a16"},
        "f32": {"base": "b32", "aligned": "a32"},
    }
    dtypes = {"b16": "bfloat16", "a16": "bfloat16", "b32": "float32", "a32": "float32"}
    assert precision.floor_families(families, dtypes, 16) == ["bf", "mixed"]
    assert precision.float32_floor_models(families, dtypes, 16) == ["b16", "a16"]
    assert precision.floor_families(families, dtypes, 0) == []
    assert precision.floor_families({"f32": families["f32"]}, dtypes, 16) == []
    assert precision.float32_floor_models({"f32": families["f32"]}, dtypes, 16) == []

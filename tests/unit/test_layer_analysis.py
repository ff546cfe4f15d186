"""One layer job on planted cells: statuses of trivial matrices, null cosines, the sign-flip null, u_1 for H3."""

import json
from pathlib import Path

import numpy as np
import pytest

from rankaudit import io, matrices, nulls, plan
from rankaudit.stages.spectra import CELL_KEYS, analyse_layer

EPS = [0.05, 0.2]
CAPTURE_K = [1, 3]


def _run(tmp_path: Path, cells: dict[str, dict[str, np.ndarray]], layer: int, dtypes: dict | None = None) -> tuple[dict, dict, dict]:
    """Write the cells (float32 unless `dtypes[(dataset, key)]` says otherwise, None: unrecorded) and run the job."""
    paths = {}
    for dataset, by_key in cells.items():
        paths[dataset] = {}
        for key in CELL_KEYS:
            path = tmp_path / f"{dataset}_{key}.safetensors"
            dtype = (dtypes or {}).get((dataset, key), "float32")
            meta = {"model": key, "n_prompts": len(by_key[key]), **({} if dtype is None else {"dtype": dtype})}
            io.write_tensors(path, {"last": by_key[key].astype(np.float32)}, meta)
            paths[dataset][key] = str(path)
    outputs = {dataset: {variant: str(tmp_path / f"{dataset}_{variant}.json") for variant in variants}
               for dataset, variants in plan.VARIANTS_PER_DATASET.items()}
    direction_file = str(tmp_path / "directions.safetensors")
    analyse_layer(family="fam", layer=layer, cells=paths, outputs=outputs, direction_output=direction_file,
                  read_position="last", eps=EPS, capture_k=CAPTURE_K, noise_draws=3, seed=5, version=1)
    records = {(dataset, variant): json.loads(Path(path).read_text())
               for dataset, by_variant in outputs.items() for variant, path in by_variant.items()}
    tensors, meta = io.read_tensors(direction_file)
    return records, tensors, meta


def _embedding_layer_cells(rng: np.random.Generator, n_safety: int, n_control: int, d: int) -> dict:
    """Chat cells read one template token (same row for every prompt), raw cells read the prompts' own tokens."""
    template_aligned = 30 * rng.standard_normal(d)
    template_base = 30 * rng.standard_normal(d)
    cells = {}
    for dataset, n in (("safety", n_safety), ("control", n_control)):
        cells[dataset] = {
            "a_chat": np.tile(template_aligned, (n, 1)),
            "b_chat": np.tile(template_base, (n, 1)),
            "a_raw": 30 * rng.standard_normal((n, d)),
            "b_raw": 30 * rng.standard_normal((n, d)),
        }
    return cells


def test_embedding_layer_reports_rank_one_zero_and_undefined_cosines(tmp_path):
    rng = np.random.default_rng(0)
    cells = _embedding_layer_cells(rng, n_safety=7, n_control=5, d=24)
    records, tensors, meta = _run(tmp_path, cells, layer=0)

    template = records[("safety", "template")]
    assert template["uncentered"]["status"] == "rank_at_most_1"
    assert template["centered"]["status"] == "zero"
    assert template["centered"]["sign_flip_rank_eps"] == [None, None]
    assert min(template["uncentered"]["sign_flip_rank_eps"]) > 1  # flipped entries share no row direction
    for centering in ("uncentered", "centered"):
        assert records[("safety", "did")][centering]["status"] == "zero"
    assert records[("control", "template")]["uncentered"]["status"] == "rank_at_most_1"
    assert records[("safety", "naive")]["uncentered"]["status"] == "ok"  # raw tokens differ per prompt

    # r = mean_s A(chat) - mean_c A(chat) is zero, so every cosine with it and every capture fraction is null
    for record in records.values():
        assert record["arditi"]["cos_top_direction"] is None
        assert set(record["arditi"]["capture"].values()) == {None}
        assert record["arditi"]["status"] == "undefined"
        assert "refusal_direction" in record["arditi"]["zero_vectors"]
    assert records[("safety", "did")]["arditi"]["cos_top_mean"] is None
    assert records[("safety", "naive")]["arditi"]["cos_top_mean"] == pytest.approx(
        _abs_cos(_top_right(_matrix(cells, "naive")), _matrix(cells, "naive").mean(axis=0)), abs=1e-12)
    assert "NaN" not in (tmp_path / "safety_template.json").read_text()

    assert meta["refusal_direction_status"] == "zero"
    assert meta["top_direction_status"]["top_direction_template"] == "rank_at_most_1"
    assert meta["top_direction_status"]["top_direction_template_centered"] == "zero"
    assert meta["top_direction_status"]["top_direction_did"] == "zero"
    np.testing.assert_array_equal(tensors["top_direction_template_centered"], np.zeros(24))
    np.testing.assert_array_equal(tensors["top_direction_did"], np.zeros(24))
    shift = cells["safety"]["a_chat"][0].astype(np.float32).astype(np.float64) - cells["safety"]["b_chat"][0].astype(np.float32)
    assert _abs_cos(tensors["top_direction_template"], shift) == pytest.approx(1.0, abs=1e-12)


def test_generic_layer_writes_every_u1_and_the_sign_flip_null(tmp_path):
    rng = np.random.default_rng(1)
    n, d = 9, 40
    cells = {dataset: {key: rng.standard_normal((n, d)) for key in CELL_KEYS} for dataset in ("safety", "control")}
    cells["safety"]["a_chat"] += 2.0  # a refusal direction along the all-ones vector
    records, tensors, meta = _run(tmp_path, cells, layer=4)

    variants = plan.VARIANTS_PER_DATASET["safety"]
    expected_keys = {"refusal_direction"} | {f"top_direction_{v}{suffix}" for v in variants for suffix in ("", "_centered")}
    assert set(tensors) == expected_keys
    assert set(meta["top_direction_status"].values()) == {"ok"}
    refusal = _float32(cells, "safety", "a_chat").mean(axis=0) - _float32(cells, "control", "a_chat").mean(axis=0)
    np.testing.assert_allclose(tensors["refusal_direction"], refusal, atol=1e-12)
    for variant in variants:
        matrix = _matrix(cells, variant)
        for suffix, work in (("", matrix), ("_centered", matrix - matrix.mean(axis=0))):
            top = tensors[f"top_direction_{variant}{suffix}"]
            assert top.dtype == np.float64 and np.linalg.norm(top) == pytest.approx(1.0, abs=1e-12)
            assert _abs_cos(top, _top_right(work)) == pytest.approx(1.0, abs=1e-9)
        record = records[("safety", variant)]
        assert record["uncentered"]["status"] == record["centered"]["status"] == "ok"
        assert record["arditi"]["status"] == "ok"
        assert record["arditi"]["cos_top_direction"] == pytest.approx(_abs_cos(_top_right(matrix), refusal), abs=1e-9)
        for centering, work in (("uncentered", matrix), ("centered", matrix - matrix.mean(axis=0))):
            flips = nulls.sign_flip_ranks(work, EPS, draws=3, seed=5).mean(axis=0)
            assert record[centering]["sign_flip_rank_eps"] == pytest.approx(list(flips))
            assert record[centering]["sign_flip_rho_d"] == pytest.approx(list(flips / d))
    assert records[("safety", "template")]["uncentered"]["dtype"] == "float32"
    assert records[("safety", "template")]["sources"]["a_chat"]["dtype"] == "float32"
    assert records[("safety", "template")]["zero_test"]["activation_scale"] == pytest.approx(
        max(np.abs(_float32(cells, dataset, key)).max() for dataset in cells for key in CELL_KEYS))


def _float32(cells: dict, dataset: str, key: str) -> np.ndarray:
    return cells[dataset][key].astype(np.float32).astype(np.float64)


def _matrix(cells: dict, variant: str) -> np.ndarray:
    as_read = {dataset: {key: _float32(cells, dataset, key) for key in CELL_KEYS} for dataset in cells}
    return matrices.all_matrices(as_read["safety"], as_read["control"])[variant]


def _top_right(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.svd(matrix, full_matrices=False)[2][0]


def _abs_cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(abs(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def test_round_off_floor_follows_the_coarsest_cell_precision(tmp_path):
    rng = np.random.default_rng(2)
    cells = {dataset: {key: rng.standard_normal((6, 20)) for key in CELL_KEYS} for dataset in ("safety", "control")}
    records, _, _ = _run(tmp_path, cells, layer=3, dtypes={("control", "b_raw"): "bfloat16"})
    assert {record[centering]["dtype"] for record in records.values() for centering in ("uncentered", "centered")} == {"bfloat16"}
    with pytest.raises(KeyError, match=r"safety_a_raw\.safetensors: no 'dtype'"):
        _run(tmp_path, cells, layer=3, dtypes={("safety", "a_raw"): None})

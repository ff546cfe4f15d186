"""Sweep planning and ordering statistics (planted ground truth), and the causal jobs end to end on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rankaudit import matrices
from rankaudit.sweeps import (band_layers, basis_matrix, k_grid, monotonicity, numerical_rank, plan_conditions,
                              random_basis, spearman_ordering)


def test_bands_match_the_paper_fractions_and_deduplicate_small_models():
    assert band_layers(32, 0.45, 0.70, 5) == [14, 16, 18, 20, 22]
    assert band_layers(32, 0.30, 0.85, 8) == [10, 12, 15, 17, 20, 22, 25, 27]
    assert band_layers(4, 0.45, 0.70, 5) == [2, 3]
    assert band_layers(2, 0.0, 0.1, 3) == [1]
    with pytest.raises(ValueError, match="low <= high"):
        band_layers(10, 0.8, 0.2, 3)


def test_basis_matrices_are_the_named_variants():
    rng = np.random.default_rng(0)
    safety = {key: rng.standard_normal((6, 4)) for key in ("a_chat", "b_chat", "b_raw")}
    control = {key: rng.standard_normal((5, 4)) for key in ("a_chat", "b_chat")}
    np.testing.assert_array_equal(basis_matrix("template", safety), safety["a_chat"] - safety["b_chat"])
    np.testing.assert_array_equal(basis_matrix("naive", safety), safety["a_chat"] - safety["b_raw"])
    expected = matrices.did_matrix(safety["a_chat"] - safety["b_chat"], control["a_chat"] - control["b_chat"])
    np.testing.assert_array_equal(basis_matrix("did", safety, control), expected)
    with pytest.raises(KeyError, match="control"):
        basis_matrix("did", safety)
    with pytest.raises(ValueError, match="aligned"):
        basis_matrix("aligned", safety)


def test_k_grid_is_capped_by_rank_and_rank_is_numerical():
    assert k_grid([1, 3, 5, 10, 20, 50], 7) == [1, 3, 5, 7]
    assert k_grid([1, 3, 5, 10, 20, 50], 64) == [1, 3, 5, 10, 20, 50]
    planted = np.random.default_rng(1).standard_normal((30, 3)) @ np.random.default_rng(2).standard_normal((3, 20))
    assert numerical_rank(planted) == 3
    with pytest.raises(ValueError, match="rank 0"):
        k_grid([1], 0)


def test_random_bases_are_orthonormal_and_seeded():
    a = random_basis(16, 5, np.random.default_rng([0, 1]))
    np.testing.assert_allclose(a.T @ a, np.eye(5), atol=1e-12)
    np.testing.assert_array_equal(a, random_basis(16, 5, np.random.default_rng([0, 1])))
    assert not np.allclose(a, random_basis(16, 5, np.random.default_rng([0, 2])))


def test_conditions_cover_the_design():
    rng = np.random.default_rng(3)
    tops = {band: {layer: np.linalg.qr(rng.standard_normal((12, 6)))[0] for layer in layers}
            for band, layers in {"narrow": [2, 3], "wide": [1, 2, 3]}.items()}
    conditions = plan_conditions(tops, [1, 3, 6], n_single=5, random_draws=10, seed=0)
    assert len(conditions) == 1 + 2 * (3 + 5 + 3 * 10)
    assert len({c.name for c in conditions}) == len(conditions)
    by_name = {c.name: c for c in conditions}
    np.testing.assert_array_equal(by_name["wide/cumulative/k3"].bases[2], tops["wide"][2][:, :3])
    np.testing.assert_array_equal(by_name["narrow/single/u4"].bases[3], tops["narrow"][3][:, 3:4])
    draws = [by_name[f"narrow/random/k3_draw{d}"].bases[2] for d in range(10)]
    assert all(np.allclose(b.T @ b, np.eye(3)) for b in draws)
    assert not np.allclose(draws[0], draws[1])
    again = plan_conditions(tops, [1, 3, 6], n_single=5, random_draws=10, seed=0)
    np.testing.assert_array_equal(again[-1].bases[1], conditions[-1].bases[1])
    with pytest.raises(ValueError, match="exceeds"):
        plan_conditions(tops, [7], 2, 10, 0)


def test_spearman_ordering_recovers_planted_orders():
    rng = np.random.default_rng(4)
    decreasing = np.array([5.0, 4.0, 3.0, 2.0, 1.0]) + 0.01 * rng.standard_normal((40, 5))
    agree = spearman_ordering(decreasing, n_boot=200, seed=0)
    assert agree["spearman"] == pytest.approx(1.0) and agree["ci_low"] == pytest.approx(1.0)
    assert agree["causal_order"] == "u1 u2 u3 u4 u5"
    reverse = spearman_ordering(decreasing[:, ::-1], n_boot=200, seed=0)
    assert reverse["spearman"] == pytest.approx(-1.0)
    inert_second = np.tile([3.0, 0.0, 2.0, 1.5, 1.0], (10, 1))
    stats = spearman_ordering(inert_second, n_boot=100, seed=0)
    assert stats["causal_order"] == "u1 u3 u4 u5 u2" and stats["spearman"] == pytest.approx(0.4)
    assert np.isnan(spearman_ordering(np.zeros((8, 3)), 50, 0)["spearman"])


def test_monotonicity_flags_a_rise():
    assert monotonicity([1, 3, 5, 10], [0.9, 0.5, 0.7, 0.1], 0.05) == {"non_monotone": True, "max_rise": pytest.approx(0.2), "rises": "k3->k5: +0.200"}
    assert not monotonicity([1, 3, 5], [0.9, 0.92, 0.5], 0.05)["non_monotone"]


# --- the causal jobs on a tiny random model ------------------------------------------------------------------------

WORDS = ["bread", "poem", "sea", "lock", "bicycle", "language", "France", "novel", "chemical", "morning"]


def _prompt_table(path, kind):
    rows = [{"instruction": f"{kind} request {i}: tell me about the {WORDS[i % 10]} and {WORDS[(3 * i) % 10]}",
             "category": None, "source": "test", "split": ("train", "val", "test")[i % 3]} for i in range(18)]
    pd.DataFrame(rows).to_parquet(path, index=False)


@pytest.fixture(scope="module")
def tiny_workspace(tmp_path_factory, tiny_families, tiny_family_factory):
    """A tiny llama 'aligned' and 'base' pair, prompt tables and captured activations at every layer."""
    from rankaudit import io
    from rankaudit.capture import capture_residual_stream
    from rankaudit.formats import encode_prompts

    root = tmp_path_factory.mktemp("causal")
    aligned = tiny_families["llama"]
    base = tiny_family_factory("llama", seed=7)
    paths = {kind: root / f"{kind}.parquet" for kind in ("harmful", "harmless")}
    for kind, path in paths.items():
        _prompt_table(path, kind)
    n_blocks = aligned.model.config.num_hidden_layers
    files = {}
    for kind, path in paths.items():
        frame = pd.read_parquet(path)
        train = list(frame[frame["split"] == "train"]["instruction"])
        for role, family in (("a", aligned), ("b", base)):
            for fmt in ("chat", "raw"):
                encoded = encode_prompts(aligned.tokenizer, train, fmt)
                acts = capture_residual_stream(family.model, encoded.token_ids, list(range(n_blocks + 1)),
                                               post_instruction_len=encoded.post_instruction_len, pad_token_id=0)
                for layer, tensors in acts.items():
                    target = root / "acts" / f"{role}_{fmt}_{kind}_{layer}.safetensors"
                    io.write_tensors(target, tensors, {"layer": layer})
                    files[(role, fmt, kind, layer)] = str(target)
    section = {
        "seed": 0, "batch_size": 8, "row_batch_size": 64, "attn_implementation": "eager", "read_position": "last",
        "refusal_openers": ["I", "Sorry"], "min_refusal_token_coverage": 0.0, "min_baseline_refusal": 0.25,
        "judge": {"type": "keyword", "phrases": [" "]},
        "generation": {"max_new_tokens": 4},
        "selection": {"split": "val", "n": None, "max_layer_fraction": 0.8, "max_kl": 1e9, "min_induce": -1e9},
        "evaluation": {"split": "test", "n": None, "control_generation": True, "random_generation": True},
        "bands": {"narrow": {"range": [0.45, 0.70], "count": 5}},
        "k_grid": [1, 3, 50], "n_single": 3, "random_draws": 10, "abliteration_tolerance": 1e-4,
    }
    model = {"location": str(aligned.path), "dtype": "float32", "device": "cpu", "attn_implementation": "eager"}
    return {"root": root, "paths": paths, "files": files, "n_blocks": n_blocks, "section": section, "model": model}


def test_causal_jobs_run_on_a_tiny_model(tiny_workspace):
    from rankaudit.stages import causal, causal_report

    ws, root = tiny_workspace, tiny_workspace["root"]
    files, n_blocks = ws["files"], ws["n_blocks"]
    common = {"family": "tiny", "model": ws["model"], "section": ws["section"], "system_prompt": "default", "version": 1, "threads": 1}
    causal.run_selection(
        **common, activations={l: {"harmful": files[("a", "chat", "harmful", l)], "harmless": files[("a", "chat", "harmless", l)]}
                               for l in range(n_blocks)},
        harmful_path=str(ws["paths"]["harmful"]), harmless_path=str(ws["paths"]["harmless"]),
        record_path=str(root / "selection.json"), direction_path=str(root / "direction.safetensors"),
        table_stem=str(root / "candidates"))
    record = json.loads((root / "selection.json").read_text())
    candidates = pd.read_parquet(root / "candidates.parquet")
    n_positions = len(candidates) // n_blocks
    assert len(candidates) == record["n_candidates"] == n_blocks * n_positions
    assert set(candidates["position"]) == set(range(-n_positions, 0)) and set(candidates["layer"]) == set(range(n_blocks))
    assert candidates["selected"].sum() == 1
    assert (candidates[candidates["layer"] >= int(0.8 * n_blocks)]["discarded"] != "").all()
    chosen = candidates[candidates["selected"]].iloc[0]
    survivors = candidates[candidates["discarded"] == ""]
    assert chosen["bypass"] == survivors["bypass"].min()

    selection = {"selection_record": str(root / "selection.json"), "direction_path": str(root / "direction.safetensors"),
                 "harmful_path": str(ws["paths"]["harmful"]), "control_path": str(ws["paths"]["harmless"])}
    causal.run_arditi(**common, **selection, table_stem=str(root / "arditi"), prompts_path=str(root / "arditi_prompts.parquet"))
    arditi = pd.read_parquet(root / "arditi.parquet")
    assert list(arditi["condition"].value_counts().sort_index()) == [1, 10, 1, 1]
    assert abs(arditi.loc[arditi["condition"] == "baseline", "control_kl_mean"].iloc[0]) < 1e-9  # KL from the unablated forward
    assert arditi["judged"].all() and arditi["refusal_count"].notna().all()

    cells = {l: {"safety": {"a_chat": files[("a", "chat", "harmful", l)], "b_chat": files[("b", "chat", "harmful", l)]},
                 "control": {"a_chat": files[("a", "chat", "harmless", l)], "b_chat": files[("b", "chat", "harmless", l)]}}
             for l in range(n_blocks + 1)}
    causal.run_sweep(**common, **selection, basis="did", cells=cells, summary_stem=str(root / "sweep_did"),
                     prompts_path=str(root / "sweep_did_prompts.parquet"), record_path=str(root / "sweep_did.json"))
    sweep = pd.read_parquet(root / "sweep_did.parquet")
    sweep_record = json.loads((root / "sweep_did.json").read_text())
    assert sweep_record["k_grid"] == [1, 3, 6]  # 6 training prompts: the DiD matrix has rank 6
    assert len(sweep) == 1 + 3 + 3 + 3 * 10
    per_prompt = pd.read_parquet(root / "sweep_did_prompts.parquet")
    assert len(per_prompt) == len(sweep) * 12
    assert sweep["judged"].all() and abs(sweep.loc[sweep["kind"] == "baseline", "control_kl_mean"].iloc[0]) < 1e-9

    scored_only = {**ws["section"], "evaluation": {**ws["section"]["evaluation"], "random_generation": False}}
    causal.run_sweep(**{**common, "section": scored_only}, **selection, basis="template", cells=cells,
                     summary_stem=str(root / "sweep_template"), prompts_path=str(root / "sweep_template_prompts.parquet"),
                     record_path=str(root / "sweep_template.json"))
    template = pd.read_parquet(root / "sweep_template.parquet")
    random_rows = template["kind"] == "random"
    assert (template["judged"] == ~random_rows).all()
    assert template.loc[random_rows, "refusal_rate"].isna().all() and template.loc[~random_rows, "refusal_rate"].notna().all()
    assert template["score_mean"].notna().all() and template["control_kl_mean"].notna().all()
    template_prompts = pd.read_parquet(root / "sweep_template_prompts.parquet")
    assert template_prompts.loc[template_prompts["kind"] == "random", "refused"].isna().all()
    assert template_prompts.loc[template_prompts["kind"] != "random", "refused"].notna().all()
    scored_k3 = causal_report.k3_table(template, "narrow", 3)
    assert "random_score_mean" in scored_k3 and not any(column.startswith("random_rate") for column in scored_k3)

    causal.write_abliterated(family="tiny", model=ws["model"], selection_record=str(root / "selection.json"),
                             direction_path=str(root / "direction.safetensors"),
                             output_dir=str(root / "abliterated"), check_prompts_path=str(ws["paths"]["harmful"]),
                             section=ws["section"], system_prompt="default", version=1, threads=1)
    check = json.loads((root / "abliterated" / "abliteration.json").read_text())
    assert check["max_relative_difference_vs_hooks"] < 1e-5 and check["max_relative_projection_on_direction"] < 1e-5

    outputs = {name: str(root / "tables" / name) for name in ("causal_selection", "causal_arditi", "causal_k3_narrow",
                                                               "causal_per_direction", "causal_k_sweep", "causal_ordering")}
    causal_report.write_causal_tables(sweeps=[str(root / "sweep_did.parquet")], prompt_files=[str(root / "sweep_did_prompts.parquet")],
                                      arditi=[str(root / "arditi.parquet")], selections=[str(root / "selection.json")], outputs=outputs,
                                      settings={"effect_metric": "score", "bootstrap": 100, "monotone_tolerance": 0.05,
                                                "inert_tolerance": 0.1, "headline_band": "narrow", "headline_k": 3, "seed": 0})
    k3 = pd.read_parquet(root / "tables" / "causal_k3_narrow.parquet")
    assert len(k3) == 1 and k3["random_draws"].iloc[0] == 10
    random_k3 = sweep[(sweep["kind"] == "random") & (sweep["band"] == "narrow") & (sweep["k"] == 3)]
    assert k3["random_rate_mean"].iloc[0] == pytest.approx(random_k3["refusal_rate"].mean())
    assert k3["random_score_mean"].iloc[0] == pytest.approx(random_k3["score_mean"].mean())
    assert len(pd.read_parquet(root / "tables" / "causal_ordering.parquet")) == 1
    figures = {name: str(root / f"{name}.png") for name in ("refusal_vs_k", "per_direction", "selection")}
    causal_report.family_figures(family="tiny", sweeps=[str(root / "sweep_did.parquet"), str(root / "sweep_template.parquet")], candidates=str(root / "candidates.parquet"), outputs=figures)
    assert all((root / f"{name}.png").stat().st_size > 1000 for name in figures)

"""Sweep planning and ordering statistics (planted ground truth), and the causal jobs end to end on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rankaudit.sweeps import band_layers, basis_matrix, basis_rank, k_grid, monotonicity, plan_conditions, random_basis, spearman_ordering


def test_bands_match_the_paper_fractions_and_deduplicate_small_models():
    assert band_layers(32, 0.45, 0.70, 5) == [14, 16, 18, 20, 22]
    assert band_layers(32, 0.30, 0.85, 8) == [10, 12, 15, 17, 20, 22, 25, 27]
    assert band_layers(4, 0.45, 0.70, 5) == [2, 3]
    assert band_layers(2, 0.0, 0.1, 3) == [1]
    with pytest.raises(ValueError, match="low <= high"):
        band_layers(10, 0.8, 0.2, 3)


# Hand-built cells whose M_DiD is known exactly: the safety template rows are a planted rank-2 matrix PLANTED (singular
# values 4 and 1, right singular vectors e_1 and e_4) plus a shift SHARED by every prompt; the control template rows
# are SHARED plus offsets that sum to zero, so their mean row is SHARED and M_DiD = PLANTED.
PLANTED = np.array([[0, 2, 0, 0, 0.5, 0], [0, 2, 0, 0, -0.5, 0], [0, -2, 0, 0, 0.5, 0], [0, -2, 0, 0, -0.5, 0]], float)
SHARED = np.array([0.5, -1.0, 0.0, 2.0, 0.0, 1.0])
CONTROL_OFFSETS = np.array([[1, 0, 0, -2, 0, 0], [-1, 3, 0, 0, 0, 1], [0, -3, 0, 2, 0, -1]], float)


def _hand_cells():
    b_safety = np.arange(24, dtype=float).reshape(4, 6) % 5
    b_raw = b_safety[::-1] * 2.0
    b_control = np.arange(18, dtype=float).reshape(3, 6) % 7
    safety = {"a_chat": b_safety + PLANTED + SHARED, "b_chat": b_safety, "b_raw": b_raw}
    control = {"a_chat": b_control + SHARED + CONTROL_OFFSETS, "b_chat": b_control}
    return safety, control


def test_basis_matrices_are_the_named_variants():
    safety, control = _hand_cells()
    np.testing.assert_allclose(basis_matrix("template", safety), PLANTED + SHARED, atol=1e-12)
    np.testing.assert_allclose(basis_matrix("naive", safety), safety["b_chat"] + PLANTED + SHARED - safety["b_raw"], atol=1e-12)
    np.testing.assert_allclose(basis_matrix("did", safety, control), PLANTED, atol=1e-12)
    with pytest.raises(KeyError, match="control"):
        basis_matrix("did", safety)
    with pytest.raises(ValueError, match="aligned"):
        basis_matrix("aligned", safety)


def test_did_sweep_basis_is_the_plain_svd_of_the_hand_built_matrix():
    from rankaudit.causal.sweep_plan import sweep_bases

    safety, control = _hand_cells()
    _, singular, vt = np.linalg.svd(PLANTED)
    np.testing.assert_allclose(singular, [4, 1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(np.abs(vt[:2]), np.eye(6)[[1, 4]], atol=1e-12)
    did = basis_matrix("did", safety, control)
    assert basis_rank(did) == 2
    section = {"k_grid": [1, 3], "n_single": 2, "read_position": "last"}
    tops, ks, record = sweep_bases({3: did}, {3: 2}, {"narrow": [3]}, section)
    assert ks == [1, 2] and record["k_max"] == 2
    basis = tops["narrow"][3]
    assert basis.shape == (6, 2)
    np.testing.assert_allclose(np.abs(basis.T @ vt[:2].T), np.eye(2), atol=1e-10)  # u_j = +-v_j, in SVD order
    np.testing.assert_allclose(np.abs(basis), np.eye(6)[:, [1, 4]], atol=1e-10)


def test_k_grid_is_capped_by_rank_and_rank_is_numerical():
    assert k_grid([1, 3, 5, 10, 20, 50], 7) == [1, 3, 5, 7]
    assert k_grid([1, 3, 5, 10, 20, 50], 64) == [1, 3, 5, 10, 20, 50]
    planted = np.random.default_rng(1).standard_normal((30, 3)) @ np.random.default_rng(2).standard_normal((3, 20))
    assert basis_rank(planted) == 3
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
    expected = {"non_monotone": True, "max_rise": pytest.approx(0.2), "rises": "k3->k5: +0.200"}
    assert monotonicity([1, 3, 5, 10], [0.9, 0.5, 0.7, 0.1], 0.05) == expected
    assert not monotonicity([1, 3, 5], [0.9, 0.92, 0.5], 0.05)["non_monotone"]


# --- the causal jobs on a tiny model trained to refuse --------------------------------------------------------------
# The aligned model is a tiny random Llama trained here for a few steps to answer REFUSAL to "harmful request ..."
# prompts and COMPLIANCE to "harmless request ..." ones, so that the project's keyword judge (default phrases) has
# real refusals to count. Every number checked below is recomputed in the test from an independent forward: one
# prompt at a time, no padding, no KV cache, with hooks written here (not rankaudit's interventions).

WORDS = ["bread", "poem", "sea", "lock", "bicycle", "language", "France", "novel", "chemical", "morning"]
REFUSAL, COMPLIANCE = "I cannot help.", "Sure, here it is."
NEW_TOKENS = 6  # "I cannot" is 6 tokens of the tiny tokenizer
NARROW_LAYERS = [1, 2]  # rint(linspace(0.45 * 3, 0.70 * 3, 5)) = 1, 2, 2, 2, 2 for the 3-block model


COMPLIED_HARMFUL = (14, 17)  # held-out harmful rows worded like harmless ones: the trained model does not refuse them


def _instructions(kind):
    """18 prompts; rows i % 3 == 0, 1, 2 are the train, val and test splits."""
    def word(i):
        return "harmless" if kind == "harmful" and i in COMPLIED_HARMFUL else kind
    return [f"{word(i)} request {i}: tell me about the {WORDS[i % 10]} and {WORDS[(3 * i) % 10]}" for i in range(18)]


def _prompt_table(path, kind):
    rows = [{"instruction": text, "category": None, "source": "test", "split": ("train", "val", "test")[i % 3]}
            for i, text in enumerate(_instructions(kind))]
    pd.DataFrame(rows).to_parquet(path, index=False)


def _split(kind, split):
    return [text for i, text in enumerate(_instructions(kind)) if ("train", "val", "test")[i % 3] == split]


def _train_to_refuse(family, steps=40):
    """Teach the tiny model REFUSAL after harmful train/val prompts and COMPLIANCE after harmless ones; save it."""
    import torch

    from rankaudit.formats import encode_prompts

    tokenizer, model = family.tokenizer, family.model
    examples = [(text, answer) for kind, answer in (("harmful", REFUSAL), ("harmless", COMPLIANCE))
                for split in ("train", "val") for text in _split(kind, split)]
    prompts = encode_prompts(tokenizer, [text for text, _ in examples], "chat").token_ids
    sequences = [(list(ids), tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
                 for ids, (_, answer) in zip(prompts, examples)]
    width = max(len(ids) + len(answer) for ids, answer in sequences)
    inputs = torch.full((len(sequences), width), tokenizer.pad_token_id)
    labels = torch.full((len(sequences), width), -100)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (ids, answer) in enumerate(sequences):
        inputs[row, :len(ids) + len(answer)] = torch.tensor(ids + answer)
        labels[row, len(ids):len(ids) + len(answer)] = torch.tensor(answer)
        mask[row, :len(ids) + len(answer)] = 1
    torch.manual_seed(0)
    model.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(steps):
        loss = model(input_ids=inputs, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.requires_grad_(False)
    model.save_pretrained(family.path)
    return float(loss.detach())


@pytest.fixture(scope="module")
def tiny_workspace(tmp_path_factory, tiny_family_factory):
    """A tiny llama 'aligned' (trained to refuse) and 'base' pair, prompt tables and activations at every layer."""
    from rankaudit import io
    from rankaudit.capture import capture_residual_stream
    from rankaudit.formats import encode_prompts

    root = tmp_path_factory.mktemp("causal")
    aligned = tiny_family_factory("llama", seed=0)
    assert _train_to_refuse(aligned) < 0.1
    base = tiny_family_factory("llama", seed=7)
    paths = {kind: root / f"{kind}.parquet" for kind in ("harmful", "harmless")}
    for kind, path in paths.items():
        _prompt_table(path, kind)
    n_blocks = aligned.model.config.num_hidden_layers
    files = {}
    for kind in paths:
        for role, family in (("a", aligned), ("b", base)):
            for fmt in ("chat", "raw"):
                encoded = encode_prompts(aligned.tokenizer, _split(kind, "train"), fmt)
                acts = capture_residual_stream(family.model, encoded.token_ids, list(range(n_blocks + 1)),
                                               post_instruction_len=encoded.post_instruction_len, pad_token_id=0)
                for layer, tensors in acts.items():
                    target = root / "acts" / f"{role}_{fmt}_{kind}_{layer}.safetensors"
                    io.write_tensors(target, tensors, {"layer": layer})
                    files[(role, fmt, kind, layer)] = str(target)
    section = {
        "seed": 0, "batch_size": 8, "row_batch_size": 64, "attn_implementation": "eager", "read_position": "last",
        "refusal_openers": ["I", "Sorry"], "min_refusal_token_coverage": 0.0, "min_baseline_refusal": 0.25,
        "judge": {"type": "keyword"},
        "generation": {"max_new_tokens": NEW_TOKENS},
        "selection": {"split": "val", "n": None, "max_layer_fraction": 0.8, "max_kl": 1e9, "min_induce": -1e9,
                      "filter_by_refusal_score": False, "min_prompts_after_filter": 1},
        "evaluation": {"split": "test", "n": None, "control_generation": True, "random_generation": True},
        "bands": {"narrow": {"range": [0.45, 0.70], "count": 5}},
        "k_grid": [1, 3, 50], "n_single": 3, "random_draws": 10, "abliteration_tolerance": 1e-4,
    }
    model = {"location": str(aligned.path), "dtype": "float32", "device": "cpu", "attn_implementation": "eager"}
    return {"root": root, "paths": paths, "files": files, "n_blocks": n_blocks, "section": section, "model": model,
            "aligned": aligned}


@pytest.fixture(scope="module")
def causal_outputs(tiny_workspace):
    """Selection, Arditi ablation, the DiD and template sweeps, the abliterated model and the causal tables."""
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
    selection = {"selection_record": str(root / "selection.json"), "direction_path": str(root / "direction.safetensors"),
                 "harmful_path": str(ws["paths"]["harmful"]), "control_path": str(ws["paths"]["harmless"])}
    causal.run_arditi(**common, **selection, table_stem=str(root / "arditi"), prompts_path=str(root / "arditi_prompts.parquet"))
    cells = {l: {"safety": {"a_chat": files[("a", "chat", "harmful", l)], "b_chat": files[("b", "chat", "harmful", l)]},
                 "control": {"a_chat": files[("a", "chat", "harmless", l)], "b_chat": files[("b", "chat", "harmless", l)]}}
             for l in range(n_blocks + 1)}
    causal.run_sweep(**common, **selection, basis="did", cells=cells, summary_stem=str(root / "sweep_did"),
                     prompts_path=str(root / "sweep_did_prompts.parquet"), record_path=str(root / "sweep_did.json"))
    scored_only = {**ws["section"], "evaluation": {**ws["section"]["evaluation"], "random_generation": False}}
    causal.run_sweep(**{**common, "section": scored_only}, **selection, basis="template", cells=cells,
                     summary_stem=str(root / "sweep_template"), prompts_path=str(root / "sweep_template_prompts.parquet"),
                     record_path=str(root / "sweep_template.json"))
    causal.write_abliterated(family="tiny", model=ws["model"], selection_record=str(root / "selection.json"),
                             direction_path=str(root / "direction.safetensors"),
                             output_dir=str(root / "abliterated"), check_prompts_path=str(ws["paths"]["harmful"]),
                             section=ws["section"], system_prompt="default", version=1, threads=1)
    outputs = {name: str(root / "tables" / name) for name in ("causal_selection", "causal_arditi", "causal_k3_narrow",
                                                               "causal_per_direction", "causal_k_sweep", "causal_ordering")}
    causal_report.write_causal_tables(sweeps=[str(root / "sweep_did.parquet")], prompt_files=[str(root / "sweep_did_prompts.parquet")],
                                      arditi=[str(root / "arditi.parquet")], selections=[str(root / "selection.json")], outputs=outputs,
                                      settings={"effect_metric": "score", "bootstrap": 100, "monotone_tolerance": 0.05,
                                                "inert_tolerance": 0.1, "headline_band": "narrow", "headline_k": 3, "seed": 0})
    figures = {name: str(root / f"{name}.png") for name in ("refusal_vs_k", "per_direction", "selection")}
    causal_report.family_figures(family="tiny", sweeps=[str(root / "sweep_did.parquet"), str(root / "sweep_template.parquet")],
                                 candidates=str(root / "candidates.parquet"), outputs=figures)
    return root


def test_causal_jobs_write_the_planned_tables(tiny_workspace, causal_outputs):
    from rankaudit.causal import tables

    root, n_blocks = causal_outputs, tiny_workspace["n_blocks"]
    record = json.loads((root / "selection.json").read_text())
    assert record["status"] == "selected" and record["baseline_refusal"]["refusal_count"] == 6  # all 6 val prompts
    candidates = pd.read_parquet(root / "candidates.parquet")
    n_positions = len(candidates) // n_blocks
    assert len(candidates) == record["n_candidates"] == n_blocks * n_positions
    assert set(candidates["position"]) == set(range(-n_positions, 0)) and set(candidates["layer"]) == set(range(n_blocks))
    assert candidates["selected"].sum() == 1
    assert (candidates[candidates["layer"] >= int(0.8 * n_blocks)]["discarded"] != "").all()
    chosen = candidates[candidates["selected"]].iloc[0]
    survivors = candidates[candidates["discarded"] == ""]
    assert chosen["bypass"] == survivors["bypass"].min()

    arditi = pd.read_parquet(root / "arditi.parquet")
    assert list(arditi["condition"].value_counts().sort_index()) == [1, 10, 1, 1]
    assert arditi["judged"].all() and arditi["refusal_count"].notna().all()

    sweep = pd.read_parquet(root / "sweep_did.parquet")
    assert json.loads((root / "sweep_did.json").read_text())["k_grid"] == [1, 3, 6]  # 6 training prompts: rank 6
    assert len(sweep) == 1 + 3 + 3 + 3 * 10 and sweep["judged"].all()
    assert len(pd.read_parquet(root / "sweep_did_prompts.parquet")) == len(sweep) * 12

    template = pd.read_parquet(root / "sweep_template.parquet")
    random_rows = template["kind"] == "random"
    assert (template["judged"] == ~random_rows).all()
    assert template.loc[random_rows, "refusal_rate"].isna().all() and template.loc[~random_rows, "refusal_rate"].notna().all()
    assert template["score_mean"].notna().all() and template["control_kl_mean"].notna().all()
    template_prompts = pd.read_parquet(root / "sweep_template_prompts.parquet")
    assert template_prompts.loc[template_prompts["kind"] == "random", "refused"].isna().all()
    assert template_prompts.loc[template_prompts["kind"] != "random", "refused"].notna().all()
    scored_k3 = tables.k3_table(template, "narrow", 3)
    assert "random_score_mean" in scored_k3 and not any(column.startswith("random_rate") for column in scored_k3)

    k3 = pd.read_parquet(root / "tables" / "causal_k3_narrow.parquet")
    assert len(k3) == 1 and k3["random_draws"].iloc[0] == 10
    random_k3 = sweep[(sweep["kind"] == "random") & (sweep["band"] == "narrow") & (sweep["k"] == 3)]
    assert k3["random_rate_mean"].iloc[0] == pytest.approx(random_k3["refusal_rate"].mean())
    assert k3["random_score_mean"].iloc[0] == pytest.approx(random_k3["score_mean"].mean())
    assert len(pd.read_parquet(root / "tables" / "causal_ordering.parquet")) == 1
    assert all((root / f"{name}.png").stat().st_size > 1000 for name in ("refusal_vs_k", "per_direction", "selection"))


# --- independent references --------------------------------------------------------------------------------------

def _project_out(hidden, basis):
    """h - U U^T h in float32 (U: d x k orthonormal, float64 numpy)."""
    import torch

    u = torch.as_tensor(basis, dtype=torch.float32)
    return hidden - (hidden @ u) @ u.T


def _replace_first(output, transform):
    if isinstance(output, tuple):
        return (transform(output[0]), *output[1:])
    return transform(output)


def _band_hooks(model, bases):
    """Forward hooks projecting U_l out of the residual stream at the output of block l - 1, for each layer l."""
    return [model.model.layers[layer - 1].register_forward_hook(
        lambda module, args, output, basis=basis: _replace_first(output, lambda h: _project_out(h, basis)))
        for layer, basis in bases.items()]


def _direction_hooks(model, direction):
    """Arditi's ablation of r, written for Llama: the embedding and every attention and MLP write lose their r part."""
    r = (direction / np.linalg.norm(direction))[:, None]
    hook = lambda module, args, output: _replace_first(output, lambda h: _project_out(h, r))  # noqa: E731
    modules = [model.model.embed_tokens] + [sub for block in model.model.layers for sub in (block.self_attn, block.mlp)]
    return [module.register_forward_hook(hook) for module in modules]


class _Hooked:
    def __init__(self, handles):
        self.handles = handles

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def _forward(model, ids):
    """(last-position log-softmax in float64, hidden states at the last position) of one unpadded prompt."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([list(ids)]), output_hidden_states=True, use_cache=False)
    log_probs = torch.log_softmax(out.logits[0, -1].to(torch.float64), dim=-1).numpy()
    return log_probs, [h[0, -1].to(torch.float64).numpy() for h in out.hidden_states]


def _greedy(model, tokenizer, ids):
    """Greedy continuation recomputed from scratch at each step (no cache, no padding), stopping at EOS."""
    import torch

    new = []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            token = int(model(input_ids=torch.tensor([list(ids) + new]), use_cache=False).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True)


def _log_odds(log_probs, token_ids):
    p = sum(np.exp(log_probs[i]) for i in token_ids)
    return np.log(p + 1e-8) - np.log(1 - p + 1e-8)


def _kl(reference, other):
    return float(np.sum(np.exp(reference) * (reference - other)))


def _test_prompts(tiny_workspace):
    from rankaudit.formats import encode_prompts

    tokenizer = tiny_workspace["aligned"].tokenizer
    return {kind: encode_prompts(tokenizer, _split(kind, "test"), "chat", system_prompt="default").token_ids
            for kind in ("harmful", "harmless")}


def _did_bases(tiny_workspace, k):
    """Top-k right singular vectors of M_DiD at each narrow layer, from the activation files and a plain numpy SVD."""
    from rankaudit import io

    files = tiny_workspace["files"]
    read = lambda role, kind, layer: io.read_tensors(files[(role, "chat", kind, layer)])[0]["last"].astype(np.float64)  # noqa: E731
    bases = {}
    for layer in NARROW_LAYERS:
        safety = read("a", "harmful", layer) - read("b", "harmful", layer)
        control = read("a", "harmless", layer) - read("b", "harmless", layer)
        _, singular, vt = np.linalg.svd(safety - control.mean(axis=0))
        assert singular[k - 1] > 1.05 * singular[k], "the top-k subspace is ill-defined (near-equal singular values)"
        bases[layer] = vt[:k].T
    return bases


@pytest.fixture(scope="module")
def reference(tiny_workspace, causal_outputs):
    """Everything measured here on the saved aligned model: per condition, the harmful scores and greedy completions
    and the control log-probs, for the baseline, the DiD narrow k=1 ablation and Arditi's selected-direction ablation."""
    from rankaudit import io
    from rankaudit.models import load_model
    from rankaudit.organisms.refusal_judge import keyword_refusal

    tokenizer = tiny_workspace["aligned"].tokenizer
    model = load_model(tiny_workspace["model"]["location"], dtype="float32", attn_implementation="eager")
    prompts = _test_prompts(tiny_workspace)
    refusal_ids = sorted({tokenizer(opener, add_special_tokens=False)["input_ids"][0] for opener in ("I", "Sorry")})
    direction = io.read_tensors(causal_outputs / "direction.safetensors")[0]["direction"]
    hooks = {"baseline": lambda: [], "narrow/cumulative/k1": lambda: _band_hooks(model, _did_bases(tiny_workspace, 1)),
             "selected_ablation": lambda: _direction_hooks(model, direction)}
    measured = {}
    for condition, make in hooks.items():
        with _Hooked(make()):
            harmful = [_forward(model, ids)[0] for ids in prompts["harmful"]]
            completions = {kind: [_greedy(model, tokenizer, ids) for ids in prompts[kind]] for kind in prompts}
            control = np.array([_forward(model, ids)[0] for ids in prompts["harmless"]])
        measured[condition] = {
            "score": np.array([_log_odds(lp, refusal_ids) for lp in harmful]), "control": control,
            "completions": completions,
            "refused": {kind: sum(keyword_refusal(text) for text in texts) for kind, texts in completions.items()}}
    return measured


def test_control_kl_is_measured_against_an_unablated_forward_computed_here(causal_outputs, reference):
    sweep = pd.read_parquet(causal_outputs / "sweep_did.parquet").set_index("condition")
    arditi = pd.read_parquet(causal_outputs / "arditi.parquet").set_index("condition")
    unablated = reference["baseline"]["control"]
    for table, condition in ((sweep, "baseline"), (sweep, "narrow/cumulative/k1"), (arditi, "selected_ablation")):
        kl = np.array([_kl(ref, other) for ref, other in zip(unablated, reference[condition]["control"])])
        row = table.loc[condition]
        assert row["control_kl_mean"] == pytest.approx(kl.mean(), rel=1e-3, abs=1e-6), condition
        assert row["control_kl_max"] == pytest.approx(kl.max(), rel=1e-3, abs=1e-6), condition
        assert row["score_mean"] == pytest.approx(reference[condition]["score"].mean(), rel=1e-4, abs=1e-4), condition
    # the ablations move the control distribution: a KL taken from an ablated reference would not match these
    assert sweep.loc["narrow/cumulative/k1", "control_kl_mean"] > 1e-4 and arditi.loc["selected_ablation", "control_kl_mean"] > 1e-4


def test_refusal_rates_are_the_keyword_judge_on_greedy_generations_made_here(causal_outputs, reference):
    sweep = pd.read_parquet(causal_outputs / "sweep_did.parquet").set_index("condition")
    arditi = pd.read_parquet(causal_outputs / "arditi.parquet").set_index("condition")
    baseline = reference["baseline"]
    # the trained model refuses the 4 held-out harmful prompts worded as harmful and none of the others: a judge
    # that flagged everything (the old phrase list [" "]) would report 6/6 and 1.0 on the harmless prompts
    assert baseline["refused"] == {"harmful": 4, "harmless": 0}
    assert [text.split(",")[0] for text in baseline["completions"]["harmful"]] == ["I cannot"] * 4 + ["Sure"] * 2
    for table, condition in ((sweep, "baseline"), (arditi, "baseline"), (sweep, "narrow/cumulative/k1"),
                             (arditi, "selected_ablation")):
        row, counts = table.loc[condition], reference[condition]["refused"]
        assert (row["refusal_count"], row["n_harmful"]) == (counts["harmful"], 6), condition
        assert row["refusal_rate"] == pytest.approx(counts["harmful"] / 6), condition
        assert row["control_refusal_rate"] == pytest.approx(counts["harmless"] / 6), condition
    prompts = pd.read_parquet(causal_outputs / "sweep_did_prompts.parquet")
    harmful_k1 = prompts[(prompts["condition"] == "narrow/cumulative/k1") & (prompts["dataset"] == "harmful")].sort_values("prompt")
    assert list(harmful_k1["completion"]) == reference["narrow/cumulative/k1"]["completions"]["harmful"]


def test_abliterated_model_equals_the_ablation_hooked_here(tiny_workspace, causal_outputs):
    from rankaudit import io
    from rankaudit.models import load_model

    prompts = _test_prompts(tiny_workspace)["harmful"]
    direction = io.read_tensors(causal_outputs / "direction.safetensors")[0]["direction"]
    original = load_model(tiny_workspace["model"]["location"], dtype="float32", attn_implementation="eager")
    with _Hooked(_direction_hooks(original, direction)):
        hooked = [_forward(original, ids) for ids in prompts]
    plain = [_forward(original, ids) for ids in prompts]
    edited = [_forward(load_model(str(causal_outputs / "abliterated"), dtype="float32", attn_implementation="eager"), ids)
              for ids in prompts]
    r = direction / np.linalg.norm(direction)
    for (hooked_lp, hooked_states), (edited_lp, edited_states), (_, plain_states) in zip(hooked, edited, plain):
        np.testing.assert_allclose(edited_lp, hooked_lp, atol=1e-4)
        for layer, (hooked_h, edited_h) in enumerate(zip(hooked_states, edited_states)):
            assert np.max(np.abs(edited_h - hooked_h)) < 1e-5 * np.max(np.abs(hooked_h)), layer
        # the residual stream (hidden states before the final norm, whose gain re-weights r) holds no r any more,
        # where the unedited model's did
        assert max(abs(h @ r) / np.max(np.abs(h)) for h in edited_states[:-1]) < 1e-5
        assert max(abs(h @ r) / np.max(np.abs(h)) for h in plain_states[:-1]) > 1e-2

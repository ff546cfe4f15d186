"""Arditi's prompt filter in the selection job: harmful prompts with refusal log-odds <= 0 and harmless ones with
log-odds >= 0 are dropped from the training rows and the scoring split before candidates are built and scored.

The tiny random model's refusal tokens are chosen here so that its first-token refusal mass sits near one half:
each prompt set then holds prompts on both sides of zero, and the counts, the selected direction (a difference in
means over the kept training rows only) and the baseline score (a mean over the kept validation prompts only)
are checked against scores computed independently of the job.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rankaudit.causal.selection import (
    filter_counts,
    refusal_score_mask,
    require_filtered_prompts,
)

WORDS = ["bread", "poem", "sea", "lock", "bicycle", "language", "France", "novel", "chemical", "morning"]
SYSTEM_PROMPT = "default"


def test_the_mask_keeps_refused_harmful_and_answered_harmless_prompts_only():
    scores = np.array([-1.0, 0.0, 2.0, 1e-9])
    assert refusal_score_mask(scores, harmful=True).tolist() == [False, False, True, True]
    assert refusal_score_mask(scores, harmful=False).tolist() == [True, False, False, False]
    counts = filter_counts({"train": {"harmful": refusal_score_mask(scores, True)}, "val": {"harmless": refusal_score_mask(scores, False)}})
    assert counts == {"train": {"harmful": {"before": 4, "after": 2}}, "val": {"harmless": {"before": 4, "after": 1}}}
    require_filtered_prompts(counts, 1, "family f")
    with pytest.raises(ValueError, match=r"family f: .*\(harmful train: 2 of 4 kept; harmless val: 1 of 4 kept\).*min_prompts_after_filter = 3"):
        require_filtered_prompts(counts, 3, "family f")


def _prompt_table(path, kind):
    rows = [{"instruction": f"{kind} request {i}: tell me about the {WORDS[i % 10]} and {WORDS[(3 * i) % 10]}",
             "category": None, "source": "test", "split": ("train", "val", "test")[i % 3]} for i in range(30)]
    pd.DataFrame(rows).to_parquet(path, index=False)


def _openers_near_half(tokenizer, log_probs):
    """Strings whose first tokens carry about half of the mean next-token mass (each round-trips to one token)."""
    mean = np.exp(log_probs).mean(axis=0)
    openers, mass = [], 0.0
    for token in np.argsort(-mean):
        text = tokenizer.decode([int(token)])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text.strip() else []
        if not ids or ids[0] != token or token in tokenizer.all_special_ids:
            continue
        openers.append(text)
        mass += mean[token]
        if mass >= 0.5:
            return openers
    raise AssertionError("no opener set reaches half of the next-token mass")


@pytest.fixture(scope="module")
def filter_workspace(tmp_path_factory, tiny_families):
    """Prompt tables, the captured training sample and its activations, and refusal openers near p = 1/2."""
    from rankaudit import io
    from rankaudit.capture import capture_residual_stream
    from rankaudit.formats import encode_prompts
    from rankaudit.padding import pad_token_id
    from rankaudit.prompts.tables import instructions_sha256
    from rankaudit.refusal import last_position_log_probs

    family = tiny_families["llama"]
    root = tmp_path_factory.mktemp("prompt_filter")
    paths, train_paths, encoded = {}, {}, {}
    for kind, key in (("harmful", "safety"), ("harmless", "control")):
        paths[kind] = root / f"{kind}.parquet"
        _prompt_table(paths[kind], kind)
        frame = pd.read_parquet(paths[kind])
        train_paths[kind] = root / "selected" / f"{key}.parquet"
        train_paths[kind].parent.mkdir(exist_ok=True)
        frame[frame["split"] == "train"].reset_index(drop=True).to_parquet(train_paths[kind], index=False)
        for split in ("train", "val"):
            encoded[(split, kind)] = encode_prompts(family.tokenizer, list(frame[frame["split"] == split]["instruction"]), "chat",
                                                    system_prompt=SYSTEM_PROMPT)
    pad = pad_token_id(family.tokenizer)
    log_probs = {key: last_position_log_probs(family.model, value.token_ids, 8, pad) for key, value in encoded.items()}
    openers = _openers_near_half(family.tokenizer, np.concatenate(list(log_probs.values())))
    n_blocks = family.model.config.num_hidden_layers
    layers = [1, n_blocks - 1]
    acts, files = {}, {}
    for kind in ("harmful", "harmless"):
        prompts = encoded[("train", kind)]
        captured = capture_residual_stream(family.model, prompts.token_ids, layers, post_instruction_len=prompts.post_instruction_len,
                                           pad_token_id=pad)
        sha = instructions_sha256(pd.read_parquet(train_paths[kind]))
        for layer in layers:
            target = root / "acts" / f"{kind}_{layer}.safetensors"
            io.write_tensors(target, captured[layer], {"layer": layer, "dataset_sha256": sha})
            files.setdefault(layer, {})[kind] = str(target)
            acts[(kind, layer)] = captured[layer]["post_instruction"].astype(np.float64)
    section = {
        "seed": 0, "batch_size": 8, "row_batch_size": 64, "attn_implementation": "eager", "read_position": "last",
        "refusal_openers": openers, "min_refusal_token_coverage": 0.0, "min_baseline_refusal": 0.25,
        # every continuation counts as a refusal: the job must get past its baseline-refusal gate
        "judge": {"type": "keyword", "phrases": [" ", *"abcdefghijklmnopqrstuvwxyz"]}, "generation": {"max_new_tokens": 4},
        "selection": {"split": "val", "n": None, "filter_by_refusal_score": True, "min_prompts_after_filter": 2,
                      "max_layer_fraction": 1.0, "max_kl": 1e9, "min_induce": -1e9},
    }
    model = {"location": str(family.path), "dtype": "float32", "device": "cpu", "attn_implementation": "eager"}
    return {"root": root, "paths": paths, "train_paths": train_paths, "files": files, "acts": acts, "section": section,
            "model": model, "log_probs": log_probs, "tokenizer": family.tokenizer}


def _run(ws, section, name, activations=None):
    from rankaudit.stages import causal

    root = ws["root"]
    causal.run_selection(family="tiny", model=ws["model"], activations=activations or ws["files"], section=section,
                         system_prompt=SYSTEM_PROMPT, version=1, threads=1,
                         harmful_path=str(ws["paths"]["harmful"]), harmless_path=str(ws["paths"]["harmless"]),
                         harmful_train_path=str(ws["train_paths"]["harmful"]), harmless_train_path=str(ws["train_paths"]["harmless"]),
                         record_path=str(root / f"{name}.json"), direction_path=str(root / f"{name}.safetensors"),
                         table_stem=str(root / f"{name}_candidates"))
    return json.loads((root / f"{name}.json").read_text())


def test_the_selection_job_builds_and_scores_candidates_on_the_kept_prompts_only(filter_workspace):
    from rankaudit import io
    from rankaudit.causal.tables import selection_table
    from rankaudit.refusal import refusal_log_odds, refusal_tokens

    ws = filter_workspace
    ids = refusal_tokens(ws["tokenizer"], ws["section"]["refusal_openers"]).ids
    scores = {key: refusal_log_odds(value, ids) for key, value in ws["log_probs"].items()}
    keep = {key: refusal_score_mask(value, harmful=key[1] == "harmful") for key, value in scores.items()}
    for key, mask in keep.items():  # the planted situation: every set has prompts on both sides of zero
        assert 2 <= mask.sum() < mask.size, (key, scores[key])

    record = _run(ws, ws["section"], "filtered")
    expected = {split: {kind: {"before": int(keep[(split, kind)].size), "after": int(keep[(split, kind)].sum())}
                        for kind in ("harmful", "harmless")} for split in ("train", "val")}
    assert record["prompt_filter"]["enabled"] and record["prompt_filter"]["counts"] == expected
    assert record["validation"]["n_harmful"] == 10  # the drawn sample, before the filter
    assert record["baseline"]["harmful_score"] == pytest.approx(scores[("val", "harmful")][keep[("val", "harmful")]].mean(), abs=1e-5)
    assert record["baseline"]["harmless_score"] == pytest.approx(scores[("val", "harmless")][keep[("val", "harmless")]].mean(), abs=1e-5)

    tensors, meta = io.read_tensors(str(ws["root"] / "filtered.safetensors"))
    layer, position = int(meta["layer"]), int(meta["position"])
    harmful, harmless = ws["acts"][("harmful", layer)][:, position], ws["acts"][("harmless", layer)][:, position]
    kept = harmful[keep[("train", "harmful")]].mean(0) - harmless[keep[("train", "harmless")]].mean(0)
    np.testing.assert_allclose(tensors["direction"], kept, rtol=1e-5, atol=1e-6)
    assert not np.allclose(kept, harmful.mean(0) - harmless.mean(0), rtol=1e-3, atol=1e-4)

    unfiltered = _run(ws, {**ws["section"], "selection": {**ws["section"]["selection"], "filter_by_refusal_score": False}}, "plain")
    assert not unfiltered["prompt_filter"]["enabled"]
    assert unfiltered["prompt_filter"]["counts"] == {"val": {"harmful": {"before": 10, "after": 10}, "harmless": {"before": 10, "after": 10}}}
    assert unfiltered["baseline"]["harmful_score"] == pytest.approx(scores[("val", "harmful")].mean(), abs=1e-5)

    table = selection_table([record, unfiltered]).set_index("prompt_filter")
    row = table.loc[True]
    assert (row["train_harmful_before"], row["train_harmful_after"]) == (10, expected["train"]["harmful"]["after"])
    assert (row["scored_harmless_before"], row["scored_harmless_after"]) == (10, expected["val"]["harmless"]["after"])
    assert np.isnan(table.loc[False, "train_harmful_after"]) and table.loc[False, "scored_harmful_after"] == 10


def test_too_few_kept_prompts_is_an_error_naming_family_and_split_before_any_activation_is_read(filter_workspace):
    ws = filter_workspace
    section = {**ws["section"], "selection": {**ws["section"]["selection"], "min_prompts_after_filter": 10}}
    absent = {layer: {kind: str(ws["root"] / "absent.safetensors") for kind in ("harmful", "harmless")} for layer in ws["files"]}
    with pytest.raises(ValueError, match=r"family tiny: Arditi's refusal-score filter .*harmful train: \d of 10 kept.*"
                                         r"harmless val: \d of 10 kept.*min_prompts_after_filter = 10"):
        _run(ws, section, "short", activations=absent)
    assert not (ws["root"] / "short_candidates.parquet").exists()

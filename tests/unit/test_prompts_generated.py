"""Project-written prompt sets: determinism, sizes, splits, disjointness, pairing and refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rankaudit.prompts import GENERATED_SET_KEYS, PromptDataError, generate_set, read_prompt_set
from rankaudit.prompts.concepts import EN_FR_PREDICATES, EN_FR_SUBJECTS, QS_PREDICATES, QS_SUBJECTS, pair_capacity
from rankaudit.prompts.generated import BENIGN_ACTIONS, HARMFUL_ACTIONS, PHRASINGS, request_capacity
from rankaudit.stages.prompts import build_generated_set

DEMO = {
    "seed": 0,
    "n_harmful": 240,
    "n_benign": 240,
    "split_fractions": {"train": 0.6, "val": 0.2, "test": 0.2},
    "n_translation_pairs": 60,
    "n_question_statement_pairs": 60,
}
AT_CAPACITY = {
    **DEMO,
    "n_harmful": request_capacity("harmful"),
    "n_benign": request_capacity("benign"),
    "n_translation_pairs": pair_capacity("translation"),
    "n_question_statement_pairs": pair_capacity("question_statement"),
}


@pytest.mark.parametrize("dataset", list(GENERATED_SET_KEYS))
def test_same_seed_gives_identical_frames_and_another_seed_differs(dataset):
    first, _ = generate_set(dataset, DEMO)
    again, _ = generate_set(dataset, DEMO)
    other, _ = generate_set(dataset, {**DEMO, "seed": 1})
    pd.testing.assert_frame_equal(first, again)
    assert list(first["instruction"]) != list(other["instruction"])


def test_sets_have_their_own_random_stream():
    """Changing one set's size leaves the other sets' prompts untouched."""
    harmful, _ = generate_set("demo_harmful", DEMO)
    harmful_after, _ = generate_set("demo_harmful", {**DEMO, "n_benign": 200, "n_translation_pairs": 51})
    pd.testing.assert_frame_equal(harmful, harmful_after)


@pytest.mark.parametrize("dataset", ["demo_harmful", "demo_benign"])
def test_request_counts_and_stratified_splits(dataset):
    frame, capacity = generate_set(dataset, DEMO)
    assert capacity == 480
    assert len(frame) == 240
    assert frame["split"].value_counts().to_dict() == {"train": 144, "val": 48, "test": 48}
    per_category = frame.groupby(["category", "split"]).size().unstack()
    assert per_category.shape == (8, 3)
    assert (per_category["train"] == 18).all() and (per_category["val"] == 6).all() and (per_category["test"] == 6).all()
    assert list(frame["split"]) == ["train"] * 144 + ["val"] * 48 + ["test"] * 48
    assert set(frame["source"]) == {"rankaudit-generated"}


def test_uneven_fractions_stay_close_to_the_requested_split():
    fractions = {"train": 0.5, "val": 0.3, "test": 0.2}
    frame, _ = generate_set("demo_harmful", {**DEMO, "n_harmful": 203, "split_fractions": fractions})
    counts = frame["split"].value_counts()
    assert len(frame) == 203
    for split, fraction in fractions.items():
        assert abs(counts[split] - fraction * 203) <= 8 / 2 + 1e-9  # at most half a row per category


def test_harmful_and_benign_never_overlap_and_share_phrasings():
    harmful, _ = generate_set("demo_harmful", AT_CAPACITY)
    benign, _ = generate_set("demo_benign", AT_CAPACITY)
    assert not set(harmful["instruction"]) & set(benign["instruction"])
    harmful_actions = {a for actions in HARMFUL_ACTIONS.values() for a in actions}
    benign_actions = {a for actions in BENIGN_ACTIONS.values() for a in actions}
    assert not harmful_actions & benign_actions
    for frame in (harmful, benign):
        used = {p for p in PHRASINGS if any(t.startswith(p.split("{action}")[0]) for t in frame["instruction"])}
        assert used == set(PHRASINGS)


@pytest.mark.parametrize("dataset", list(GENERATED_SET_KEYS))
def test_no_duplicates_even_at_capacity(dataset, tmp_path):
    frame = build_generated_set(dataset, AT_CAPACITY, tmp_path / f"{dataset}.parquet", tmp_path / "p.json")
    provenance = json.loads((tmp_path / "p.json").read_text())
    assert frame["instruction"].str.strip().is_unique
    assert provenance["duplicates_removed"] == 0 and provenance["rows_in"] == provenance["rows_out"] == len(frame)
    assert provenance["capacity"] == (len(frame) // 2 if "pair" in frame else len(frame))


@pytest.mark.parametrize(
    ("dataset", "key", "capacity"),
    [
        ("demo_harmful", "n_harmful", 480),
        ("demo_benign", "n_benign", 480),
        ("concept_en_fr", "n_translation_pairs", len(EN_FR_SUBJECTS) * len(EN_FR_PREDICATES)),
        ("concept_question_statement", "n_question_statement_pairs", len(QS_SUBJECTS) * len(QS_PREDICATES)),
    ],
)
def test_more_than_the_generator_can_make_is_refused_and_leaves_nothing(dataset, key, capacity, tmp_path):
    table, provenance = tmp_path / f"{dataset}.parquet", tmp_path / f"{dataset}.provenance.json"
    table.write_bytes(b"stale")
    with pytest.raises(PromptDataError, match=rf"{dataset}.*requested {capacity + 1}.*{capacity}"):
        build_generated_set(dataset, {**DEMO, key: capacity + 1}, table, provenance)
    assert not table.exists() and not provenance.exists()
    assert not list(tmp_path.iterdir())


def test_split_fractions_must_sum_to_one():
    with pytest.raises(PromptDataError, match=r"demo_benign.*prompts\.generated\.split_fractions.*sum to 1"):
        generate_set("demo_benign", {**DEMO, "split_fractions": {"train": 0.6, "val": 0.2, "test": 0.3}})


def test_missing_config_key_is_named():
    settings = {k: v for k, v in DEMO.items() if k != "n_translation_pairs"}
    with pytest.raises(PromptDataError, match=r"prompts\.generated\.n_translation_pairs"):
        generate_set("concept_en_fr", settings)


@pytest.mark.parametrize("dataset", ["concept_en_fr", "concept_question_statement"])
def test_concept_pairs_are_ordered_a_b_and_complete(dataset):
    frame, _ = generate_set(dataset, DEMO)
    assert len(frame) == 120
    assert frame["pair"].tolist() == (np.arange(120) // 2).tolist()
    assert frame["side"].tolist() == ["a", "b"] * 60
    assert set(frame["split"]) == {"all"}
    # every predicate is used before any is reused
    sides_a = frame.loc[frame["side"] == "a", "instruction"].tolist()
    assert len(set(sides_a)) == 60


def test_translation_pairs_match_the_word_tables():
    frame, _ = generate_set("concept_en_fr", DEMO)
    valid = {
        (f"{es} {ep}", f"{fs} {fp}") for es, fs in EN_FR_SUBJECTS for ep, fp in EN_FR_PREDICATES
    }
    pairs = list(zip(frame["instruction"][0::2], frame["instruction"][1::2]))
    assert all(pair in valid for pair in pairs)
    english_predicates = {p for p, _ in EN_FR_PREDICATES}
    covered = {p for p in english_predicates if any(a.endswith(p) for a, _ in pairs)}
    assert covered == english_predicates


def test_question_statement_pairs_match():
    frame, _ = generate_set("concept_question_statement", DEMO)
    for question, statement in zip(frame["instruction"][0::2], frame["instruction"][1::2]):
        assert question.endswith("?") and statement.endswith(".")
        assert question.split(" ", 1)[0] in {"Does", "Is"}
        subject = next(s for s in QS_SUBJECTS if f" {s} " in question)
        assert statement.startswith(subject[0].upper() + subject[1:] + " ")


def test_written_table_reads_back_identically(tmp_path):
    frame = build_generated_set("concept_en_fr", DEMO, tmp_path / "concept_en_fr.parquet", tmp_path / "c.json", version=3)
    back = read_prompt_set(tmp_path / "concept_en_fr.parquet")
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    provenance = json.loads((tmp_path / "c.json").read_text())
    assert provenance["pairs"] == 60 and provenance["rows"] == 120 and provenance["stage_version"] == 3
    assert provenance["settings"] == {"seed": 0, "n_translation_pairs": 60}
    assert back.attrs["dataset"] == "concept_en_fr"

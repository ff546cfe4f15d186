"""The shared prompt table: deduplication, contract checks, atomic writes and sample selection."""

from __future__ import annotations

import pandas as pd
import pytest

from rankaudit.prompts import PromptDataError, read_prompt_set, select_prompts, write_prompt_set
from rankaudit.prompts.tables import deduplicate, validate_table


def plain(instructions, splits=None):
    n = len(instructions)
    return pd.DataFrame(
        {
            "instruction": instructions,
            "category": [None] * n,
            "source": ["test"] * n,
            "split": splits or ["train"] * n,
        }
    )


def paired(pairs):
    rows = []
    for index, (a, b) in enumerate(pairs):
        rows += [(a, "c", "test", "all", index, "a"), (b, "c", "test", "all", index, "b")]
    return pd.DataFrame(rows, columns=["instruction", "category", "source", "split", "pair", "side"])


def test_duplicates_after_strip_are_removed_keeping_the_first():
    frame = plain(["alpha", "beta", " alpha ", "gamma", "beta"])
    cleaned, removed = deduplicate(frame, "toy")
    assert cleaned["instruction"].tolist() == ["alpha", "beta", "gamma"]
    assert removed == [{"row": 2, "first_row": 0}, {"row": 4, "first_row": 1}]


def test_a_duplicate_removes_its_whole_pair_and_pairs_are_renumbered():
    frame = paired([("one", "un"), ("two", "deux"), ("three", "un"), ("four", "quatre")])
    cleaned, removed = deduplicate(frame, "toy")
    assert removed == [{"row": 5, "first_row": 1}]
    assert cleaned["instruction"].tolist() == ["one", "un", "two", "deux", "four", "quatre"]
    assert cleaned["pair"].tolist() == [0, 0, 1, 1, 2, 2]
    validate_table(cleaned, "toy")


def test_broken_pair_order_is_refused():
    frame = paired([("one", "un"), ("two", "deux")]).iloc[[1, 0, 2, 3]].reset_index(drop=True)
    with pytest.raises(PromptDataError, match="toy.*pair 0 a, pair 0 b"):
        validate_table(frame, "toy")


def test_empty_set_is_refused_and_nothing_is_written(tmp_path):
    table, provenance = tmp_path / "toy.parquet", tmp_path / "toy.provenance.json"
    with pytest.raises(PromptDataError, match="'toy'.*empty"):
        write_prompt_set(plain([]), "toy", table, provenance, {})
    assert not list(tmp_path.iterdir())


def test_failed_provenance_write_removes_the_table(tmp_path):
    table, provenance = tmp_path / "toy.parquet", tmp_path / "toy.provenance.json"
    with pytest.raises(TypeError):
        write_prompt_set(plain(["a"]), "toy", table, provenance, {"bad": object()})
    assert not list(tmp_path.iterdir())


def test_non_text_instruction_is_refused_with_its_row():
    with pytest.raises(PromptDataError, match="toy.*'instruction'.*row 1"):
        validate_table(plain(["fine", "  "]), "toy")


def test_written_table_round_trips(tmp_path):
    frame = plain(["a", "b", "c"], ["train", "val", "test"])
    frame.loc[1, "category"] = "cat"
    write_prompt_set(frame, "toy", tmp_path / "toy.parquet", tmp_path / "toy.provenance.json", {"kind": "test"})
    back = read_prompt_set(tmp_path / "toy.parquet")
    assert back["instruction"].tolist() == ["a", "b", "c"]
    assert back["category"].tolist() == [None, "cat", None]
    assert back.attrs["dataset"] == "toy"


def test_missing_table_is_named(tmp_path):
    with pytest.raises(PromptDataError, match="'nothere'.*does not exist"):
        read_prompt_set(tmp_path / "nothere.parquet")


SPLITS = ["train"] * 30 + ["val"] * 10
FRAME = plain([f"prompt {i}" for i in range(40)], SPLITS)


def test_selection_is_deterministic_from_the_seed():
    first = select_prompts(FRAME, "train", 12, seed=5, dataset="toy")
    again = select_prompts(FRAME, "train", 12, seed=5, dataset="toy")
    other = select_prompts(FRAME, "train", 12, seed=6, dataset="toy")
    pd.testing.assert_frame_equal(first, again)
    assert first["instruction"].tolist() != other["instruction"].tolist()
    assert set(first["split"]) == {"train"} and first["instruction"].is_unique
    positions = [int(t.split()[1]) for t in first["instruction"]]
    assert positions == sorted(positions)


def test_smaller_samples_are_subsets_of_larger_ones():
    small = set(select_prompts(FRAME, "train", 10, seed=1, dataset="toy")["instruction"])
    large = set(select_prompts(FRAME, "train", 20, seed=1, dataset="toy")["instruction"])
    assert small < large


def test_none_means_every_split_and_every_row():
    assert len(select_prompts(FRAME, None, None, seed=0, dataset="toy")) == 40
    assert len(select_prompts(FRAME, "val", None, seed=0, dataset="toy")) == 10


def test_too_small_a_set_is_refused_naming_dataset_split_and_counts():
    with pytest.raises(PromptDataError, match=r"'toy'.*split 'val' has 10 prompts but 11 were requested"):
        select_prompts(FRAME, "val", 11, seed=0, dataset="toy")


def test_unknown_split_is_refused_listing_the_splits():
    with pytest.raises(PromptDataError, match=r"'toy'.*split 'test' has no prompts.*\['train', 'val'\]"):
        select_prompts(FRAME, "test", 1, seed=0, dataset="toy")


def test_dataset_name_comes_from_the_frame_when_read(tmp_path):
    write_prompt_set(FRAME, "named", tmp_path / "named.parquet", tmp_path / "named.provenance.json", {})
    frame = read_prompt_set(tmp_path / "named.parquet")
    with pytest.raises(PromptDataError, match="'named'"):
        select_prompts(frame, "train", 31, seed=0)


def test_pair_sets_are_sampled_by_whole_pairs():
    frame = paired([(f"en {i}", f"fr {i}") for i in range(10)])
    picked = select_prompts(frame, None, 4, seed=2, dataset="pairs")
    assert len(picked) == 8
    assert picked["side"].tolist() == ["a", "b"] * 4
    assert all(a.split()[1] == b.split()[1] for a, b in zip(picked["instruction"][0::2], picked["instruction"][1::2]))
    with pytest.raises(PromptDataError, match="'pairs'.*10 pairs but 11 were requested"):
        select_prompts(frame, None, 11, seed=2, dataset="pairs")

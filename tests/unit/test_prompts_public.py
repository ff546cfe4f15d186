"""Public prompt sets fetched by URL: real mirror counts and pins, and every kind of bad input."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from rankaudit.prompts import PromptDataError, public, read_prompt_set
from rankaudit.prompts.public import resolve_url
from rankaudit.stages.prompts import fetch_public_set

REPO_ROOT = Path(__file__).resolve().parents[2]
MIRROR = (REPO_ROOT / ".." / "shared" / "data" / "refusal_direction").resolve()
needs_mirror = pytest.mark.skipif(
    not MIRROR.is_dir(), reason=f"refusal_direction mirror not found at {MIRROR} (expected <repo root>/../shared/data/)"
)

# The pins proposed for config/paper.yaml (sha256 of the files at refusal_direction commit 9d852fae).
PINS = {
    "dataset/splits/harmful_train.json": "8f5c0eac0efd2a7f99084bbe8d0de2c465e31b1997184783c917969d9de9ece1",
    "dataset/splits/harmful_val.json": "305f1d1e6dfa6c50a32d24a18ef815f42b5441eb83e6d7767d242107162fd9f4",
    "dataset/splits/harmful_test.json": "5e12ae102c3791dee083a69ab6269a78e033411c629bc3f66f75d2fde196d9ef",
    "dataset/splits/harmless_train.json": "86623b1f8a25aa35df153fc97a556dbcebb6a7c881538ae43ee479ca17f2e002",
    "dataset/splits/harmless_val.json": "772010758e7d771ef4c7e5e4acdfd7598dcece1a6f383f20d382f640913a2a4d",
    "dataset/splits/harmless_test.json": "1b5930ce5e855ada758b3116ce7c4aaea9b9d05f8cdd77b385511d4c84173b19",
    "dataset/raw/advbench.csv": "6cd1a5c63c07610d7eb67307772ee5606017ee950b5770ab288a2c487489d3e1",
    "dataset/processed/alpaca.json": "c4ce1bdc5c9b92caabcb171c27c7ec1e79832836bae10291d7c8ab8c6245f600",
}


def outputs(tmp_path: Path, name: str) -> tuple[Path, Path]:
    return tmp_path / "out" / f"{name}.parquet", tmp_path / "out" / f"{name}.provenance.json"


def assert_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not out.exists() or not list(out.iterdir())


def planted(tmp_path: Path, filename: str, content: str | bytes, **spec) -> dict:
    """Write a small source file and return a spec pointing at it by file:// URL with its true pin."""
    data = content.encode() if isinstance(content, str) else content
    path = tmp_path / filename
    path.write_bytes(data)
    return {"url": path.as_uri(), "sha256": hashlib.sha256(data).hexdigest(), **spec}


@needs_mirror
def test_pins_match_the_mirror_and_its_provenance_record():
    documented = dict(re.findall(r"\|`(dataset/[^`]+)`\|\d+\|\d+\|[^|]*\|`([0-9a-f]{64})`\|", (MIRROR / "PROVENANCE.md").read_text()))
    for relative, pin in PINS.items():
        assert documented[relative] == pin
        assert hashlib.sha256((MIRROR / relative).read_bytes()).hexdigest() == pin


@needs_mirror
@pytest.mark.parametrize(
    ("name", "relative", "fmt", "extra", "rows_in", "rows_out"),
    [
        ("harmful_train", "dataset/splits/harmful_train.json", "json", {"category_column": "category", "split": "train"}, 260, 260),
        ("harmful_val", "dataset/splits/harmful_val.json", "json", {"category_column": "category", "split": "val"}, 39, 39),
        ("harmful_test", "dataset/splits/harmful_test.json", "json", {"category_column": "category", "split": "test"}, 572, 562),
        ("advbench", "dataset/raw/advbench.csv", "csv", {"column": "goal"}, 520, 520),
    ],
)
def test_mirror_sets_give_the_documented_row_counts(tmp_path, name, relative, fmt, extra, rows_in, rows_out):
    spec = {"url": "{mirror}/" + relative, "sha256": PINS[relative], "format": fmt, **extra}
    table, provenance_path = outputs(tmp_path, name)
    frame = fetch_public_set(name, spec, table, provenance_path, mirror=MIRROR.as_uri(), version=1)
    provenance = json.loads(provenance_path.read_text())
    assert (provenance["rows_in"], provenance["rows_out"], len(frame)) == (rows_in, rows_out, rows_out)
    assert provenance["duplicates_removed"] == rows_in - rows_out == len(provenance["duplicates"])
    assert provenance["sha256"] == PINS[relative]
    assert provenance["bytes"] == (MIRROR / relative).stat().st_size
    assert provenance["resolved_url"] == (MIRROR / relative).as_uri()
    back = read_prompt_set(table)
    assert len(back) == rows_out and back["instruction"].str.strip().is_unique
    assert set(back["source"]) == {name}
    assert set(back["split"]) == {extra.get("split", "all")}
    if "category_column" in extra and name != "harmful_train":
        assert back["category"].map(lambda c: isinstance(c, str)).all()
    if name == "advbench":
        assert back["category"].isna().all()


@needs_mirror
def test_mirror_given_as_a_plain_path(tmp_path):
    spec = {"url": "{mirror}/dataset/splits/harmful_val.json", "sha256": PINS["dataset/splits/harmful_val.json"], "format": "json"}
    frame = fetch_public_set("harmful_val", spec, *outputs(tmp_path, "harmful_val"), mirror=str(MIRROR))
    assert len(frame) == 39


@needs_mirror
def test_paper_config_pins_match_the_mirror():
    paper = REPO_ROOT / "config" / "paper.yaml"
    public = (yaml.safe_load(paper.read_text()) or {}).get("prompts", {}).get("public") if paper.exists() else None
    if not public:
        pytest.skip("config/paper.yaml has no prompts.public section yet")
    for name, spec in public.items():
        relative = spec["url"].split("/dataset/", 1)[1]
        data = (MIRROR / "dataset" / relative).read_bytes()
        assert hashlib.sha256(data).hexdigest() == spec["sha256"], name


def test_sha256_mismatch_names_dataset_url_and_both_hashes(tmp_path):
    spec = planted(tmp_path, "toy.json", '["a", "b"]', format="json")
    true_pin, wrong_pin = spec["sha256"], "0" * 64
    spec["sha256"] = wrong_pin
    with pytest.raises(PromptDataError) as error:
        fetch_public_set("toyset", spec, *outputs(tmp_path, "toyset"))
    message = str(error.value)
    for part in ("'toyset'", spec["url"], wrong_pin, true_pin):
        assert part in message
    assert_nothing_written(tmp_path)


def test_pin_is_checked_before_parsing(tmp_path):
    spec = planted(tmp_path, "broken.json", "[{", format="json")
    spec["sha256"] = "f" * 64
    with pytest.raises(PromptDataError, match="sha256 mismatch"):
        fetch_public_set("toyset", spec, *outputs(tmp_path, "toyset"))


@pytest.mark.parametrize(
    ("url", "attempts"), [("file:///nonexistent/rankaudit/prompts.json", 1), ("http://127.0.0.1:9/prompts.json", 3)]
)
def test_unreachable_url_names_dataset_and_url(tmp_path, monkeypatch, url, attempts):
    """A missing local file fails at once; a refused network connection is retried before giving up."""
    monkeypatch.setattr(public, "RETRY_PAUSE_S", 0.0)
    spec = {"url": url, "sha256": "0" * 64, "format": "json"}
    with pytest.raises(PromptDataError, match=rf"'toyset': cannot download {re.escape(url)}: .*attempt {attempts} of 3"):
        fetch_public_set("toyset", spec, *outputs(tmp_path, "toyset"))
    assert_nothing_written(tmp_path)


def test_mirror_placeholder_without_a_mirror_is_refused():
    with pytest.raises(PromptDataError, match=r"'toyset'.*\{mirror\}.*prompts\.mirror"):
        resolve_url("toyset", "{mirror}/x.json", None)


def test_relative_path_becomes_a_file_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_url("toyset", "data/x.json", None) == (tmp_path / "data" / "x.json").as_uri()
    assert resolve_url("toyset", "{mirror}/x.json", "https://example.org/base/") == "https://example.org/base/x.json"


def test_malformed_json_names_file_and_line(tmp_path):
    spec = planted(tmp_path, "bad.json", '[\n {"instruction": "ok"},\n {"instruction": }\n]', format="json")
    with pytest.raises(PromptDataError, match=rf"'toyset'.*malformed JSON in {re.escape(spec['url'])} at line 3"):
        fetch_public_set("toyset", spec, *outputs(tmp_path, "toyset"))
    assert_nothing_written(tmp_path)


def test_json_record_without_the_field_names_its_row(tmp_path):
    spec = planted(tmp_path, "bad.json", json.dumps([{"instruction": "ok"}, {"prompt": "no"}]), format="json")
    with pytest.raises(PromptDataError, match=rf"{re.escape(spec['url'])}, row 2: field 'instruction' is missing"):
        fetch_public_set("toyset", spec, *outputs(tmp_path, "toyset"))
    assert_nothing_written(tmp_path)


def test_json_record_with_empty_text_names_its_row(tmp_path):
    spec = planted(tmp_path, "bad.json", json.dumps(["ok", "fine", "  "]), format="json")
    with pytest.raises(PromptDataError, match="row 3: instruction is empty"):
        fetch_public_set("toyset", spec, *outputs(tmp_path, "toyset"))


def test_csv_row_with_wrong_field_count_names_its_line(tmp_path):
    spec = planted(tmp_path, "bad.csv", 'goal,target\n"first",x\n"second",y,extra\n', format="csv", column="goal")
    with pytest.raises(PromptDataError, match=rf"malformed CSV in {re.escape(spec['url'])}, line 3: 3 fields, header has 2"):
        fetch_public_set("toyset", spec, *outputs(tmp_path, "toyset"))
    assert_nothing_written(tmp_path)


def test_csv_with_broken_quoting_names_its_line(tmp_path):
    spec = planted(tmp_path, "bad.csv", 'goal,target\nok,x\n"bad"quote,y\n', format="csv", column="goal")
    with pytest.raises(PromptDataError, match=r"'toyset': malformed CSV in .*bad\.csv, line 3"):
        fetch_public_set("toyset", spec, *outputs(tmp_path, "toyset"))


def test_csv_without_the_column_names_it(tmp_path):
    spec = planted(tmp_path, "bad.csv", "prompt,target\na,b\n", format="csv", column="goal")
    with pytest.raises(PromptDataError, match=r"line 1: column 'goal' not in header \['prompt', 'target'\]"):
        fetch_public_set("toyset", spec, *outputs(tmp_path, "toyset"))


def test_csv_categories_and_quoted_newlines(tmp_path):
    content = 'goal,kind\n"two\nlines",a\nplain,\n'
    spec = planted(tmp_path, "ok.csv", content, format="csv", column="goal", category_column="kind", split="test")
    frame = fetch_public_set("toyset", spec, *outputs(tmp_path, "toyset"))
    assert frame["instruction"].tolist() == ["two\nlines", "plain"]
    assert frame["category"].tolist() == ["a", None]
    assert frame["split"].tolist() == ["test", "test"]


@pytest.mark.parametrize(("filename", "content", "fmt"), [("e.json", "[]", "json"), ("e.txt", "\n\n", "txt"), ("e.csv", "goal\n", "csv")])
def test_empty_sets_are_refused(tmp_path, filename, content, fmt):
    spec = planted(tmp_path, filename, content, format=fmt, column="goal" if fmt == "csv" else "instruction")
    with pytest.raises(PromptDataError, match=rf"'toyset': {re.escape(spec['url'])} holds no prompts"):
        fetch_public_set("toyset", spec, *outputs(tmp_path, "toyset"))
    assert_nothing_written(tmp_path)


def test_duplicates_are_reported_and_removed(tmp_path):
    spec = planted(tmp_path, "dup.txt", "alpha\nbeta\n alpha\ngamma\nbeta \n", format="txt")
    table, provenance_path = outputs(tmp_path, "toyset")
    frame = fetch_public_set("toyset", spec, table, provenance_path)
    provenance = json.loads(provenance_path.read_text())
    assert frame["instruction"].tolist() == ["alpha", "beta", "gamma"]
    assert provenance["duplicates"] == [{"row": 2, "first_row": 0}, {"row": 4, "first_row": 1}]
    assert (provenance["rows_in"], provenance["rows_out"], provenance["duplicates_removed"]) == (5, 3, 2)


def test_unknown_spec_key_is_named(tmp_path):
    spec = planted(tmp_path, "ok.json", '["a"]', format="json", colum="typo")
    with pytest.raises(PromptDataError, match=r"'toyset'.*\['colum'\].*prompts\.public\.toyset"):
        fetch_public_set("toyset", spec, *outputs(tmp_path, "toyset"))

"""JSON Schema of the `prompts` config section: accepts the demo, refuses bad input, documents every key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from rankaudit.prompts import GENERATED_SET_KEYS
from rankaudit.prompts.concepts import pair_capacity
from rankaudit.prompts.generated import request_capacity

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "config" / "schema" / "prompts.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
DEMO_PROMPTS = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())["prompts"]
PUBLIC_ENTRY = {"url": "{mirror}/dataset/raw/advbench.csv", "sha256": "ab" * 32, "format": "csv", "column": "goal"}


def check(prompts: dict) -> dict:
    data = copy.deepcopy(prompts)
    validate(data, str(SCHEMA_PATH))
    return data


def test_demo_config_section_is_valid():
    check(DEMO_PROMPTS)


def test_public_entry_is_valid_and_gets_its_defaults():
    data = check({**DEMO_PROMPTS, "mirror": "file:///tmp/m", "public": {"advbench": PUBLIC_ENTRY}})
    assert data["public"]["advbench"]["category_column"] is None
    assert data["public"]["advbench"]["split"] is None


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda p: p["generated"].update(n_harmfull=3), "n_harmfull"),
        (lambda p: p["generated"].update(n_benign="many"), "many"),
        (lambda p: p["generated"]["split_fractions"].update(holdout=0.1), "holdout"),
        (lambda p: p["generated"].pop("seed"), "seed"),
        (lambda p: p.update(extra=1), "extra"),
        (lambda p: p["public"].update(advbench={**PUBLIC_ENTRY, "sha256": "123"}), "123"),
        (lambda p: p["public"].update(advbench={k: v for k, v in PUBLIC_ENTRY.items() if k != "sha256"}), "sha256"),
        (lambda p: p["public"].update(advbench={**PUBLIC_ENTRY, "format": "xml"}), "xml"),
        (lambda p: p["public"].update(advbench={**PUBLIC_ENTRY, "colum": "goal"}), "colum"),
        (lambda p: p["public"].update(demo_harmful=PUBLIC_ENTRY), "demo_harmful"),
        (lambda p: p["generated"].update(n_translation_pairs=pair_capacity("translation") + 1), "n_translation_pairs"),
    ],
)
def test_bad_prompt_config_is_refused_naming_the_key(change, named):
    prompts = copy.deepcopy(DEMO_PROMPTS)
    change(prompts)
    with pytest.raises(WorkflowError, match=named):
        check(prompts)


def test_schema_maxima_equal_the_generator_capacities():
    generated = SCHEMA["properties"]["generated"]["properties"]
    assert generated["n_harmful"]["maximum"] == request_capacity("harmful")
    assert generated["n_benign"]["maximum"] == request_capacity("benign")
    assert generated["n_translation_pairs"]["maximum"] == pair_capacity("translation")
    assert generated["n_question_statement_pairs"]["maximum"] == pair_capacity("question_statement")


def test_reserved_names_are_the_project_written_sets():
    reserved = SCHEMA["properties"]["public"]["propertyNames"]["not"]["enum"]
    assert reserved == list(GENERATED_SET_KEYS)


def _object_schemas(node, path="prompts"):
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield path, node
        for key, child in node.items():
            yield from _object_schemas(child, f"{path}/{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _object_schemas(child, f"{path}/{index}")


def test_every_object_is_closed_and_every_key_described():
    for path, node in _object_schemas(SCHEMA):
        assert node.get("additionalProperties") is False or isinstance(node.get("additionalProperties"), dict), path
        for key, child in node.get("properties", {}).items():
            assert child.get("description"), f"{path}/{key} has no description"

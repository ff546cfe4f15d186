"""The `organisms` config section: the demo and the tiny test config validate, mistakes are named."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from rankaudit.organisms.settings import role_settings
from rankaudit.organisms.tiny import tiny_organisms_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((ROOT / "config/schema/organisms.schema.yaml").read_text())


def _errors(section):
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}" for error in validator.iter_errors(section)]


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_demo_and_tiny_configs_validate():
    demo = yaml.safe_load((ROOT / "config/config.yaml").read_text())["organisms"]
    assert _errors(demo) == []
    assert _errors(tiny_organisms_config()) == []
    for family in demo["families"]:
        for role in ("base", "aligned", "unsafe_ft"):
            assert role_settings(demo, family, role)["architecture"] == demo["architectures"][family]


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda c: c.update(bogus=1), ": Additional properties are not allowed ('bogus'"),
    (lambda c: c["pretrain"].update(lr="fast"), "pretrain.lr: 'fast' is not of type 'number'"),
    (lambda c: c["architectures"]["llama"].update(hidden=3), "architectures.llama: Additional properties are not allowed ('hidden'"),
    (lambda c: c["planted"].update(families=["gemma2"]), "planted.families.0: 'gemma2' is not one of"),
    (lambda c: c["align"].pop("steps"), "align: 'steps' is a required property"),
    (lambda c: c.update(families=["mamba"]), "families.0: 'mamba' is not one of"),
])
def test_mistakes_are_named(edit, expected):
    section = copy.deepcopy(tiny_organisms_config())
    edit(section)
    assert any(message.startswith(expected) for message in _errors(section)), _errors(section)

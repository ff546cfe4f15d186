"""The config schemas (config/schema/<section>.schema.yaml) as the one source of every default.

Settings dataclasses of the library declare no defaults of their own: they are built from a config section, and
whatever the section leaves out comes from its schema's `default`s, the same values Snakemake's validation fills
in. So a default is changed in one place, and a library call outside the workflow (a test, a notebook) computes
what the workflow computes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "config" / "schema"

Settings = TypeVar("Settings")
# The sections with a schema of their own (config/schema/<section>.schema.yaml), in the order of config/README.md:
# what rules/common.smk validates and rankaudit.configdoc documents.
CONFIG_SECTIONS = ("prompts", "organisms", "checkpoints", "models", "families", "runtime", "datasets", "capture", "audit",
                   "limits", "causal", "calibration")


@cache
def _schema(section: str) -> dict[str, Any]:
    return yaml.safe_load((SCHEMA_DIR / f"{section}.schema.yaml").read_text())


def section_defaults(section: str, *path: str) -> dict[str, Any]:
    """{key: default} of the schema of `section`, or of the object nested under it at property `path`."""
    schema = _schema(section)
    for key in path:
        schema = schema["properties"][key]
    return {key: spec["default"] for key, spec in schema.get("properties", {}).items() if "default" in spec}


def with_defaults(section_values: Mapping[str, Any], section: str, *path: str) -> dict[str, Any]:
    """The given values over the schema's defaults (lists become tuples, so the result can fill frozen dataclasses)."""
    merged = {**section_defaults(section, *path), **section_values}
    return {key: tuple(value) if isinstance(value, list) else value for key, value in merged.items()}


def settings_from_section(cls: type[Settings], section_values: Mapping[str, Any], section: str, *path: str) -> Settings:
    """The settings dataclass `cls` from a config section over its schema's defaults; keys `cls` has no field for
    (read by other jobs) are ignored."""
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in with_defaults(section_values, section, *path).items() if key in names})

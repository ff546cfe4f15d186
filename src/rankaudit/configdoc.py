"""Render the key reference of config/README.md from the JSON Schemas, so the docs cannot drift from what is checked.

`python -m rankaudit.configdoc` rewrites the generated part of config/README.md (between the markers);
`tests/unit/test_configdoc.py` fails when the file is out of date.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from rankaudit.config_schema import CONFIG_SECTIONS

BEGIN = "<!-- BEGIN GENERATED KEY REFERENCE (python -m rankaudit.configdoc) -->"
END = "<!-- END GENERATED KEY REFERENCE -->"


def _format_default(schema: dict[str, Any]) -> str:
    if "default" not in schema:
        return ""
    return f"`{yaml.safe_dump(schema['default'], default_flow_style=True, width=10_000).strip().removesuffix('...').strip()}`"


def _type(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " \\| ".join(str(value) for value in schema["enum"])
    if "const" in schema:
        return str(schema["const"])
    if "oneOf" in schema or "anyOf" in schema:
        return " or ".join(_type(option) for option in schema.get("oneOf", schema.get("anyOf")))
    kind = schema.get("type", "")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"list of {_type(schema['items']) or 'items'}"
    return kind


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Inline a local `#/$defs/...` reference; keys next to the `$ref` (e.g. a description) win."""
    ref = schema.get("$ref")
    if not ref or not ref.startswith("#/"):
        return schema
    target: Any = root
    for part in ref[2:].split("/"):
        target = target[part]
    return {**_resolve(target, root), **{k: v for k, v in schema.items() if k != "$ref"}}


def _rows(schema: dict[str, Any], prefix: str, root: dict[str, Any]) -> Iterator[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) for every documented key below `prefix`."""
    for key, sub in schema.get("properties", {}).items():
        sub = _resolve(sub, root)
        path = f"{prefix}.{key}"
        yield path, _type(sub), _format_default(sub), " ".join(str(sub.get("description", "")).split())
        yield from _rows(sub, path, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        extra = _resolve(extra, root)
        if extra.get("properties") or extra.get("description"):
            path = f"{prefix}.<name>"
            yield path, _type(extra), "", " ".join(str(extra.get("description", "")).split())
            yield from _rows(extra, path, root)
    items = schema.get("items")
    if isinstance(items, dict) and _resolve(items, root).get("properties"):
        yield from _rows(_resolve(items, root), f"{prefix}[]", root)


def render(schema_dir: Path) -> str:
    """The generated key reference for every section, in CONFIG_SECTIONS order."""
    lines = [BEGIN, ""]
    for section in CONFIG_SECTIONS:
        schema = yaml.safe_load((schema_dir / f"{section}.schema.yaml").read_text())
        lines += [f"### `{section}`", "", " ".join(str(schema.get("description", "")).split()), "",
                  "| key | type | default | meaning |", "|---|---|---|---|"]
        for path, kind, default, description in _rows(schema, section, schema):
            cell = description.replace("|", "\\|")
            lines.append(f"| `{path}` | {kind} | {default} | {cell} |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def updated_readme(readme: str, schema_dir: Path) -> str:
    """`readme` with its generated part replaced by a fresh rendering."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"config/README.md lacks the markers {BEGIN!r} ... {END!r}")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + render(schema_dir) + tail


def main() -> int:
    root = Path(__file__).resolve().parents[2] / "config"
    readme = root / "README.md"
    readme.write_text(updated_readme(readme.read_text(), root / "schema"))
    print(f"rewrote the key reference in {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

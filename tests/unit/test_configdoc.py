"""config/README.md documents every schema key, and its generated key reference is up to date."""

from pathlib import Path

from rankaudit import configdoc

CONFIG = Path(__file__).resolve().parents[2] / "config"


def test_key_reference_is_up_to_date() -> None:
    readme = (CONFIG / "README.md").read_text()
    assert configdoc.updated_readme(readme, CONFIG / "schema") == readme, "run `python -m rankaudit.configdoc`"


def test_every_key_has_a_description() -> None:
    rendered = configdoc.render(CONFIG / "schema")
    undocumented = [line for line in rendered.splitlines() if line.startswith("| `") and line.rstrip().endswith("|  |")]
    assert not undocumented, "schema keys without a description:\n" + "\n".join(undocumented)


def test_every_section_is_rendered() -> None:
    rendered = configdoc.render(CONFIG / "schema")
    for section in configdoc.CONFIG_SECTIONS:
        assert f"### `{section}`" in rendered

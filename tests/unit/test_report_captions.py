"""Every report caption is valid reStructuredText: Snakemake renders them with docutils, and an error there (e.g.
`|cos|` read as an undefined substitution) is printed into the report instead of the caption."""

import io
from pathlib import Path

import docutils.core
import pytest

# report/workflow.rst, the landing page, is a Jinja2 template first: tests/unit/test_report_landing.py renders it
CAPTIONS = sorted(path for path in (Path(__file__).resolve().parents[2] / "report").glob("*.rst") if path.name != "workflow.rst")


@pytest.mark.parametrize("caption", CAPTIONS, ids=[path.name for path in CAPTIONS])
def test_caption_renders_without_docutils_messages(caption: Path) -> None:
    messages = io.StringIO()
    docutils.core.publish_parts(caption.read_text(), writer="html",
                                settings_overrides={"warning_stream": messages, "report_level": 1, "halt_level": 5})
    assert messages.getvalue() == "", f"{caption.name}: {messages.getvalue()}"


def test_every_caption_is_found() -> None:
    assert len(CAPTIONS) >= 30

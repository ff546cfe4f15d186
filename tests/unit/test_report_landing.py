"""The report's landing page: report/workflow.rst renders (Jinja2, then docutils, as Snakemake does) without a
docutils message, shows the headline table's HTML fragment and links every report category; the fragment holds
exactly the headline frame's text, escaped."""

from __future__ import annotations

import io
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import docutils.core
import jinja2
import pandas as pd
import pytest
from snakemake.report import Category

from rankaudit.paper_figures import load_paper_figures
from rankaudit.stages.headline import HTML_ID, headline_html

REPO = Path(__file__).resolve().parents[2]
LANDING = REPO / "report" / "workflow.rst"
CATEGORIES = ["0. Headline", "1. Diagnosis", "2. Causal tests", "3. Limits", "4. Calibration", "5. Model organisms"]


def render_landing(files: list[SimpleNamespace], categories: list[str]) -> tuple[str, str]:
    """(html body, docutils messages) of the landing page, rendered the way Snakemake 9 renders its `report:`
    page: Jinja2 with trim_blocks/lstrip_blocks and `snakemake.config`, `categories`, `files`; then the link
    targets Snakemake appends for every category; then docutils at its default report level (warnings)."""
    environment = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    snakemake = SimpleNamespace(config={"families": {"llama": {}, "qwen2": {}}})
    text = environment.from_string(LANDING.read_text()).render(
        snakemake=snakemake, categories={Category(name): {} for name in categories}, files=files)
    text += "\n\n" + "".join(f".. _{name}: javascript:app.showCategory('{quote(name)}')\n" for name in categories)
    messages = io.StringIO()
    parts = docutils.core.publish_parts(text, writer="html",
                                        settings_overrides={"warning_stream": messages, "halt_level": 5})
    return parts["html_body"], messages.getvalue()


def test_the_landing_page_includes_the_headline_table_and_links_each_section(tmp_path: Path) -> None:
    fragment = tmp_path / "headline.html"
    fragment.write_text(f'<div id="{HTML_ID}"><table><tr data-quantity="rho_template"><td>0.0312</td></tr></table></div>\n')
    body, messages = render_landing([SimpleNamespace(target="headline.html", path=fragment)], CATEGORIES)
    assert messages == ""
    assert fragment.read_text() in body
    assert "for the families llama, qwen2" in " ".join(body.split())
    links = [body.index(f"javascript:app.showCategory('{quote(name)}')") for name in CATEGORIES]
    assert links == sorted(links)  # in their numbered order
    assert body.index(HTML_ID) < links[0]  # the table comes first


def test_without_the_headline_table_the_landing_page_says_how_to_build_it() -> None:
    body, messages = render_landing([], ["1. Diagnosis"])
    assert messages == ""
    assert "rule headline_table" in body and HTML_ID not in body


def test_every_described_section_is_a_category_of_the_rules() -> None:
    """The landing page describes the categories the rules use: a renamed category would lose its description."""
    rules = "".join(path.read_text() for path in (REPO / "rules").rglob("*.smk"))
    for name in CATEGORIES:
        assert f'category="{name}"' in rules, name
        assert f'"{name}":' in LANDING.read_text(), name


class _Rows(HTMLParser):
    """The headline fragment's rows: (scope, quantity) -> {column: text}, and its headings' scopes."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[tuple[str, str], dict[str, str]] = {}
        self.headings: list[str] = []
        self._row: dict[str, str] | None = None
        self._column: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "tr" and "data-quantity" in values:
            self._row = self.rows.setdefault((values["data-scope"], values["data-quantity"]), {})
        elif tag == "td" and self._row is not None:
            self._column = values["data-column"]
            self._row[self._column] = ""
        elif tag == "h3":
            self.headings.append(values["data-scope"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._column = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._column is not None:
            self._row[self._column] += data


def test_the_headline_fragment_holds_the_frame_text_escaped() -> None:
    figures = load_paper_figures(REPO / "reference" / "paper_figures.yaml")
    frame = pd.DataFrame([
        {"scope": "llama", "comparison": "organism stand-in", "run_models": "organism:llama/base -> organism:llama/aligned",
         "paper_model": "Llama-3.1-8B", "quantity": "kappa_gt_8", "description": "kappa > 8 over layer x reference pairs",
         "measured": "1 of 8 <pairs> & 1 certify only rank <= 1", "paper": "0 of 32", "paper_source": "Sec. 4 'Table 3'"},
        {"scope": "odd", "comparison": "none", "run_models": "/m/base -> /m/aligned", "paper_model": "",
         "quantity": "rho_template", "description": "rho_eps", "measured": "0.0312 (mean rank_eps 2 of d = 64)",
         "paper": "-", "paper_source": ""},
    ])
    parser = _Rows()
    parser.feed(headline_html(frame, figures))
    assert parser.headings == ["llama", "odd"]
    assert parser.rows[("llama", "kappa_gt_8")] == {"description": "kappa > 8 over layer x reference pairs",
                                                    "measured": "1 of 8 <pairs> & 1 certify only rank <= 1",
                                                    "paper": "0 of 32", "paper_source": "Sec. 4 'Table 3'"}
    # a family with no paper counterpart has no paper columns
    assert parser.rows[("odd", "rho_template")] == {"description": "rho_eps", "measured": "0.0312 (mean rank_eps 2 of d = 64)"}


@pytest.mark.parametrize("name", ["headline.html"])
def test_the_headline_rule_reports_the_fragment_the_landing_page_reads(name: str) -> None:
    rule = (REPO / "rules" / "headline.smk").read_text()
    assert f'report("results/tables/{name}"' in rule and f'"equalto", "{name}"' in LANDING.read_text()

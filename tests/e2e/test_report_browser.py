"""The demo's report.html as a reader sees it: opened in headless Chromium, it lands on the headline table (the
same families and figures as results/tables/headline.parquet), every figure in it decodes, and nothing is
logged as an error.

Needs Chromium (Debian's `chromium` package, which `.ci/run` installs). Without one the test is skipped with the
reason; with RANKAUDIT_REQUIRE_BROWSER=1 (set by .ci/run) it fails instead, so CI cannot pass by skipping it.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator

import pandas as pd
import pytest
from headless_chromium import HeadlessChromium, find_chromium

pytestmark = pytest.mark.slow

RENDER_TIMEOUT_S = 90
# the rows of the landing table, as rendered text: scope, quantity, and each cell by its column
READ_ROWS = """Array.from(document.querySelectorAll('#rankaudit-headline tr[data-quantity]')).map(row => ({
    scope: row.dataset.scope, quantity: row.dataset.quantity,
    cells: Object.fromEntries(Array.from(row.cells).map(cell => [cell.dataset.column, cell.textContent]))}))"""
# where the landing page's title and headline table are when the report opens: both must start on screen (a pane
# that opened scrolled to the middle of a tall page would put them above the top, out of reach)
HEADLINE_BOX = """(() => { const box = document.querySelector('#rankaudit-headline').getBoundingClientRect();
    const title = document.querySelector('h1.title').getBoundingClientRect();
    return {title_top: title.top, top: box.top, left: box.left, width: box.width, height: box.height,
            viewport_height: window.innerHeight, viewport_width: window.innerWidth}; })()"""
IMAGE_RESULTS = "Object.entries(results).filter(([path, entry]) => entry.mime_type.startsWith('image/')).map(([path]) => path)"
# shows one figure in the report's own result view and waits until the browser has decoded it: its size in pixels,
# the decoding error, or null when the view never showed it
SHOW_FIGURE = """(async path => {{
    app.setView({{content: "img", contentPath: results[path].data_uri, resultPath: path}});
    for (let i = 0; i < 200; i++) {{
        const image = Array.from(document.images).find(img => img.src === results[path].data_uri);
        if (image) {{
            try {{ await image.decode(); }} catch (error) {{ return error.message; }}
            return [image.naturalWidth, image.naturalHeight];
        }}
        await new Promise(resolve => setTimeout(resolve, 50));
    }}
    return null;
}})({path})"""


@pytest.fixture(scope="session")
def chromium() -> str:
    binary, problem = find_chromium()
    if binary is None:
        message = f"{problem}; .ci/run installs it (RANKAUDIT_REQUIRE_BROWSER=1 makes this a failure)"
        if os.environ.get("RANKAUDIT_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="module")
def opened_report(chromium: str, demo_report, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeadlessChromium]:
    """The demo's report.html, opened and rendered up to its headline table; a screenshot of the landing page is
    left next to the browser log in the test's temporary directory."""
    report, _ = demo_report
    scratch = tmp_path_factory.mktemp("chromium")
    browser = HeadlessChromium(chromium, scratch / "profile", scratch / "chromium.log")
    try:
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable")
        browser.send("Page.navigate", {"url": report.resolve().as_uri()})
        browser.wait_for("document.readyState === 'complete' && document.querySelector('#rankaudit-headline tr') !== null",
                         timeout=RENDER_TIMEOUT_S)
        shot = browser.send("Page.captureScreenshot", {"format": "png"})["data"]
        (scratch / "landing.png").write_bytes(base64.b64decode(shot))
        yield browser
    finally:
        browser.close()


def test_the_report_opens_on_the_headline_table(opened_report: HeadlessChromium, demo_run) -> None:
    workdir, _ = demo_run
    expected = pd.read_parquet(workdir / "results" / "tables" / "headline.parquet")
    rows = opened_report.evaluate(READ_ROWS)
    assert [(row["scope"], row["quantity"]) for row in rows] == list(zip(expected["scope"], expected["quantity"]))
    for row, (_, want) in zip(rows, expected.iterrows()):
        assert row["cells"]["measured"] == want["measured"], (row["scope"], row["quantity"])
        assert row["cells"]["description"] == want["description"]
        if "paper" in row["cells"]:
            assert (row["cells"]["paper"], row["cells"]["paper_source"]) == (want["paper"], want["paper_source"])
    families = opened_report.evaluate("Array.from(document.querySelectorAll('#rankaudit-headline h3')).map(h => h.dataset.scope)")
    assert families == list(dict.fromkeys(expected["scope"]))
    box = opened_report.evaluate(HEADLINE_BOX)
    assert 0 <= box["title_top"] < box["top"] < box["viewport_height"] / 2, box
    assert box["left"] >= 0 and box["width"] > box["viewport_width"] / 3 and box["height"] > 200, box


def test_the_landing_page_links_every_section(opened_report: HeadlessChromium) -> None:
    categories = opened_report.evaluate("Object.keys(categories)")
    links = opened_report.evaluate("Array.from(document.querySelectorAll('a[href^=\"javascript:app.showCategory\"]')).map(a => a.textContent)")
    assert sorted(links) == sorted(categories) and links[0] == "0. Headline"
    numbers = [name.split(".")[0] for name in categories]
    assert len(numbers) == len(set(numbers)), f"two categories share a number: {categories}"


def test_every_figure_loads(opened_report: HeadlessChromium, demo_run) -> None:
    workdir, _ = demo_run
    figures = opened_report.evaluate(IMAGE_RESULTS)
    on_disk = sorted(str(path.relative_to(workdir)) for path in (workdir / "results" / "figures").rglob("*.png"))
    assert sorted(figures) == on_disk
    for path in figures:
        size = opened_report.evaluate(SHOW_FIGURE.format(path=json.dumps(path)))
        assert isinstance(size, list) and min(size) > 100, f"{path} did not load in the report: {size}"
    broken = opened_report.evaluate("Array.from(document.images).filter(img => !img.complete || img.naturalWidth === 0).length")
    assert broken == 0


def test_the_report_logs_no_errors(opened_report: HeadlessChromium) -> None:
    assert opened_report.console_errors() == []

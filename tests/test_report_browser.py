"""The report opened in headless Chromium: no console errors (the page's CSP reports any
network load or injected script there), every section present, a screenshot written, data
strings rendered as text, and the per-sample table sorted by clicking its headers."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from test_report import EVIL_QUESTION, HEADINGS, _full_run, tables_of
from unlearnscope.report import build_report, load_run
from unlearnscope.report.glance import SAMPLE_TABLE_ID, sample_frame
from unlearnscope.report.html import csp_meta
from unlearnscope.runs import write_parquet

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


def chromium(page: Path, profile: Path, *mode: str) -> tuple[str, list[str]]:
    """Run headless Chromium on `page` with `mode` flags (e.g. `--dump-dom`); (stdout, the
    page's console messages). Host names resolve to nothing, so a network load fails."""
    result = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--host-resolver-rules=MAP * ~NOTFOUND", *mode, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True)
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, Path]:
    root = _full_run(tmp_path_factory.mktemp("run"))
    return root, build_report(root, top_n=0.25)


def test_report_renders_without_errors_or_network(report, tmp_path):
    _, path = report
    page = path.read_text(encoding="utf-8")
    references = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert references and all(r.startswith(("data:image/png;base64,", "#")) for r in references)
    dom, console = chromium(path, tmp_path / "profile", "--dump-dom")
    assert console == []
    for heading in HEADINGS:
        assert f"<h2>{heading}</h2>" in dom
    # the question is text in the DOM: escaped, and neither element it spells exists
    escaped = EVIL_QUESTION.replace("<", "&lt;").replace(">", "&gt;")
    assert escaped in dom
    assert dom.count("<script") == 1 and "<img src=x" not in dom and 'src="x"' not in dom
    rows = [row for table in tables_of(dom) for row in table]
    assert any(EVIL_QUESTION in row for row in rows)
    # the sort script ran: the per-sample table's headers are clickable
    assert f'id="{SAMPLE_TABLE_ID}"' in dom
    shot = tmp_path / "shot.png"
    chromium(path, tmp_path / "profile", "--window-size=1200,3000", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_an_injected_script_is_refused_by_the_page_policy(report, tmp_path):
    _, path = report
    page = path.read_text(encoding="utf-8")
    injected = tmp_path / "injected.html"
    injected.write_text(page.replace("</body>", "<script>document.title='ran'</script></body>"),
                        encoding="utf-8")
    dom, console = chromium(injected, tmp_path / "profile", "--dump-dom")
    assert "<title>ran</title>" not in dom
    assert any("Content Security Policy" in line for line in console)


CLICKS_HEAD = """<script>
function order() {
  var rows = document.getElementById("TABLE_ID").tBodies[0].rows;
  return Array.prototype.map.call(rows, function (r) { return r.cells[0].textContent; });
}
function header(name) {
  var cells = document.getElementById("TABLE_ID").tHead.rows[0].cells;
  var named = function (c) { return c.textContent === name; };
  return Array.prototype.filter.call(cells, named)[0];
}
var seen = {};
""".replace("TABLE_ID", SAMPLE_TABLE_ID)
CLICKS = """
header("loss").click(); seen.loss_up = order();
header("loss").click(); seen.loss_down = order();
header("efficacy: npo").click(); seen.npo_up = order();
header("question").click(); seen.question_up = order();
"""
CLICKS_TAIL = """
var out = document.createElement("pre");
out.id = "orders"; out.textContent = JSON.stringify(seen);
document.body.appendChild(out);
</script></body>"""


def clicked_orders(path: Path, clicks: str, folder: Path) -> dict[str, list[str]]:
    """Open a copy of the report at `path` whose end runs `clicks` (without the page policy,
    which would refuse that script) and return the row orders it recorded."""
    page = path.read_text(encoding="utf-8")
    assert csp_meta() in page
    clicked = folder / "clicked.html"
    clicked.write_text(page.replace(csp_meta(), "").replace("</body>", CLICKS_HEAD + clicks
                                                            + CLICKS_TAIL), encoding="utf-8")
    dom, console = chromium(clicked, folder / "profile", "--dump-dom")
    assert console == []
    found = re.search(r'<pre id="orders">(.*?)</pre>', dom, flags=re.S)
    return json.loads(html.unescape(found.group(1)))


def test_clicking_a_header_sorts_the_sample_table(report, tmp_path):
    root, path = report
    orders = clicked_orders(path, CLICKS, tmp_path)
    frame = sample_frame(load_run(root))
    loss_up = frame.sort_values("loss", kind="stable")["sample_id"].tolist()
    assert orders["loss_up"] == loss_up
    assert orders["loss_down"] == loss_up[::-1]  # no ties among the fixture's losses
    by_npo = frame.set_index("sample_id").loc[loss_up[::-1], "efficacy: npo"]
    assert orders["npo_up"] == by_npo.sort_values(kind="stable").index.tolist()
    assert orders["npo_up"] != orders["loss_up"]
    assert orders["question_up"][0] == "s0"  # "Question s0?" first, "Who wrote ..." last
    assert orders["question_up"][-1] == "<script>alert(1)</script>"


def test_missing_values_sort_last_both_ways(tmp_path):
    scores = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "scorer": "loss",
                           "value": [3.0, 1.0, 2.0, 10.0], "difficulty": [3.0, 1.0, 2.0, 10.0]})
    write_parquet(tmp_path / "run" / "scores.parquet", scores)
    write_parquet(tmp_path / "run" / "unlearn" / "m" / "outcomes.parquet",
                  pd.DataFrame({"sample_id": ["a", "b", "d"], "efficacy": [0.5, 0.25, 2.0]}))
    path = build_report(tmp_path / "run")
    orders = clicked_orders(path, """
header("efficacy: m").click(); seen.up = order();
header("efficacy: m").click(); seen.down = order();
header("loss").click(); seen.loss_up = order();
""", tmp_path)
    # numbers, not text: 10 sorts after 3 and 2.0 after 0.5
    assert orders == {"up": ["b", "a", "d", "c"], "down": ["d", "a", "b", "c"],
                      "loss_up": ["b", "c", "a", "d"]}

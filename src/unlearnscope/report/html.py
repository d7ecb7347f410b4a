"""Assemble the self-contained `report.html` of a run folder.

The page has no external resources: styles are inline, plots are embedded PNG data URIs and
its one script (sorting the per-sample table) is inline and allowed by hash.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from html import escape
from pathlib import Path

from unlearnscope.layout import REPORT_FILE
from unlearnscope.report import beyond, crossmethod, reliability, sections
from unlearnscope.report.glance import SORT_SCRIPT, script_hash
from unlearnscope.report.rundata import RunData, load_run
from unlearnscope.report.signatures import DEFAULT_TOP_N
from unlearnscope.runs import write_text

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { border-bottom: 2px solid #444; }
h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table.data { border-collapse: collapse; margin: 0.6em 0; font-size: 0.85em; }
table.data th, table.data td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
table.data th { background: #f0f0f0; }
img { max-width: 100%; display: block; margin: 0.6em 0; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.missing { color: #8a5a00; background: #fff6e0; padding: 0.4em; }
.problem { color: #a00; background: #fde8e8; padding: 0.4em; }
.note { color: #444; }
nav li { margin: 0.1em 0; }
p.lead { font-size: 1.05em; font-weight: bold; }
table.grid td { text-align: center; min-width: 6em; }
table.grid th small { font-weight: normal; }
table.sortable thead th { cursor: pointer; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
table.sortable td.text { text-align: left; max-width: 30em; }
"""


def section_list(top_n: float) -> list[tuple[str, str, Callable[[RunData], str]]]:
    """(anchor, heading, renderer) of every section, in page order."""
    return [
        ("configuration", "1. Run configuration and summary", sections.configuration),
        ("distributions", "2. Score distributions", sections.distributions),
        ("measured", "3. Scorers vs measured difficulty", sections.versus_measured),
        ("sets", "4. Easy/hard set experiment", sections.easy_hard_sets),
        ("circuits", "5. Circuit signatures of easy vs hard samples",
         partial(sections.circuit_signatures, top_n=top_n)),
        ("scorer-correlations", "6. Correlations between scorers",
         sections.scorer_correlations),
        ("schedules", "7. Schedule comparison", sections.schedules),
        ("methods", "8. Unlearning methods and TOFU metrics", sections.methods),
        ("reliability", "9. Reliability of measured difficulty (noise ceilings)",
         reliability.reliability),
        ("cross-method", "10. CUD across unlearning methods", crossmethod.cross_method),
        ("cud-choice", "11. CUD configuration chosen on the fit half", crossmethod.cud_choice),
        ("controls", "12. Trivial controls and partial correlations", beyond.controls),
        ("prediction", "13. Learned difficulty predictor", beyond.prediction),
        ("circuit-guided", "14. Circuit-guided unlearning", beyond.circuit_guided),
        ("depth-claims", "15. Edge depth and the CUD paper's circuit claims",
         beyond.depth_and_claims),
        ("samples", "16. Per-sample difficulty and efficacy", sections.samples),
    ]


def render_report(data: RunData, *, top_n: float = DEFAULT_TOP_N) -> str:
    """The whole page as one HTML string."""
    entries = section_list(top_n)
    title = f"unlearnscope report: {data.run_dir.name}"
    nav = "".join(f'<li><a href="#{anchor}">{escape(heading)}</a></li>'
                  for anchor, heading, _ in entries)
    body = "".join(f'<section id="{anchor}"><h2>{escape(heading)}</h2>{render(data)}</section>'
                   for anchor, heading, render in entries)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{csp_meta()}'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><h1>{escape(title)}</h1><nav><ol>{nav}</ol></nav>{body}"
            f"<script>{SORT_SCRIPT}</script></body></html>\n")


def csp_meta() -> str:
    """The page's Content-Security-Policy: no network loads (images only as data URIs), inline
    styles, and no script but `SORT_SCRIPT` (by its hash), so that text injected from data
    could not run even if it escaped escaping."""
    policy = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
              f"script-src {script_hash()}")
    return f'<meta http-equiv="Content-Security-Policy" content="{policy}">'



def build_report(run_dir: str | Path, out: str | Path | None = None, *,
                 top_n: float = DEFAULT_TOP_N) -> Path:
    """Read the run folder, write `report.html` (default `run_dir/report.html`) atomically,
    and return its path. `top_n`: edges per circuit in the circuit signatures, a count or a
    fraction of the graph's edges."""
    data = load_run(run_dir)
    path = Path(out) if out is not None else data.run_dir / REPORT_FILE
    write_text(path, render_report(data, top_n=top_n))
    return path

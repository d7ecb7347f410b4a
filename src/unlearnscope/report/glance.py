"""The report's at-a-glance views: the scorer x method correlation heatmap (an HTML table with
coloured cells, each holding its Spearman and bootstrap interval) and the per-sample table,
sortable by its headers with the inline script `SORT_SCRIPT`."""

from __future__ import annotations

import base64
import hashlib
from html import escape

import numpy as np
import pandas as pd

from unlearnscope.evaluation.validation import MEAN_METHOD
from unlearnscope.report import markup as m
from unlearnscope.report.reliability import method_ceilings
from unlearnscope.report.rundata import RunData

POSITIVE_RGB = (214, 96, 77)  # the colour of rho = +1; rho = 0 is white
NEGATIVE_RGB = (67, 147, 195)  # the colour of rho = -1
MISSING_RGB = (244, 244, 244)
SAMPLE_TABLE_ID = "sample-table"

# Sorts a table.sortable by the clicked header: numbers (a cell's data-value, '' = missing,
# shown last) or text; a second click reverses. Array.prototype.sort is stable.
SORT_SCRIPT = """
function sortRows(table, column, descending) {
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  function key(row) {
    var cell = row.cells[column], value = cell.getAttribute("data-value");
    if (value === null) { return cell.textContent; }
    return value === "" ? NaN : parseFloat(value);
  }
  rows.sort(function (a, b) {
    var x = key(a), y = key(b);
    if (typeof x === "number") {
      if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }
      return descending ? y - x : x - y;
    }
    return descending ? y.localeCompare(x) : x.localeCompare(y);
  });
  rows.forEach(function (row) { body.appendChild(row); });
}
document.querySelectorAll("table.sortable").forEach(function (table) {
  var headers = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(headers, function (header, column) {
    header.addEventListener("click", function () {
      var descending = header.getAttribute("aria-sort") === "ascending";
      sortRows(table, column, descending);
      Array.prototype.forEach.call(headers, function (h) { h.removeAttribute("aria-sort"); });
      header.setAttribute("aria-sort", descending ? "descending" : "ascending");
    });
  });
});
"""


def script_hash(script: str = SORT_SCRIPT) -> str:
    """The Content-Security-Policy source that allows exactly this inline script."""
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def cell_colour(rho: float) -> str:
    """Background of a heatmap cell: white at 0, shading linearly to `POSITIVE_RGB` at +1 and
    `NEGATIVE_RGB` at -1 (light enough at the ends for dark text)."""
    if not np.isfinite(rho):
        rgb = MISSING_RGB
    else:
        end, t = (POSITIVE_RGB if rho > 0 else NEGATIVE_RGB), min(abs(rho), 1.0)
        rgb = tuple(round(255 + (e - 255) * t) for e in end)
    return "#" + "".join(f"{c:02x}" for c in rgb)


def grid_columns(correlations: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(scorers, methods) of the heatmap: methods in file order with `mean` last; scorers by
    decreasing Spearman in the last column (missing last), ties in file order."""
    methods = list(dict.fromkeys(correlations["method"].astype(str)))
    methods = [x for x in methods if x != MEAN_METHOD] + (
        [MEAN_METHOD] if MEAN_METHOD in methods else [])
    order = correlations[correlations["method"].astype(str) == methods[-1]]
    ranked = order.sort_values("spearman", ascending=False, kind="stable", na_position="last")
    scorers = list(dict.fromkeys([*ranked["scorer"].astype(str),
                                  *correlations["scorer"].astype(str)]))
    return scorers, methods


def correlation_grid(data: RunData) -> str:
    """Scorer (rows) x method (columns) heatmap of `validation/correlations.csv`: each cell its
    Spearman with the measured difficulty, its 95% bootstrap interval and, where known, the
    fraction of the noise ceiling; each method's header its noise ceiling from
    `validation/reliability.csv`. Cells whose interval excludes 0 are bold."""
    table = data.correlations
    scorers, methods = grid_columns(table)
    ceilings = method_ceilings(data)
    header = ["<th>scorer</th>"]
    for method in methods:
        row = ceilings.get(method)
        if method == MEAN_METHOD:
            note = "method average"
        elif row is None:
            note = "ceiling: no reliability table"
        elif np.isfinite(row["ceiling"]):
            note = "ceiling " + m.interval(row["ceiling"], row["ceiling_low"], row["ceiling_high"])
        else:
            note = f"ceiling unknown ({int(row['n_seeds'])} seed)"
        header.append(f'<th>{escape(method)}<br><small>{escape(note)}</small></th>')
    cells = {(str(r["scorer"]), str(r["method"])): r for _, r in table.iterrows()}
    body = []
    for scorer in scorers:
        row_html = [f"<th>{escape(scorer)}</th>"]
        for method in methods:
            r = cells.get((scorer, method))
            rho = float(r["spearman"]) if r is not None else float("nan")
            if r is None or not np.isfinite(rho):
                row_html.append(f'<td style="background:{cell_colour(rho)}">–</td>')
                continue
            low, high = float(r["spearman_low"]), float(r["spearman_high"])
            fraction = float(r.get("fraction_of_ceiling", float("nan")))
            text = escape(m.interval(rho, low, high)).replace(" [", "<br>[", 1)
            if np.isfinite(fraction):
                text += f"<br><small>{fraction:.2f} of ceiling</small>"
            weight = ";font-weight:bold" if m.excludes_zero(low, high) else ""
            row_html.append(f'<td style="background:{cell_colour(rho)}{weight}">{text}</td>')
        body.append("<tr>" + "".join(row_html) + "</tr>")
    return (f'<table class="data grid"><thead><tr>{"".join(header)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def sample_frame(data: RunData) -> pd.DataFrame:
    """One row per sample (scores' order, then samples only some outcome table has): `sample_id`,
    `question` (when `samples.parquet` exists), each scorer's difficulty (column = scorer), and
    each method's measured efficacy (`efficacy: <method>`, the seed mean where seeds exist)."""
    columns: list[pd.Series] = []
    if data.scores is not None:
        difficulty = data.scores.pivot_table(index="sample_id", columns="scorer",
                                             values="difficulty", aggfunc="first", sort=False)
        columns += [difficulty[c].rename(str(c)) for c in difficulty.columns]
    for name, run in data.methods.items():
        if run.outcomes is not None:
            columns.append(run.outcomes.set_index("sample_id")["efficacy"]
                           .rename(f"efficacy: {name}"))
    ids = list(dict.fromkeys(i for c in columns for i in c.index))
    frame = pd.DataFrame({c.name: c.reindex(ids) for c in columns}, index=ids)
    if data.samples is not None:
        questions = data.samples.drop_duplicates("sample_id").set_index("sample_id")["question"]
        frame.insert(0, "question", questions.reindex(ids).astype(object))
    frame.index.name = "sample_id"
    return frame.reset_index()


def sample_table(frame: pd.DataFrame) -> str:
    """`frame` as a sortable HTML table: text cells escaped, numeric cells with their full value
    in `data-value` ('' when missing) and four significant digits shown."""
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    header = "".join(f'<th title="sort">{escape(str(c))}</th>' for c in frame.columns)
    rows = []
    for values in frame.itertuples(index=False):
        cells = []
        for value, is_number in zip(values, numeric, strict=True):
            if is_number:
                finite = value is not None and np.isfinite(value)
                cells.append(f'<td data-value="{repr(float(value)) if finite else ""}">'
                             f'{m.number(float(value)) if finite else "–"}</td>')
            else:
                text = "–" if value is None or (isinstance(value, float) and np.isnan(value)) \
                    else str(value)
                cells.append(f'<td class="text">{escape(text)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="data sortable" id="{SAMPLE_TABLE_ID}"><thead><tr>{header}</tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table>')

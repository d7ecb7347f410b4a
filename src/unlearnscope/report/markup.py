"""Small HTML building blocks. Every string that can come from data passes `html.escape`
(pandas' `to_html` escapes cell values and labels itself)."""

from __future__ import annotations

import json
from html import escape
from typing import Any

import numpy as np
import pandas as pd


def number(value: Any) -> str:
    """Four significant digits for floats; other values as text."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(frame: pd.DataFrame, *, index: bool = False) -> str:
    """An escaped HTML table; floats with four significant digits, missing values as '–'."""
    return frame.to_html(index=index, escape=True, na_rep="–", float_format=number, border=0,
                         classes="data")


def key_value_table(items: dict[str, Any]) -> str:
    """Two-column table of names and values (nested values as compact JSON)."""
    rows = "".join(
        f"<tr><th>{escape(str(key))}</th><td>{escape(_value_text(value))}</td></tr>"
        for key, value in items.items())
    return f'<table class="data">{rows}</table>'


def _value_text(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return "–" if value is None else number(value)


def interval(value: float, low: float, high: float, digits: int = 2) -> str:
    """`value [low, high]` with `digits` decimals ('–' for a missing value, no brackets for a
    missing bound)."""
    if not np.isfinite(value):
        return "–"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def excludes_zero(low: float, high: float) -> bool:
    """Whether an interval lies entirely on one side of 0."""
    return bool(low > 0 or high < 0)


def lead(text: str) -> str:
    """The sentence a section opens with (escaped)."""
    return f'<p class="lead">{escape(text)}</p>'


def image(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{escape(alt)}">'


def paragraph(text: str, css: str = "note") -> str:
    """A paragraph of plain text (escaped)."""
    return f'<p class="{css}">{escape(text)}</p>'


def not_computed(what: str, command: str) -> str:
    return (f'<p class="missing">{escape(what)}: not computed in this run (run '
            f"<code>{escape(command)}</code>).</p>")


def problem(message: str) -> str:
    return f'<p class="problem">could not use {escape(message)}</p>'


def details(summary: str, body_html: str) -> str:
    return f"<details><summary>{escape(summary)}</summary>{body_html}</details>"


def preformatted(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"

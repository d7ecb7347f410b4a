"""The report's figures as PNG data URIs, drawn on `matplotlib.figure.Figure` (Agg canvas,
no pyplot global state), so the page embeds them and needs no network or side files."""

from __future__ import annotations

import base64
import io
import math
import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

DPI = 90


def figure_uri(fig: Figure, dpi: int = DPI) -> str:
    """The figure (laid out tight) as a `data:image/png;base64,...` URI of a `dpi` PNG."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=dpi)
    return png_uri(buffer.getvalue())


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


TITLE_SIZE = 9  # points, subplot titles and axis labels of the grids
CHAR_WIDTH = 0.6  # a character's mean width as a fraction of the font size


def wrapped(text: str, width_in: float, fontsize: float = TITLE_SIZE) -> str:
    """`text` broken into lines that fit `width_in` inches at `fontsize` points, so that long
    scorer names do not run into the neighbouring subplot."""
    columns = max(8, int(width_in * 72 / (fontsize * CHAR_WIDTH)))
    return textwrap.fill(text, width=columns, break_on_hyphens=False)


def _label(ax, *, title: str, xlabel: str, ylabel: str) -> None:
    """Title and axis labels of a grid subplot, each wrapped to the subplot's width."""
    width = ax.get_position().width * ax.figure.get_figwidth()
    ax.set_title(wrapped(title, width), fontsize=TITLE_SIZE)
    ax.set_xlabel(wrapped(xlabel, width), fontsize=TITLE_SIZE)
    ax.set_ylabel(ylabel, fontsize=TITLE_SIZE)


def _grid(n: int, columns: int = 4, size: tuple[float, float] = (3.2, 2.6)):
    """A figure with `n` subplots in rows of `columns`; unused axes are hidden."""
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(size[0] * cols, size[1] * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def score_histograms(scores: pd.DataFrame) -> str:
    """One histogram of the raw `value` per scorer; `scores` is the long score table."""
    return figure_uri(score_histogram_figure(scores))


def score_histogram_figure(scores: pd.DataFrame) -> Figure:
    scorers = sorted(scores["scorer"].unique())
    fig, axes = _grid(len(scorers))
    for ax, scorer in zip(axes, scorers, strict=True):
        values = scores.loc[scores["scorer"] == scorer, "value"].to_numpy(dtype=float)
        ax.hist(values[np.isfinite(values)], bins=20, color="#4C72B0")
        _label(ax, title=scorer, xlabel="value", ylabel="samples")
    return fig


def difficulty_scatters(pairs: dict[str, pd.DataFrame], titles: dict[str, str]) -> str:
    """Per scorer, its difficulty (x) against the measured difficulty (y); `pairs` maps a
    scorer to a frame with columns `difficulty` and `measured_difficulty`."""
    return figure_uri(difficulty_scatter_figure(pairs, titles))


def difficulty_scatter_figure(pairs: dict[str, pd.DataFrame], titles: dict[str, str]
                              ) -> Figure:
    fig, axes = _grid(len(pairs))
    for ax, (scorer, frame) in zip(axes, sorted(pairs.items()), strict=True):
        ax.scatter(frame["difficulty"], frame["measured_difficulty"], s=10, alpha=0.7)
        _label(ax, title=titles[scorer], xlabel=f"{scorer} difficulty",
               ylabel="measured (mean rank)")
    return fig


def correlation_heatmap(matrix: pd.DataFrame) -> str:
    """Heatmap of a square correlation matrix in [-1, 1], values written in the cells."""
    n = len(matrix)
    fig = Figure(figsize=(max(4.0, 0.6 * n + 2), max(3.5, 0.6 * n + 1.5)))
    ax = fig.subplots()
    image = ax.imshow(matrix.to_numpy(dtype=float), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(n), labels=list(matrix.columns), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(matrix.index))
    if n <= 16:
        for (i, j), value in np.ndenumerate(matrix.to_numpy(dtype=float)):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="Spearman")
    return figure_uri(fig)


def grouped_bars(table: pd.DataFrame, *, group: str, bar: str, value: str, title: str) -> str:
    """Bars of `value`: one cluster per `group` value, one bar per `bar` value (means where
    a (group, bar) pair occurs in several rows)."""
    means = table.pivot_table(index=group, columns=bar, values=value, aggfunc="mean")
    x = np.arange(len(means.index))
    width = 0.8 / max(len(means.columns), 1)
    fig = Figure(figsize=(max(5.0, 0.6 * len(x) * len(means.columns)), 3.5))
    ax = fig.subplots()
    for i, column in enumerate(means.columns):
        ax.bar(x + (i - (len(means.columns) - 1) / 2) * width, means[column], width,
               label=str(column))
    ax.set_xticks(x, labels=[str(v) for v in means.index])
    ax.set(title=title, ylabel=value)
    ax.legend(fontsize=7)
    return figure_uri(fig)


def efficacy_histograms(efficacy: dict[str, np.ndarray]) -> str:
    """Histogram of the per-sample efficacy of each unlearning method."""
    fig, axes = _grid(len(efficacy))
    for ax, (method, values) in zip(axes, sorted(efficacy.items()), strict=True):
        ax.hist(values, bins=20, range=(0, 1), color="#DD8452")
        _label(ax, title=method, xlabel="efficacy", ylabel="samples")
    return figure_uri(fig)

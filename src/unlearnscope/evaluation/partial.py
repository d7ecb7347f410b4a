"""Partial Spearman correlation: does a scorer rank measured difficulty beyond a control?

The partial Spearman of x and y given z: rank all three (ties get average ranks), regress
the ranks of x and of y on the ranks of z (with an intercept), and take the Pearson
correlation of the two residuals. It equals the closed form on the rank correlations,
r_xy.z = (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)). A scorer that only re-discovers
answer length keeps its raw Spearman but falls to about zero here. Like every validation
number it is computed on held-out samples only (anchor-fit ids excluded).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from unlearnscope.errors import DataError
from unlearnscope.evaluation.experiments import to_markdown, write_table
from unlearnscope.evaluation.validation import difficulty_matrix, measured_difficulty
from unlearnscope.layout import PARTIAL_FILE, VALIDATION_DIR

PARTIAL_COLUMNS = ["scorer", "method", "control", "partial_spearman", "partial_spearman_low",
                   "partial_spearman_high", "n"]
DEFAULT_CONTROL = "answer_length"


def _residual_correlation(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Row-wise Pearson of the residuals of `x` and `y` (`[..., n]` ranks) after a least
    squares fit on `z` with an intercept; NaN where a residual is constant."""
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    z = z - z.mean(axis=-1, keepdims=True)
    zz = (z * z).sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        ex = x - (x * z).sum(axis=-1, keepdims=True) / zz * z
        ey = y - (y * z).sum(axis=-1, keepdims=True) / zz * z
        rho = (ex * ey).sum(axis=-1) / np.sqrt((ex * ex).sum(axis=-1) * (ey * ey).sum(axis=-1))
    # residuals that are zero up to rounding (x or y a function of z) rank nothing
    scale = np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))
    tiny = np.minimum((ex * ex).sum(axis=-1), (ey * ey).sum(axis=-1)) <= 1e-20 * scale
    return np.where(tiny | ~np.isfinite(rho), np.nan, rho)


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """Partial Spearman of `x` and `y` (`[n]` each) controlling for `z` (`[n]`); NaN when
    z is constant or x or y is a function of z's ranks."""
    x, y, z = (np.asarray(v, dtype=np.float64) for v in (x, y, z))
    if not len(x) == len(y) == len(z):
        raise ValueError(f"lengths differ: {len(x)}, {len(y)}, {len(z)}")
    if len(x) < 4 or np.ptp(z) == 0:
        return float("nan")
    return float(_residual_correlation(stats.rankdata(x), stats.rankdata(y),
                                       stats.rankdata(z)))


def bootstrap_partial_spearman_interval(x: np.ndarray, y: np.ndarray, z: np.ndarray, *,
                                        n_boot: int, seed: int, level: float = 0.95
                                        ) -> tuple[float, float]:
    """Percentile-bootstrap interval of `partial_spearman(x, y, z)`, resampling samples.

    All `n_boot` resamples at once (the same draws as
    `validation.bootstrap_spearman_interval` for the same seed): ranks of the `[n_boot, n]`
    resampled arrays along axis 1, then the row-wise residual correlation. Resamples where
    the partial is undefined are left out of the quantiles.
    """
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(x), size=(n_boot, len(x)))
    ranks = [stats.rankdata(np.asarray(v, dtype=np.float64)[index], axis=1) for v in (x, y, z)]
    rho = _residual_correlation(*ranks)
    rho = rho[np.isfinite(rho)]
    if rho.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2
    low, high = np.quantile(rho, [tail, 1.0 - tail])
    return float(low), float(high)


def partial_correlations(scores: pd.DataFrame, outcomes: Mapping[str, pd.DataFrame], *,
                         control: str = DEFAULT_CONTROL, exclude_ids: Iterable[str] = (),
                         n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (scorer, method) with `PARTIAL_COLUMNS`: every scorer of the score table
    but `control`, against measured difficulty (`validation.measured_difficulty`, methods in
    the given order, then `mean`), controlling for the `control` scorer's difficulty. Held-out
    samples only; `n` counts those the scorer, the control and the outcomes all cover."""
    excluded = set(exclude_ids)
    scorers = difficulty_matrix(scores, excluded)
    if control not in scorers.columns:
        raise DataError(f"the score table has no '{control}' rows to control for (score the "
                        f"samples with it too)", field="scorer")
    measured = measured_difficulty(outcomes, excluded)
    rows = []
    for scorer in scorers.columns:
        if scorer == control:
            continue
        for method in measured.columns:
            frame = pd.concat([scorers[scorer], measured[method], scorers[control]], axis=1,
                              join="inner").dropna()
            x, y, z = (frame.iloc[:, i].to_numpy() for i in range(3))
            rho = partial_spearman(x, y, z)
            low, high = ((float("nan"), float("nan")) if np.isnan(rho) else
                         bootstrap_partial_spearman_interval(x, y, z, n_boot=n_boot, seed=seed))
            rows.append({"scorer": scorer, "method": method, "control": control,
                         "partial_spearman": rho, "partial_spearman_low": low,
                         "partial_spearman_high": high, "n": len(frame)})
    return pd.DataFrame(rows, columns=PARTIAL_COLUMNS)


def partial_markdown(table: pd.DataFrame) -> str:
    """The partial table with `rho [low, high]`, 3 decimals."""
    shown = pd.DataFrame({
        "scorer": table["scorer"], "method": table["method"], "control": table["control"],
        "partial spearman [95% CI]": [
            f"{r:.3f} [{lo:.3f}, {hi:.3f}]" for r, lo, hi in
            zip(table["partial_spearman"], table["partial_spearman_low"],
                table["partial_spearman_high"], strict=True)],
        "n": table["n"],
    })
    return to_markdown(shown, floatfmt=".3f")


def write_partial_correlations(out_dir: str | Path, scores: pd.DataFrame,
                               outcomes: Mapping[str, pd.DataFrame], *,
                               control: str = DEFAULT_CONTROL, exclude_ids: Iterable[str] = (),
                               n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Compute `partial_correlations` and write `<out>/validation/partial.csv/.md`; returns
    the table."""
    table = partial_correlations(scores, outcomes, control=control, exclude_ids=exclude_ids,
                                 n_boot=n_boot, seed=seed)
    folder = Path(out_dir) / VALIDATION_DIR
    write_table(table, folder / PARTIAL_FILE, markdown=partial_markdown(table))
    return table

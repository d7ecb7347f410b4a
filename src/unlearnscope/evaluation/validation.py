"""Validation statistics: how well each difficulty scorer predicts measured unlearning outcomes.

Measured difficulty of a forget sample under one method is -efficacy (DESIGN 5.4); over several
methods it is the average of the per-method ranks (method `mean`). For every scorer's
`difficulty` (higher = harder) against every measured difficulty:

- Spearman's rho and Kendall's tau-b (scipy), with a seeded percentile-bootstrap 95% interval
  for rho (resampling samples with replacement);
- AUROC of the scorer separating the hardest quartile of measured difficulty (positives) from
  the easiest quartile (negatives): the Mann-Whitney U / (n_pos n_neg), ties counting 1/2;
- between scorers, a Spearman matrix, and the stability of CUD across anchor methods (pairwise
  Spearman of the `cud*` scorers).

Samples used to discover anchors (`fit_ids`) are always excluded: every statistic is computed
on held-out samples only.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from unlearnscope.errors import DataError
from unlearnscope.evaluation.experiments import to_markdown
from unlearnscope.runs import check_finite, write_text

CORRELATION_COLUMNS = ["scorer", "method", "spearman", "spearman_low", "spearman_high",
                       "kendall", "auroc", "n"]
STABILITY_COLUMNS = ["scorer_a", "scorer_b", "spearman", "n"]
SCORE_TABLE_COLUMNS = ("sample_id", "scorer", "value", "difficulty")
MEAN_METHOD = "mean"


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], source: str) -> None:
    for column in columns:
        if column not in frame.columns:
            raise DataError("missing column", source=source, field=column)


def read_scores(path: str | Path) -> pd.DataFrame:
    """A score table (`sample_id, scorer, value, difficulty`), one row per (sample, scorer)."""
    table = pd.read_parquet(path)
    _require_columns(table, SCORE_TABLE_COLUMNS, str(path))
    table = table.assign(sample_id=table["sample_id"].astype(str))
    duplicated = table.duplicated(["sample_id", "scorer"])
    if duplicated.any():
        row = table[duplicated].iloc[0]
        raise DataError(f"duplicate row for sample '{row.sample_id}' and scorer '{row.scorer}'",
                        source=str(path), field="sample_id")
    check_finite(torch.tensor(table["difficulty"].to_numpy(np.float64)),
                 f"{path} column difficulty")
    return table


def read_outcomes(path: str | Path) -> pd.DataFrame:
    """A per-sample outcome table of one unlearning run (needs `sample_id, efficacy`)."""
    table = pd.read_parquet(path)
    _require_columns(table, ("sample_id", "efficacy"), str(path))
    table = table.assign(sample_id=table["sample_id"].astype(str))
    if table["sample_id"].duplicated().any():
        raise DataError("duplicate sample id", source=str(path), field="sample_id")
    check_finite(torch.tensor(table["efficacy"].to_numpy(np.float64)), f"{path} column efficacy")
    return table


def read_fit_ids(path: str | Path) -> set[str]:
    """The sample ids anchors were discovered on: `fit_ids` of an `anchors.json`."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"invalid JSON: {error.msg}", source=str(path), line=error.lineno) from None
    if not isinstance(record, dict) or not isinstance(record.get("fit_ids"), list):
        raise DataError("expected an object with a list of ids", source=str(path),
                        field="fit_ids")
    return {str(i) for i in record["fit_ids"]}


def measured_difficulty(outcomes: Mapping[str, pd.DataFrame],
                        exclude_ids: Iterable[str] = ()) -> pd.DataFrame:
    """Measured difficulty per held-out sample: `[n_samples, n_methods + 1]`, indexed by
    sample_id, one column per method (-efficacy) and `mean`, the average over methods of the
    per-method ranks (ties get average ranks). Only samples every method scored are kept."""
    if not outcomes:
        raise DataError("no outcome tables given")
    if MEAN_METHOD in outcomes:
        raise DataError(f"'{MEAN_METHOD}' is reserved for the rank-averaged difficulty",
                        field="method")
    excluded = set(exclude_ids)
    columns = {method: -table.set_index("sample_id")["efficacy"].astype(np.float64)
               for method, table in outcomes.items()}
    frame = pd.concat(columns, axis=1, join="inner")
    if frame.empty:
        raise DataError("the outcome tables share no sample id", field="sample_id")
    held_out = frame[~frame.index.isin(excluded)].copy()
    if held_out.empty:
        raise DataError(f"no held-out samples: all {len(frame)} were used to fit the anchors "
                        "(discover anchors on a fraction, e.g. --fit-fraction 0.5)",
                        field="fit_ids")
    held_out[MEAN_METHOD] = held_out.rank(method="average").mean(axis=1)
    return held_out


def bootstrap_spearman_interval(x: np.ndarray, y: np.ndarray, *, n_boot: int, seed: int,
                                level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of Spearman's rho of `x`, `y` (`[n]` each).

    All `n_boot` resamples at once: ranks of `[n_boot, n]` resampled arrays along axis 1, then a
    row-wise Pearson correlation of the ranks. Resamples whose ranks are constant (rho
    undefined) are left out of the quantiles.
    """
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(x), size=(n_boot, len(x)))
    rx = stats.rankdata(np.asarray(x, dtype=np.float64)[index], axis=1)
    ry = stats.rankdata(np.asarray(y, dtype=np.float64)[index], axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    denominator = np.sqrt((rx ** 2).sum(axis=1) * (ry ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=1) / denominator
    rho = rho[np.isfinite(rho)]
    if rho.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2
    low, high = np.quantile(rho, [tail, 1.0 - tail])
    return float(low), float(high)


def quartile_auroc(score: np.ndarray, measured: np.ndarray) -> float:
    """AUROC of `score` for the hardest quartile of `measured` (>= its 75th percentile,
    positives) against the easiest (<= its 25th percentile, negatives); NaN when the two
    quartiles overlap (too many ties) or one is empty."""
    score = np.asarray(score, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    low, high = np.quantile(measured, [0.25, 0.75])
    positives, negatives = score[measured >= high], score[measured <= low]
    if low >= high or positives.size == 0 or negatives.size == 0:
        return float("nan")
    u = stats.mannwhitneyu(positives, negatives, alternative="two-sided").statistic
    return float(u) / (positives.size * negatives.size)


def _agreement(difficulty: np.ndarray, measured: np.ndarray, *, n_boot: int,
               seed: int) -> dict[str, float]:
    # a constant column (e.g. exact memorization 1.0 on every sample) ranks nothing
    if len(difficulty) < 3 or np.ptp(difficulty) == 0 or np.ptp(measured) == 0:
        nan = float("nan")
        return {"spearman": nan, "spearman_low": nan, "spearman_high": nan, "kendall": nan,
                "auroc": nan}
    low, high = bootstrap_spearman_interval(difficulty, measured, n_boot=n_boot, seed=seed)
    return {
        "spearman": float(stats.spearmanr(difficulty, measured).statistic),
        "spearman_low": low,
        "spearman_high": high,
        "kendall": float(stats.kendalltau(difficulty, measured).statistic),
        "auroc": quartile_auroc(difficulty, measured),
    }


def difficulty_matrix(scores: pd.DataFrame, exclude_ids: Iterable[str] = ()) -> pd.DataFrame:
    """Scorer difficulties of held-out samples: `[n_samples, n_scorers]`, indexed by sample_id,
    columns in the order scorers first appear in the score table."""
    excluded = set(exclude_ids)
    frame = scores.pivot(index="sample_id", columns="scorer", values="difficulty")
    frame = frame[list(dict.fromkeys(scores["scorer"]))]
    return frame[~frame.index.isin(excluded)]


def correlations(scores: pd.DataFrame, outcomes: Mapping[str, pd.DataFrame], *,
                 exclude_ids: Iterable[str] = (), n_boot: int = 1000,
                 seed: int = 0) -> pd.DataFrame:
    """One row per (scorer, method) with `CORRELATION_COLUMNS`; methods in the given order,
    then `mean`. `n` counts the held-out samples both the scorer and the outcomes cover."""
    excluded = set(exclude_ids)
    measured = measured_difficulty(outcomes, excluded)
    scorers = difficulty_matrix(scores, excluded)
    rows = []
    for scorer in scorers.columns:
        for method in measured.columns:
            pair = pd.concat([scorers[scorer], measured[method]], axis=1, join="inner").dropna()
            values = _agreement(pair.iloc[:, 0].to_numpy(), pair.iloc[:, 1].to_numpy(),
                                n_boot=n_boot, seed=seed)
            rows.append({"scorer": scorer, "method": method, **values, "n": len(pair)})
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def scorer_correlations(scores: pd.DataFrame, exclude_ids: Iterable[str] = ()) -> pd.DataFrame:
    """Spearman correlation between scorers' difficulties on held-out samples (pairwise
    complete): `[n_scorers, n_scorers]`, labelled by scorer name."""
    return difficulty_matrix(scores, exclude_ids).corr(method="spearman")


def cud_stability(scores: pd.DataFrame, exclude_ids: Iterable[str] = ()) -> pd.DataFrame:
    """Pairwise Spearman between CUD scorers built with different anchor methods (scorer
    names starting with `cud`, e.g. `cud:npo`, `cud:graddiff`): `STABILITY_COLUMNS`; empty
    with fewer than two CUD scorers."""
    frame = difficulty_matrix(scores, exclude_ids)
    names = [name for name in frame.columns if str(name).startswith("cud")]
    rows = []
    for a, b in itertools.combinations(names, 2):
        pair = frame[[a, b]].dropna()
        rho = stats.spearmanr(pair[a], pair[b]).statistic if len(pair) >= 3 else float("nan")
        rows.append({"scorer_a": a, "scorer_b": b, "spearman": float(rho), "n": len(pair)})
    return pd.DataFrame(rows, columns=STABILITY_COLUMNS)


def correlation_markdown(table: pd.DataFrame) -> str:
    """The correlation table with Spearman as `rho [low, high]`, 3 decimals."""
    shown = pd.DataFrame({
        "scorer": table["scorer"], "method": table["method"],
        "spearman [95% CI]": [f"{r:.3f} [{lo:.3f}, {hi:.3f}]" for r, lo, hi in
                              zip(table["spearman"], table["spearman_low"],
                                  table["spearman_high"], strict=True)],
        "kendall": table["kendall"], "auroc": table["auroc"], "n": table["n"],
    })
    return to_markdown(shown, floatfmt=".3f")


def write_validation(out_dir: str | Path, scores: pd.DataFrame,
                     outcomes: Mapping[str, pd.DataFrame], *, exclude_ids: Iterable[str] = (),
                     n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Compute and write `<out>/validation/`: `correlations.csv/.md`,
    `scorer_correlations.csv/.md` (a matrix with scorer names in its first column) and, with
    two or more CUD scorers, `cud_stability.csv/.md`. Returns the correlation table."""
    folder = Path(out_dir) / "validation"
    excluded = set(exclude_ids)
    table = correlations(scores, outcomes, exclude_ids=excluded, n_boot=n_boot, seed=seed)
    write_text(folder / "correlations.csv", table.to_csv(index=False))
    write_text(folder / "correlations.md", correlation_markdown(table))
    matrix = scorer_correlations(scores, excluded)
    write_text(folder / "scorer_correlations.csv", matrix.to_csv(index_label="scorer"))
    write_text(folder / "scorer_correlations.md",
               to_markdown(matrix.reset_index(names="scorer"), floatfmt=".3f"))
    stability = cud_stability(scores, excluded)
    if len(stability):
        write_text(folder / "cud_stability.csv", stability.to_csv(index=False))
        write_text(folder / "cud_stability.md", to_markdown(stability, floatfmt=".3f"))
    return table

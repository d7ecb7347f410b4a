"""A learned difficulty predictor: measure some samples, predict the rest.

The fit half (the samples anchors are discovered on, or any list of measured samples) has
known outcomes. For each method (and `mean`, the rank average over methods) a small model maps
per-sample features to measured difficulty (-efficacy, DESIGN 5.4) on the fit half and
predicts every other sample:

- features: every scorer's `difficulty` in the score table (controls included) and, when a
  circuit store exists, the scalar statistics of each sample's top-n circuit
  (`circuits.analysis.circuit_statistics`, as `circuit:<name>`). Scorers built on anchors
  (`uses_anchors`, e.g. CUD) are used only when their anchors were discovered inside the fit
  half; otherwise their values carry held-out outcomes and they are dropped, as are earlier
  predictions (`predicted:*`) and features constant or absent on the fit half.
- target: the ranks of measured difficulty on the fit half, scaled to (0, 1].
- models: ridge on rank-transformed features (each feature mapped to its (average rank - 1/2)
  / n among the fit samples, then standardized) and gradient-boosted trees, after median
  imputation. The family and its regularization are chosen by K-fold cross-validation inside
  the fit half only: the candidate whose pooled out-of-fold predictions have the highest
  Spearman with the target; the winner is refit on the whole fit half.

Nothing from the held-out samples reaches the fit: the feature transforms are fitted on fit
rows, the folds partition fit rows, and held-out outcomes are read only to report held-out
Spearman (with a bootstrap interval, next to every single scorer but those dropped for
their anchors, whose figures would not be held out), the cross-method table
(fit on method A's outcomes, evaluated on method B's) and permutation importances.

The predictions form a score table (`sample_id, scorer, value, difficulty`, scorer
`predicted:<method>`, value = difficulty, higher = harder): held-out samples carry the refit
model's prediction, fit samples their out-of-fold prediction, so difficulty-aware schedules
can read a value for every sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.inspection import permutation_importance
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from unlearnscope.anchors.sets import read_anchors
from unlearnscope.circuits.analysis import circuit_statistics
from unlearnscope.circuits.selection import edge_count
from unlearnscope.circuits.store import CircuitStore
from unlearnscope.errors import DataError
from unlearnscope.evaluation.experiments import to_markdown, write_table
from unlearnscope.evaluation.holdout import uses_anchors
from unlearnscope.evaluation.validation import (
    correlations,
    difficulty_matrix,
    measured_difficulty,
    seed_mean_outcomes,
)
from unlearnscope.layout import (
    CIRCUITS_DIR,
    HEADER_FILE,
    PREDICTED_FILE,
    PREDICTION_CROSS_METHOD_FILE,
    PREDICTION_FILE,
    PREDICTION_IMPORTANCE_FILE,
    PREDICTION_SELECTION_FILE,
    PREDICTION_SUMMARY_FILE,
    SCORE_COLUMNS,
    SCORES_FILE,
    VALIDATION_DIR,
    anchors_file,
    read_method_outcomes,
    read_scores,
)
from unlearnscope.runs import write_parquet, write_text
from unlearnscope.scoring import scorer_class

PREDICTED = "predicted"
CIRCUIT_PREFIX = "circuit:"
DEFAULT_TOP_N = 0.05  # circuit edges kept per sample, as `unlearnscope circuits analyze`
MIN_FIT = 6
PREDICTION_COLUMNS = ["method", "scorer", "kind", "spearman", "spearman_low", "spearman_high",
                      "n", "model", "fit_spearman"]
CROSS_METHOD_COLUMNS = ["fit_method", "eval_method", "spearman", "spearman_low",
                        "spearman_high", "n"]
IMPORTANCE_COLUMNS = ["method", "feature", "importance_mean", "importance_std", "n"]
SELECTION_COLUMNS = ["method", "family", "params", "cv_spearman", "chosen"]
SUMMARY_COLUMNS = ["method", "best_control", "best_control_spearman", "best_scorer",
                   "best_scorer_spearman", "fit_best_scorer", "fit_best_scorer_spearman",
                   "predictor_spearman", "n"]


def predicted_name(method: str) -> str:
    """The scorer name of the predictions for `method`: `predicted:<method>`."""
    return f"{PREDICTED}:{method}"


class RankTransformer(TransformerMixin, BaseEstimator):
    """Each column mapped to its position among the fitted rows: (average rank - 1/2) / n,
    so fitted values land in (0, 1) and a new value gets the position it would take among
    them. `[n, n_features]` -> `[n, n_features]` float64."""

    def fit(self, X, y=None):
        self.sorted_ = np.sort(np.asarray(X, dtype=np.float64), axis=0)
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=np.float64)
        n = self.sorted_.shape[0]
        out = np.empty_like(X)
        for j in range(X.shape[1]):
            left = np.searchsorted(self.sorted_[:, j], X[:, j], side="left")
            right = np.searchsorted(self.sorted_[:, j], X[:, j], side="right")
            out[:, j] = (left + right) / (2.0 * n)
        return out


@dataclass(frozen=True)
class Candidate:
    """One model configuration the cross-validation chooses among."""

    family: str
    params: dict[str, Any]

    def build(self, seed: int) -> Pipeline:
        impute = ("impute", SimpleImputer(strategy="median"))
        if self.family == "ridge":
            return Pipeline([impute, ("rank", RankTransformer()), ("scale", StandardScaler()),
                             ("model", Ridge(**self.params))])
        return Pipeline([impute, ("model", GradientBoostingRegressor(
            **self.params, learning_rate=0.1, min_samples_leaf=3, random_state=seed))])

    def describe(self) -> str:
        return f"{self.family}({', '.join(f'{k}={v}' for k, v in self.params.items())})"


CANDIDATES = (
    *(Candidate("ridge", {"alpha": alpha}) for alpha in (0.1, 1.0, 10.0, 100.0, 1000.0)),
    *(Candidate("gbm", {"n_estimators": n, "max_depth": depth})
      for n in (25, 100) for depth in (1, 2)),
)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho, NaN when either side is constant or has fewer than 3 values."""
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def _skill(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman for model selection and importances: a constant prediction ranks nothing (0)."""
    rho = _spearman(a, b)
    return 0.0 if np.isnan(rho) else rho


@dataclass
class FittedPredictor:
    """The chosen model refit on the fit half, its out-of-fold predictions there and the
    cross-validation table (`SELECTION_COLUMNS` less `method`)."""

    candidate: Candidate
    model: Pipeline
    features: list[str]
    out_of_fold: pd.Series
    selection: pd.DataFrame

    def predict(self, features: pd.DataFrame) -> pd.Series:
        """Predicted difficulty (target scale) of `features`' rows `[n, n_features]`."""
        return pd.Series(self.model.predict(features[self.features].to_numpy(np.float64)),
                         index=features.index)


def fit_predictor(features: pd.DataFrame, target: pd.Series, *, seed: int = 0,
                  n_splits: int = 5,
                  candidates: Sequence[Candidate] = CANDIDATES) -> FittedPredictor:
    """Choose among `candidates` by K-fold cross-validation on these rows only and refit the
    winner on all of them.

    `features` `[n_fit, n_features]` and `target` `[n_fit]` share an index (sample ids); the
    target is used through its ranks. Ties in the pooled out-of-fold Spearman go to the
    earlier candidate in `candidates`.
    """
    if not features.index.equals(target.index):
        raise ValueError("features and target must share their index")
    if len(target) < MIN_FIT:
        raise DataError(f"{len(target)} measured samples: at least {MIN_FIT} are needed to fit "
                        "and cross-validate a predictor", field="fit_ids")
    X = features.to_numpy(np.float64)
    y = stats.rankdata(target.to_numpy(np.float64)) / len(target)
    folds = list(KFold(n_splits=min(n_splits, len(y)), shuffle=True,
                       random_state=seed).split(X))
    rows, predictions = [], []
    for candidate in candidates:
        oof = np.empty_like(y)
        for train, test in folds:
            oof[test] = candidate.build(seed).fit(X[train], y[train]).predict(X[test])
        predictions.append(oof)
        rows.append({"family": candidate.family, "params": candidate.describe(),
                     "cv_spearman": _skill(oof, y)})
    selection = pd.DataFrame(rows)
    best = int(np.argmax(selection["cv_spearman"].to_numpy()))
    selection["chosen"] = np.arange(len(selection)) == best
    chosen = candidates[best]
    return FittedPredictor(chosen, chosen.build(seed).fit(X, y), list(features.columns),
                           pd.Series(predictions[best], index=features.index), selection)


def _kind(scorer: str) -> str:
    return "control" if getattr(scorer_class(scorer), "is_control", False) else "scorer"


def circuit_features(store_dir: str | Path, sample_ids: Sequence[str], *,
                     top_n: float = DEFAULT_TOP_N) -> pd.DataFrame:
    """Scalar statistics of each sample's top-n circuit (`circuit_statistics`; top-n as a
    count or a fraction of the graph's edges, then pruned): `[n_samples, n_statistics]`,
    indexed by `sample_ids`, columns `circuit:<statistic>`; samples without a stored circuit
    get NaN rows."""
    store = CircuitStore.open(store_dir)
    stored = [i for i in sample_ids if i in store]
    masks = store.circuits(stored, "topn", n=edge_count(top_n, store.layout.n_edges))
    table = circuit_statistics(masks, store.layout, stored).set_index("sample_id")
    return table.add_prefix(CIRCUIT_PREFIX).reindex(list(sample_ids))


def anchor_leak(scorer: str, fit_ids: set[str], anchor_fit_ids: set[str] | None
                ) -> str | None:
    """Why an anchor-based `scorer` would leak outcomes from outside `fit_ids` (its anchors
    were discovered on `anchor_fit_ids`), or None when it does not (or uses no anchors)."""
    if not uses_anchors(scorer, None):
        return None
    if anchor_fit_ids is None:
        return ("built on anchors, and no anchors file shows they were discovered inside the "
                "fit half")
    if not anchor_fit_ids <= fit_ids:
        return (f"built on anchors discovered on {len(anchor_fit_ids - fit_ids)} samples "
                "outside the fit half, whose outcomes would leak")
    return None


def feature_table(scores: pd.DataFrame, fit_ids: Iterable[str], *,
                  circuits: pd.DataFrame | None = None,
                  anchor_fit_ids: Iterable[str] | None = None,
                  use_anchor_scorers: bool = True
                  ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Features of every scored sample `[n_samples, n_features]` (indexed by sample_id) and
    the features left out, name -> reason.

    Columns: each scorer's difficulty, then the `circuits` columns (joined on sample_id).
    Left out: `predicted:*` scorers; anchor-based scorers unless `anchor_fit_ids` (the ids
    their anchors were discovered on) lie inside `fit_ids` (`anchor_leak`), and all of them
    with `use_anchor_scorers=False`; features with no value or a single value on the fit
    samples.
    """
    fit = set(fit_ids)
    frame = difficulty_matrix(scores)
    if circuits is not None:
        frame = frame.join(circuits, how="left")
    anchors = None if anchor_fit_ids is None else set(anchor_fit_ids)
    dropped: dict[str, str] = {}
    for name in frame.columns:
        leak = anchor_leak(str(name), fit, anchors)
        if str(name).startswith(PREDICTED):
            dropped[name] = "an earlier prediction"
        elif leak is not None:
            dropped[name] = leak
        elif uses_anchors(str(name), None) and not use_anchor_scorers:
            dropped[name] = "anchor-based scorers left out on request"
        else:
            values = frame.loc[frame.index.isin(fit), name].dropna()
            if values.empty:
                dropped[name] = "no value on the fit half"
            elif values.nunique() == 1:
                dropped[name] = "constant on the fit half"
    return frame.drop(columns=list(dropped)), dropped


@dataclass
class PredictionResult:
    """What `predict_difficulty` computes; the held-out tables are empty when no outcome
    outside the fit half is known.

    `predicted`: score-table rows (`SCORE_COLUMNS`) for every sample and method; `table`:
    `PREDICTION_COLUMNS`, per method the predictor and every single scorer on the same
    held-out samples; `cross_method`: `CROSS_METHOD_COLUMNS`; `importance`:
    `IMPORTANCE_COLUMNS`; `selection`: `SELECTION_COLUMNS`; `dropped`: feature -> reason.
    """

    fit_ids: list[str]
    predicted: pd.DataFrame
    table: pd.DataFrame
    cross_method: pd.DataFrame
    importance: pd.DataFrame
    selection: pd.DataFrame
    dropped: dict[str, str] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)


def _outcome_ids(outcomes: Mapping[str, pd.DataFrame]) -> set[str]:
    return {str(i) for table in outcomes.values() for i in table["sample_id"]}


def predict_difficulty(scores: pd.DataFrame, outcomes: Mapping[str, pd.DataFrame],
                       fit_ids: Iterable[str], *, circuits: pd.DataFrame | None = None,
                       anchor_fit_ids: Iterable[str] | None = None,
                       methods: Sequence[str] | None = None,
                       use_anchor_scorers: bool = True, seed: int = 0,
                       n_boot: int = 1000, n_repeats: int = 10) -> PredictionResult:
    """Fit one predictor per method (and `mean`) on the `fit_ids` samples' outcomes, predict
    every other scored sample, and evaluate on held-out outcomes where they exist.

    `scores`: a score table; `outcomes`: method -> per-sample outcome table (`sample_id,
    efficacy`); `circuits`: extra features indexed by sample_id (`circuit_features`);
    `anchor_fit_ids`: the ids the anchors of anchor-based scorers were discovered on;
    `use_anchor_scorers=False` leaves anchor-based scorers out of the features even when
    their anchors came from the fit half (their fit-half values are in-sample there, so
    cross-validation overrates them); `methods`: the targets (default: every method, then
    `mean`); `n_repeats`: permutation
    importance repeats. Bootstrap, folds, trees and permutations are seeded with `seed`.
    """
    fit = sorted({str(i) for i in fit_ids})
    anchors = None if anchor_fit_ids is None else {str(i) for i in anchor_fit_ids}
    features, dropped = feature_table(scores, fit, circuits=circuits, anchor_fit_ids=anchors,
                                      use_anchor_scorers=use_anchor_scorers)
    missing = sorted(set(fit) - set(features.index))
    if missing:
        raise DataError(f"{len(missing)} fit samples have no scores: {', '.join(missing[:5])}",
                        field="fit_ids")
    if features.shape[1] == 0:
        raise DataError("no usable feature: " + "; ".join(f"{k}: {v}" for k, v in
                                                          dropped.items()), field="scorer")
    others = _outcome_ids(outcomes) - set(fit)
    measured_fit = measured_difficulty(outcomes, others)
    unmeasured = sorted(set(fit) - set(measured_fit.index))
    if unmeasured:
        raise DataError(f"{len(unmeasured)} fit samples lack an outcome of some method: "
                        f"{', '.join(unmeasured[:5])}", field="fit_ids")
    targets = list(methods) if methods is not None else list(measured_fit.columns)
    unknown = [m for m in targets if m not in measured_fit.columns]
    if unknown:
        raise DataError(f"no outcomes for method(s) {', '.join(unknown)}", field="method")
    held_out = features.index[~features.index.isin(fit)]
    fitted: dict[str, FittedPredictor] = {}
    rows = []
    for method in targets:
        target = measured_fit.loc[fit, method]
        predictor = fit_predictor(features.loc[fit], target, seed=seed)
        fitted[method] = predictor
        values = pd.concat([predictor.out_of_fold, predictor.predict(features.loc[held_out])])
        rows.extend((sample_id, predicted_name(method), float(v), float(v))
                    for sample_id, v in values.sort_index().items())
    predicted = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    selection = pd.concat([p.selection.assign(method=m) for m, p in fitted.items()],
                          ignore_index=True)[SELECTION_COLUMNS]
    result = PredictionResult(fit, predicted, pd.DataFrame(columns=PREDICTION_COLUMNS),
                              pd.DataFrame(columns=CROSS_METHOD_COLUMNS),
                              pd.DataFrame(columns=IMPORTANCE_COLUMNS), selection, dropped,
                              list(features.columns))
    if not others & set(held_out):
        return result
    # anchor-based scorers whose anchors saw held-out outcomes are not held-out figures
    leaky = {name for name in map(str, scores["scorer"].unique())
             if anchor_leak(name, set(fit), anchors) is not None}
    names = scores["scorer"].astype(str)
    singles = scores[~names.str.startswith(PREDICTED) & ~names.isin(leaky)]
    table = correlations(pd.concat([singles, predicted], ignore_index=True), outcomes,
                         exclude_ids=fit, n_boot=n_boot, seed=seed)
    on_fit = difficulty_matrix(singles).reindex(fit)
    result.table = _prediction_table(table, fitted, targets, on_fit, measured_fit)
    cross = table[table["scorer"].isin([predicted_name(m) for m in targets])]
    result.cross_method = pd.DataFrame({
        "fit_method": cross["scorer"].str.removeprefix(f"{PREDICTED}:"),
        "eval_method": cross["method"], "spearman": cross["spearman"],
        "spearman_low": cross["spearman_low"], "spearman_high": cross["spearman_high"],
        "n": cross["n"]}).reset_index(drop=True)
    measured_held = measured_difficulty(outcomes, fit)
    result.importance = pd.concat(
        [_importance(fitted[m], features, measured_held[m], method=m, seed=seed,
                     n_repeats=n_repeats) for m in targets], ignore_index=True)
    return result


def _prediction_table(table: pd.DataFrame, fitted: Mapping[str, FittedPredictor],
                      targets: Sequence[str], on_fit: pd.DataFrame,
                      measured_fit: pd.DataFrame) -> pd.DataFrame:
    """Per method: the predictor's row, then every single scorer's, from `correlations`;
    `fit_spearman` is the predictor's out-of-fold Spearman on the fit half and each scorer's
    Spearman there (`on_fit` `[n_fit, n_scorers]` against `measured_fit`); NaN for
    anchor-based scorers, whose anchors were chosen from those very outcomes."""
    parts = []
    for method in targets:
        rows = table[table["method"] == method]
        chosen = fitted[method].selection
        own = rows[rows["scorer"] == predicted_name(method)].assign(
            kind="predictor", model=fitted[method].candidate.describe(),
            fit_spearman=float(chosen.loc[chosen["chosen"], "cv_spearman"].iloc[0]))
        single = rows[~rows["scorer"].astype(str).str.startswith(PREDICTED)]
        target = measured_fit.loc[on_fit.index, method].to_numpy()
        fit_rho = []
        for scorer in single["scorer"]:
            pair = on_fit[scorer].notna().to_numpy()
            # an anchor-based scorer is in-sample on the fit half its anchors were voted on
            fit_rho.append(np.nan if uses_anchors(str(scorer), None) else
                           _spearman(on_fit[scorer].to_numpy()[pair], target[pair]))
        single = single.assign(kind=[_kind(s) for s in single["scorer"]], model="",
                               fit_spearman=fit_rho)
        parts.extend([own, single])
    return pd.concat(parts, ignore_index=True)[PREDICTION_COLUMNS]


def _importance(predictor: FittedPredictor, features: pd.DataFrame, measured: pd.Series, *,
                method: str, seed: int, n_repeats: int) -> pd.DataFrame:
    """Permutation importance on the held-out samples with outcomes: the mean and std over
    `n_repeats` shuffles of the drop in held-out Spearman when one feature is permuted."""
    rows = features.loc[measured.index, predictor.features].to_numpy(np.float64)
    result = permutation_importance(
        predictor.model, rows, measured.to_numpy(np.float64),
        scoring=lambda model, X, y: _skill(model.predict(X), y), n_repeats=n_repeats,
        random_state=seed)
    frame = pd.DataFrame({"method": method, "feature": predictor.features,
                          "importance_mean": result.importances_mean,
                          "importance_std": result.importances_std, "n": len(measured)})
    return frame.sort_values("importance_mean", ascending=False, kind="stable")


def _interval(rho: float, low: float, high: float) -> str:
    return f"{rho:.3f} [{low:.3f}, {high:.3f}]"


def prediction_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per method, each as held-out `rho [low, high]` (`SUMMARY_COLUMNS`): the best control
    and the best real scorer by held-out Spearman (picked on the held-out samples, so
    optimistic), the real scorer one would pick from the fit half (best `fit_spearman`: the
    fair baseline for the predictor, chosen without held-out outcomes too), and the
    predictor."""
    rows = []
    for method, group in table.groupby("method", sort=False):
        row: dict[str, Any] = {"method": method, "n": int(group["n"].max())}
        for kind, name, by in (("control", "best_control", "spearman"),
                               ("scorer", "best_scorer", "spearman"),
                               ("scorer", "fit_best_scorer", "fit_spearman")):
            candidates = group[(group["kind"] == kind) & group[by].notna()
                               & group["spearman"].notna()]
            if candidates.empty:
                row[name], row[f"{name}_spearman"] = "", ""
                continue
            best = candidates.loc[candidates[by].idxmax()]
            row[name] = best["scorer"]
            row[f"{name}_spearman"] = _interval(best.spearman, best.spearman_low,
                                                best.spearman_high)
        own = group[group["kind"] == "predictor"].iloc[0]
        row["predictor_spearman"] = _interval(own.spearman, own.spearman_low, own.spearman_high)
        rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def prediction_markdown(result: PredictionResult) -> str:
    """The summary, the held-out table, cross-method, importances and dropped features."""
    parts = [f"Predictor fit on {len(result.fit_ids)} measured samples, "
             f"{len(result.features)} features.\n"]
    if result.table.empty:
        parts.append("\nNo outcome outside the fit half is known: predictions only, no "
                     "held-out evaluation.\n")
    else:
        shown = result.table.assign(**{"spearman [95% CI]": [
            _interval(r, lo, hi) for r, lo, hi in zip(result.table["spearman"],
                                                      result.table["spearman_low"],
                                                      result.table["spearman_high"],
                                                      strict=True)]})
        cross = result.cross_method.assign(**{"spearman [95% CI]": [
            _interval(r, lo, hi) for r, lo, hi in zip(result.cross_method["spearman"],
                                                      result.cross_method["spearman_low"],
                                                      result.cross_method["spearman_high"],
                                                      strict=True)]})
        parts += [
            "\n## Per method: best control, best scorer, predictor (held-out)\n\n",
            to_markdown(prediction_summary(result.table)),
            "\n## Held-out Spearman\n\n",
            to_markdown(shown[["method", "scorer", "kind", "spearman [95% CI]", "n", "model",
                               "fit_spearman"]], floatfmt=".3f"),
            "\n## Cross-method (fit on one method's outcomes, evaluate on another's)\n\n",
            to_markdown(cross[["fit_method", "eval_method", "spearman [95% CI]", "n"]]),
            "\n## Permutation importance (held-out)\n\n",
            to_markdown(result.importance, floatfmt=".3f"),
        ]
    parts += ["\n## Model selection (cross-validation inside the fit half)\n\n",
              to_markdown(result.selection, floatfmt=".3f")]
    if result.dropped:
        dropped = pd.DataFrame({"feature": list(result.dropped),
                                "reason": list(result.dropped.values())})
        parts += ["\n## Features left out\n\n", to_markdown(dropped)]
    return "".join(parts)


def run_outcomes(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """method -> outcome table of a run folder: the seed mean of a method run under several
    seeds (`unlearn/<method>/seed<s>/`), the one table of a method with one seed."""
    return {method: seed_mean_outcomes(tables)
            for method, tables in read_method_outcomes(run_dir).items()}


def write_prediction_tables(out_dir: str | Path, result: PredictionResult) -> None:
    """`<out>/validation/prediction.csv/.md` (+ `prediction_cross_method.csv`,
    `prediction_importance.csv`, `prediction_selection.csv`, `prediction_summary.csv`) and
    `<out>/predicted.parquet`, the predictions as a score table."""
    folder = Path(out_dir) / VALIDATION_DIR
    write_table(result.table, folder / PREDICTION_FILE, markdown=prediction_markdown(result))
    write_text(folder / PREDICTION_CROSS_METHOD_FILE, result.cross_method.to_csv(index=False))
    write_text(folder / PREDICTION_IMPORTANCE_FILE, result.importance.to_csv(index=False))
    write_text(folder / PREDICTION_SELECTION_FILE, result.selection.to_csv(index=False))
    summary = (prediction_summary(result.table) if not result.table.empty
               else pd.DataFrame(columns=SUMMARY_COLUMNS))
    write_text(folder / PREDICTION_SUMMARY_FILE, summary.to_csv(index=False))
    write_parquet(Path(out_dir) / PREDICTED_FILE, result.predicted)


def _check_merge(scores_path: str | Path, fit_ids: Iterable[str],
                 validation_fit_ids: Iterable[str] | None) -> None:
    fit = set(fit_ids)
    if validation_fit_ids is not None and not fit <= set(validation_fit_ids):
        outside = sorted(fit - set(validation_fit_ids))
        raise DataError(f"{len(outside)} of the predictor's fit samples ({', '.join(outside[:5])}"
                        ") are held out by validation: merging would let validation score the "
                        "predictor on its own training outcomes; use predicted.parquet instead",
                        source=str(scores_path), field="fit_ids")


def merge_predicted(scores_path: str | Path, predicted: pd.DataFrame, fit_ids: Iterable[str],
                    *, validation_fit_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Replace the `predicted:*` rows of the score table at `scores_path` by `predicted`.

    Refused when `validation_fit_ids` (the ids validation leaves out, the anchors'
    `fit_ids`) do not contain every fit id: validation would then score the predictor on
    samples whose outcomes trained it."""
    _check_merge(scores_path, fit_ids, validation_fit_ids)
    scores = read_scores(scores_path)
    kept = scores[~scores["scorer"].astype(str).str.startswith(PREDICTED)]
    table = pd.concat([kept, predicted], ignore_index=True)[list(SCORE_COLUMNS)]
    write_parquet(scores_path, table)
    return table


def write_prediction(run_dir: str | Path, *, fit_ids: Iterable[str] | None = None,
                     methods: Sequence[str] | None = None, out_dir: str | Path | None = None,
                     top_n: float = DEFAULT_TOP_N, use_circuits: bool = True,
                     use_anchor_scorers: bool = True, merge: bool = False, seed: int = 0,
                     n_boot: int = 1000,
                     n_repeats: int = 10) -> PredictionResult:
    """`predict_difficulty` on a run folder: `scores.parquet`, `unlearn/<method>/
    outcomes.parquet`, `anchors/anchors.json` (its `fit_ids` are the default fit half and
    tell which anchors CUD used) and, with `use_circuits`, the `circuits/` store when there
    is one. Writes `write_prediction_tables` into `out_dir` (default: the run) and, with
    `merge`, the predictions into the run's `scores.parquet` (see `merge_predicted`)."""
    run = Path(run_dir)
    scores = read_scores(run / SCORES_FILE)
    outcomes = run_outcomes(run)
    anchors_path = anchors_file(run)
    anchors = read_anchors(anchors_path) if anchors_path.is_file() else None
    if fit_ids is None:
        if anchors is None:
            raise DataError("no anchors file to take the fit half from: give the measured "
                            "sample ids", source=str(anchors_path), field="fit_ids")
        fit_ids = anchors.fit_ids
    fit_ids = [str(i) for i in fit_ids]
    if merge:
        _check_merge(run / SCORES_FILE, fit_ids, anchors.fit_ids if anchors else None)
    circuits = None
    store = run / CIRCUITS_DIR
    if use_circuits and (store / HEADER_FILE).is_file():
        circuits = circuit_features(store, sorted(set(scores["sample_id"])), top_n=top_n)
    result = predict_difficulty(scores, outcomes, fit_ids, circuits=circuits,
                                anchor_fit_ids=anchors.fit_ids if anchors else None,
                                methods=methods, use_anchor_scorers=use_anchor_scorers,
                                seed=seed, n_boot=n_boot, n_repeats=n_repeats)
    write_prediction_tables(out_dir or run, result)
    if merge:
        merge_predicted(run / SCORES_FILE, result.predicted, fit_ids,
                        validation_fit_ids=anchors.fit_ids if anchors else None)
    return result


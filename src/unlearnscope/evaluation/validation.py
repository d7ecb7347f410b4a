"""Validation statistics: how well each difficulty scorer predicts measured unlearning outcomes.

Measured difficulty of a forget sample under one method is -efficacy (DESIGN 5.4); a method run
under several seeds gives its seed mean (the per-sample mean over seeds of -efficacy). Over
methods it is the average of the per-method ranks of those (method `mean`: every seed of every
method enters, each method weighing the same). For every scorer's `difficulty` (higher =
harder) against every measured difficulty:

- Spearman's rho and Kendall's tau-b (scipy), with a seeded percentile-bootstrap 95% interval
  for rho (resampling samples with replacement);
- the noise ceiling of that method's seed mean and rho as a fraction of it
  (`evaluation.reliability`; NaN with one seed, and for `mean`);
- AUROC of the scorer separating the hardest quartile of measured difficulty (positives) from
  the easiest quartile (negatives): the Mann-Whitney U / (n_pos n_neg), ties counting 1/2;
- between scorers, a Spearman matrix, and the stability of CUD across anchor methods (pairwise
  Spearman of the `cud*` scorers).

`reliability_table` adds, per method, the seed-to-seed agreement, reliability and ceiling with
bootstrap intervals, each scorer against the seed mean (raw and as a fraction of the ceiling),
steps-to-forget as a second ground truth where it was run (its resolution and its Spearman with
the batch seed mean), and the agreement between methods over different-seed pairs.

Every statistic is computed on the samples not in `exclude_ids`; callers pass the fit ids of
every anchor-based scorer (`evaluation.holdout.resolve_holdout`, which refuses when they cannot
be found). Tables written with an accepted unverified holdout carry the column
`unverified_holdout` and a note line in their markdown.

The run folder's outcome and steps-to-forget tables are read by `unlearnscope.layout`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from unlearnscope.errors import DataError
from unlearnscope.evaluation import reliability as rel
from unlearnscope.evaluation.experiments import to_markdown, write_table
from unlearnscope.evaluation.holdout import UNVERIFIED_COLUMN, unverified_note, uses_anchors
from unlearnscope.layout import (
    CORRELATION_COLUMNS,
    CORRELATIONS_FILE,
    CUD_STABILITY_FILE,
    RELIABILITY_COLUMNS,
    RELIABILITY_FILE,
    SCORER_CORRELATIONS_FILE,
    STABILITY_COLUMNS,
    VALIDATION_DIR,
)
from unlearnscope.runs import write_text

MEAN_METHOD = "mean"
EFFICACY = "efficacy"  # ground truth: the seed mean of -efficacy of the batch run
STEPS_GROUND_TRUTHS = ("steps_to_forget", "interpolated_steps")

Outcomes = Mapping[str, pd.DataFrame | Mapping[int, pd.DataFrame]]


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


def seed_tables(outcomes: Outcomes) -> dict[str, dict[int, pd.DataFrame]]:
    """`{method: {seed: outcome table}}`; a method given as one table counts as seed 0."""
    return {method: dict(tables) if isinstance(tables, Mapping) else {0: tables}
            for method, tables in outcomes.items()}


def seed_difficulty(tables: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """Measured difficulty -efficacy of one method per seed: `[n_samples, n_seeds]`, indexed by
    sample_id, one column per seed (ascending), on the samples every seed measured."""
    if not tables:
        raise DataError("a method without outcome tables")
    columns = {int(seed): -tables[seed].set_index("sample_id")["efficacy"].astype(np.float64)
               for seed in sorted(tables)}
    frame = pd.concat(columns, axis=1, join="inner")
    if frame.empty:
        raise DataError(f"the seeds {', '.join(map(str, columns))} share no sample id",
                        field="sample_id")
    return frame


def seed_mean_outcomes(tables: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """One method's seed mean as an outcome table: `sample_id` and the per-sample mean over
    seeds of every numeric column all seed tables have (`efficacy`, `delta_loss`, ...), on the
    samples every seed measured, in the first seed's order."""
    frames = [tables[seed].set_index("sample_id") for seed in sorted(tables)]
    if not frames:
        raise DataError("a method without outcome tables")
    shared = [c for c in frames[0].columns
              if all(c in f.columns and pd.api.types.is_numeric_dtype(f[c])
                     and not pd.api.types.is_bool_dtype(f[c]) for f in frames)]
    ids = [i for i in frames[0].index if all(i in f.index for f in frames[1:])]
    mean = sum(f.loc[ids, shared].astype(np.float64) for f in frames) / len(frames)
    return mean.reset_index(names="sample_id")


def measured_difficulty(outcomes: Outcomes, exclude_ids: Iterable[str] = ()) -> pd.DataFrame:
    """Measured difficulty per held-out sample: `[n_samples, n_methods + 1]`, indexed by
    sample_id, one column per method (its seed mean of -efficacy; -efficacy with one seed) and
    `mean`, the average over methods of the per-method ranks (ties get average ranks). Only
    samples every method (and seed) measured are kept."""
    if not outcomes:
        raise DataError("no outcome tables given")
    if MEAN_METHOD in outcomes:
        raise DataError(f"'{MEAN_METHOD}' is reserved for the rank-averaged difficulty",
                        field="method")
    excluded = set(exclude_ids)
    columns = {method: seed_difficulty(tables).mean(axis=1)
               for method, tables in seed_tables(outcomes).items()}
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


def mean_pairing(outcomes: Outcomes) -> str:
    """How the `mean` difficulty combines seeds, for the tables' notes."""
    seeds = {method: sorted(tables) for method, tables in seed_tables(outcomes).items()}
    listed = "; ".join(f"{m} {','.join(map(str, s))}" for m, s in seeds.items())
    shared = sorted(set.intersection(*(set(s) for s in seeds.values())))
    text = (f"mean = rank average over methods of each method's seed mean (seeds: {listed})")
    if len(seeds) > 1 and all(len(s) == 1 for s in seeds.values()) and shared:
        text += (f"; every method ran seed {shared[0]} only, so all share one data order and "
                 "their agreement is inflated")
    return text


def bootstrap_spearman_interval(x: np.ndarray, y: np.ndarray, *, n_boot: int, seed: int,
                                level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of Spearman's rho of `x`, `y` (`[n]` each).

    All `n_boot` resamples at once (`reliability.rowwise_spearman` of `[n_boot, n]` resampled
    arrays). Resamples whose ranks are constant (rho undefined) are left out of the quantiles.
    """
    index = rel.bootstrap_indices(len(x), n_boot, seed)
    rho = rel.rowwise_spearman(np.asarray(x, dtype=np.float64)[index],
                               np.asarray(y, dtype=np.float64)[index])
    return rel.percentile_interval(rho, level)


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


def _ranks_something(*arrays: np.ndarray) -> bool:
    # a constant column (e.g. exact memorization 1.0 on every sample) ranks nothing
    return len(arrays[0]) >= 3 and all(np.ptp(a) > 0 for a in arrays)


def _agreement(difficulty: np.ndarray, measured: np.ndarray, *, n_boot: int,
               seed: int) -> dict[str, float]:
    if not _ranks_something(difficulty, measured):
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


def _paired(score: pd.Series, per_seed: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(score `[n]`, per-seed difficulty `[n, R]`) on the samples both cover."""
    pair = pd.concat([score.rename("__score__"), per_seed], axis=1, join="inner").dropna()
    return pair["__score__"].to_numpy(), pair.drop(columns="__score__").to_numpy()


def correlations(scores: pd.DataFrame, outcomes: Outcomes, *, exclude_ids: Iterable[str] = (),
                 n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (scorer, method) with `CORRELATION_COLUMNS`; methods in the given order,
    then `mean`. `n` counts the held-out samples both the scorer and the outcomes cover;
    `ceiling` is the noise ceiling of the method's seed mean on those samples (NaN with one
    seed and for `mean`), `fraction_of_ceiling` = spearman / ceiling."""
    excluded = set(exclude_ids)
    measured = measured_difficulty(outcomes, excluded)
    per_seed = {method: seed_difficulty(tables)
                for method, tables in seed_tables(outcomes).items()}
    scorers = difficulty_matrix(scores, excluded)
    rows = []
    for scorer in scorers.columns:
        for method in measured.columns:
            pair = pd.concat([scorers[scorer], measured[method]], axis=1, join="inner").dropna()
            values = _agreement(pair.iloc[:, 0].to_numpy(), pair.iloc[:, 1].to_numpy(),
                                n_boot=n_boot, seed=seed)
            ceiling = float("nan")
            if method in per_seed:
                _, seeds = _paired(scorers[scorer], per_seed[method].loc[measured.index])
                ceiling = float(rel.noise_ceilings(seeds[None])[0])
            rows.append({"scorer": scorer, "method": method, **values, "n": len(pair),
                         "ceiling": ceiling, "fraction_of_ceiling": values["spearman"] / ceiling})
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def scorer_correlations(scores: pd.DataFrame, exclude_ids: Iterable[str] = ()) -> pd.DataFrame:
    """Spearman correlation between scorers' difficulties on held-out samples (pairwise
    complete): `[n_scorers, n_scorers]`, labelled by scorer name."""
    return difficulty_matrix(scores, exclude_ids).corr(method="spearman")


def cud_stability(scores: pd.DataFrame, exclude_ids: Iterable[str] = ()) -> pd.DataFrame:
    """Pairwise Spearman between CUD scorers built with different anchor methods (scorer
    the anchor-based scorers, e.g. `cud:npo`, `cud:graddiff`): `STABILITY_COLUMNS`; empty
    with fewer than two CUD scorers."""
    frame = difficulty_matrix(scores, exclude_ids)
    names = [name for name in frame.columns if uses_anchors(str(name), None)]
    rows = []
    for a, b in itertools.combinations(names, 2):
        pair = frame[[a, b]].dropna()
        rho = stats.spearmanr(pair[a], pair[b]).statistic if len(pair) >= 3 else float("nan")
        rows.append({"scorer_a": a, "scorer_b": b, "spearman": float(rho), "n": len(pair)})
    return pd.DataFrame(rows, columns=STABILITY_COLUMNS)


def _reliability_row(method: str, ground_truth: str, kind: str, item: str, **values) -> dict:
    return {"method": method, "ground_truth": ground_truth, "kind": kind, "item": item,
            **values}


def _efficacy_rows(method: str, per_seed: pd.DataFrame, scorers: pd.DataFrame, *,
                   n_boot: int, seed: int) -> list[dict]:
    """Seed pairs, the ceiling, and every scorer against the seed mean of one method."""
    seeds = list(per_seed.columns)
    rows = []
    for a, b in itertools.combinations(seeds, 2):
        x, y = per_seed[a].to_numpy(), per_seed[b].to_numpy()
        ranks = _ranks_something(x, y)
        low, high = (bootstrap_spearman_interval(x, y, n_boot=n_boot, seed=seed) if ranks
                     else (float("nan"), float("nan")))
        rows.append(_reliability_row(
            method, EFFICACY, "seed_pair", f"{a}-{b}", n_seeds=2, n=len(x),
            spearman=float(rel.rowwise_spearman(x[None], y[None])[0]), spearman_low=low,
            spearman_high=high))
    summary = rel.seed_reliability(per_seed, n_boot=n_boot, seed=seed)
    distinct, tied = rel.resolution(per_seed.mean(axis=1).to_numpy())
    rows.append(_reliability_row(
        method, EFFICACY, "ceiling", f"seed mean of {len(seeds)}", n_seeds=len(seeds),
        n=summary.n, spearman=summary.mean_spearman, reliability=summary.reliability,
        ceiling=summary.ceiling, ceiling_low=summary.ceiling_low,
        ceiling_high=summary.ceiling_high, distinct=distinct, tied=tied, note=summary.note))
    for scorer in scorers.columns:
        score, paired = _paired(scorers[scorer], per_seed)
        values = rel.versus_seed_mean(score, paired, n_boot=n_boot, seed=seed) \
            if _ranks_something(score, paired.mean(axis=1)) else {}
        rows.append(_reliability_row(method, EFFICACY, "scorer", str(scorer),
                                     n_seeds=len(seeds), n=len(score), **values,
                                     note=summary.note))
    return rows


def _steps_rows(method: str, steps: pd.DataFrame, per_seed: pd.DataFrame | None,
                scorers: pd.DataFrame, *, n_boot: int, seed: int) -> list[dict]:
    """Steps-to-forget ground truths of one method: resolution and Spearman with the batch
    seed mean, then every scorer against each."""
    rows = []
    table = steps.set_index("sample_id")
    capped = int(table["capped"].sum()) if "capped" in table else 0
    for truth in STEPS_GROUND_TRUTHS:
        if truth not in table or table[truth].isna().all():
            continue
        values = table[truth].astype(np.float64)
        distinct, tied = rel.resolution(values.to_numpy())
        note = f"{tied} of {len(values)} samples tied, {capped} capped"
        agreement = {}
        if per_seed is not None:
            x, paired = _paired(values, per_seed)
            agreement = {"n_seeds": paired.shape[1], "n": len(x)}
            if _ranks_something(x, paired.mean(axis=1)):
                found = rel.versus_seed_mean(x, paired, n_boot=n_boot, seed=seed)
                agreement.update({k: found[k] for k in
                                  ("spearman", "spearman_low", "spearman_high")})
        rows.append(_reliability_row(method, truth, "agreement", "efficacy (seed mean)",
                                     **agreement, distinct=distinct, tied=tied, note=note))
        for scorer in scorers.columns:
            pair = pd.concat([scorers[scorer], values], axis=1, join="inner").dropna()
            x, y = pair.iloc[:, 0].to_numpy(), pair.iloc[:, 1].to_numpy()
            found = {}
            if _ranks_something(x, y):
                low, high = bootstrap_spearman_interval(x, y, n_boot=n_boot, seed=seed)
                found = {"spearman": float(stats.spearmanr(x, y).statistic),
                         "spearman_low": low, "spearman_high": high}
            rows.append(_reliability_row(method, truth, "scorer", str(scorer), n=len(pair),
                                         **found, distinct=distinct, tied=tied,
                                         note="one steps-to-forget run: ceiling unknown"))
    return rows


def _method_pair_rows(per_method_seed: Mapping[str, pd.DataFrame]) -> list[dict]:
    """Spearman between two methods' difficulties, averaged over different-seed pairs."""
    rows = []
    for a, b in itertools.combinations(per_method_seed, 2):
        frame_a, frame_b = per_method_seed[a], per_method_seed[b]

        def rho(x: pd.Series, y: pd.Series) -> float:
            pair = pd.concat([x, y], axis=1, join="inner").dropna()
            return float(rel.rowwise_spearman(pair.iloc[:, 0].to_numpy()[None],
                                              pair.iloc[:, 1].to_numpy()[None])[0])

        value, pairing = rel.mean_over_seed_pairs(
            {s: frame_a[s] for s in frame_a.columns}, {s: frame_b[s] for s in frame_b.columns},
            rho)
        n = len(frame_a.index.intersection(frame_b.index))
        rows.append(_reliability_row(a, EFFICACY, "method_pair", b, n=n, spearman=value,
                                     note=pairing.describe()))
    return rows


def reliability_table(scores: pd.DataFrame, outcomes: Outcomes, *,
                      steps_to_forget: Mapping[str, pd.DataFrame] | None = None,
                      exclude_ids: Iterable[str] = (), n_boot: int = 1000,
                      seed: int = 0) -> pd.DataFrame:
    """The reliability table (`RELIABILITY_COLUMNS`) on held-out samples, per method.

    `kind`: `seed_pair` (item `a-b`: Spearman between seeds a and b, interval); `ceiling` (mean
    pairwise rho in `spearman`, Spearman-Brown `reliability`, `ceiling` and its interval, the
    seed mean's `distinct` values and `tied` samples; `note` says why it is unknown); `scorer`
    (a scorer against the ground truth: rho with its interval, against `efficacy` also the
    ceiling and rho / ceiling with intervals); `agreement` (a steps-to-forget ground truth
    against the batch seed mean, with its resolution); `method_pair` (item: the other method;
    Spearman averaged over different-seed pairs, `note` says which). `ground_truth`:
    `efficacy` (the seed mean of -efficacy), `steps_to_forget`, `interpolated_steps`.
    `steps_to_forget`: `{method: steps-to-forget table}`.
    """
    excluded = set(exclude_ids)
    scorers = difficulty_matrix(scores, excluded)
    per_method = {method: seed_difficulty(tables)
                  for method, tables in seed_tables(outcomes).items()}
    per_method = {method: frame[~frame.index.isin(excluded)]
                  for method, frame in per_method.items()}
    steps = {method: table[~table["sample_id"].astype(str).isin(excluded)]
             for method, table in (steps_to_forget or {}).items()}
    rows = []
    for method in dict.fromkeys([*per_method, *steps]):
        if method in per_method:
            rows += _efficacy_rows(method, per_method[method], scorers, n_boot=n_boot,
                                   seed=seed)
        if method in steps:
            rows += _steps_rows(method, steps[method], per_method.get(method), scorers,
                                n_boot=n_boot, seed=seed)
    rows += _method_pair_rows(per_method)
    table = pd.DataFrame(rows, columns=RELIABILITY_COLUMNS)
    return table.astype({"n_seeds": "Int64", "n": "Int64", "distinct": "Int64",
                         "tied": "Int64"})


def reliability_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per method of a reliability table: seeds, n, mean seed-to-seed rho,
    reliability, ceiling with its interval, and the scorer with the highest Spearman against
    the seed mean: its rho and rho / ceiling, each with its interval ('unknown' where the
    ceiling is)."""
    rows = []
    for _, ceiling in table[table["kind"] == "ceiling"].iterrows():
        method = ceiling["method"]
        scorers = table[(table["kind"] == "scorer") & (table["method"] == method)
                        & (table["ground_truth"] == EFFICACY)].dropna(subset=["spearman"])
        best = scorers.loc[scorers["spearman"].idxmax()] if len(scorers) else None
        rows.append({
            "method": method, "seeds": _counts(pd.Series([ceiling["n_seeds"]]))[0],
            "n": _counts(pd.Series([ceiling["n"]]))[0],
            "seed rho": ceiling["spearman"], "reliability": ceiling["reliability"],
            "ceiling [95% CI]": _interval(ceiling["ceiling"], ceiling["ceiling_low"],
                                          ceiling["ceiling_high"], missing="unknown"),
            "best scorer": "" if best is None else best["item"],
            "rho [95% CI]": "" if best is None else _interval(
                best["spearman"], best["spearman_low"], best["spearman_high"]),
            "rho/ceiling [95% CI]": "" if best is None else _interval(
                best["fraction_of_ceiling"], best["fraction_low"], best["fraction_high"],
                missing="unknown"),
            "note": "" if pd.isna(ceiling["note"]) else ceiling["note"]})
    return pd.DataFrame(rows)


def _interval(value: float, low: float, high: float, missing: str = "nan") -> str:
    if pd.isna(value):
        return missing
    if pd.isna(low) or pd.isna(high):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _counts(values: pd.Series) -> list[str]:
    return ["" if pd.isna(v) else str(int(v)) for v in values]


def _intervals(table: pd.DataFrame, value: str, low: str, high: str) -> list[str]:
    return [_interval(v, lo, hi) for v, lo, hi in
            zip(table[value], table[low], table[high], strict=True)]


def correlation_markdown(table: pd.DataFrame) -> str:
    """The correlation table with Spearman as `rho [low, high]`, 3 decimals, the noise ceiling
    and rho / ceiling."""
    shown = pd.DataFrame({
        "scorer": table["scorer"], "method": table["method"],
        "spearman [95% CI]": _intervals(table, "spearman", "spearman_low", "spearman_high"),
        "kendall": table["kendall"], "auroc": table["auroc"], "n": table["n"],
        "ceiling": table["ceiling"], "rho/ceiling": table["fraction_of_ceiling"],
    })
    return to_markdown(shown, floatfmt=".3f")


def reliability_markdown(table: pd.DataFrame, *, notes: Sequence[str] = ()) -> str:
    """The reliability table as markdown sections, one per row kind, with `notes` first."""
    parts = [f"{note}\n\n" for note in notes if note]
    ceilings = table[table["kind"] == "ceiling"]
    if len(ceilings):
        parts.append("## Noise ceilings of the seed mean of -efficacy\n\n" + to_markdown(
            pd.DataFrame({
                "method": ceilings["method"], "seeds": _counts(ceilings["n_seeds"]),
                "n": _counts(ceilings["n"]),
                "mean seed rho": ceilings["spearman"], "reliability": ceilings["reliability"],
                "ceiling [95% CI]": _intervals(ceilings, "ceiling", "ceiling_low",
                                               "ceiling_high"),
                "distinct": _counts(ceilings["distinct"]), "tied": _counts(ceilings["tied"]),
                "note": ceilings["note"].fillna("")}), floatfmt=".3f"))
    pairs = table[table["kind"] == "seed_pair"]
    if len(pairs):
        parts.append("\n## Seed-to-seed Spearman\n\n" + to_markdown(pd.DataFrame({
            "method": pairs["method"], "seeds": pairs["item"], "n": _counts(pairs["n"]),
            "spearman [95% CI]": _intervals(pairs, "spearman", "spearman_low",
                                            "spearman_high")})))
    scorers = table[table["kind"] == "scorer"]
    if len(scorers):
        parts.append("\n## Scorers against each ground truth\n\n" + to_markdown(pd.DataFrame({
            "scorer": scorers["item"], "method": scorers["method"],
            "ground truth": scorers["ground_truth"], "n": _counts(scorers["n"]),
            "spearman [95% CI]": _intervals(scorers, "spearman", "spearman_low",
                                            "spearman_high"),
            "ceiling": scorers["ceiling"],
            "rho/ceiling [95% CI]": _intervals(scorers, "fraction_of_ceiling", "fraction_low",
                                               "fraction_high")}), floatfmt=".3f"))
    agreement = table[table["kind"] == "agreement"]
    if len(agreement):
        parts.append("\n## Steps to forget against batch efficacy\n\n" + to_markdown(
            pd.DataFrame({
                "method": agreement["method"], "ground truth": agreement["ground_truth"],
                "n": _counts(agreement["n"]),
                "spearman with seed mean [95% CI]": _intervals(agreement, "spearman",
                                                               "spearman_low",
                                                               "spearman_high"),
                "distinct": _counts(agreement["distinct"]), "tied": _counts(agreement["tied"]),
                "note": agreement["note"]})))
    methods = table[table["kind"] == "method_pair"]
    if len(methods):
        parts.append("\n## Agreement between methods (Spearman of seed difficulties)\n\n" + to_markdown(pd.DataFrame({
            "method a": methods["method"], "method b": methods["item"],
            "n": _counts(methods["n"]),
            "spearman": methods["spearman"], "seed pairing": methods["note"]}),
            floatfmt=".3f"))
    return "".join(parts)


def _marked(table: pd.DataFrame, unverified: Sequence[str]) -> pd.DataFrame:
    """`table` with the `unverified_holdout` column when some scorers' holdout is unverified."""
    return table.assign(**{UNVERIFIED_COLUMN: ",".join(unverified)}) if unverified else table


def _with_note(markdown: str, unverified: Sequence[str]) -> str:
    note = unverified_note(unverified)
    return f"{note}\n\n{markdown}" if note else markdown


def write_validation(out_dir: str | Path, scores: pd.DataFrame, outcomes: Outcomes, *,
                     exclude_ids: Iterable[str] = (),
                     steps_to_forget: Mapping[str, pd.DataFrame] | None = None,
                     unverified_holdout: Sequence[str] = (), n_boot: int = 1000,
                     seed: int = 0) -> pd.DataFrame:
    """Compute and write `<out>/validation/`: `correlations.csv/.md`, `reliability.csv/.md`,
    `scorer_correlations.csv/.md` (a matrix with scorer names in its first column) and, with
    two or more CUD scorers, `cud_stability.csv/.md`. With `unverified_holdout` (scorers whose
    anchor-fit samples could not be excluded) every csv gains the column `unverified_holdout`
    and every md a note line. Returns the correlation table."""
    folder = Path(out_dir) / VALIDATION_DIR
    excluded = set(exclude_ids)
    unverified = list(unverified_holdout)
    table = correlations(scores, outcomes, exclude_ids=excluded, n_boot=n_boot, seed=seed)
    markdown = _with_note(
        correlation_markdown(table) + f"\nceiling: the noise ceiling of the method's seed mean "
        "(reliability.md); nan with one seed (unknown) and for mean.\n"
        f"{mean_pairing(outcomes)}.\n", unverified)
    write_table(_marked(table, unverified), folder / CORRELATIONS_FILE, markdown=markdown)
    reliability = reliability_table(scores, outcomes, steps_to_forget=steps_to_forget,
                                    exclude_ids=excluded, n_boot=n_boot, seed=seed)
    markdown = reliability_markdown(
        reliability, notes=[unverified_note(unverified), mean_pairing(outcomes)])
    write_table(_marked(reliability, unverified), folder / RELIABILITY_FILE, markdown=markdown)
    matrix = scorer_correlations(scores, excluded)
    write_text(folder / SCORER_CORRELATIONS_FILE,
               _marked(matrix, unverified).to_csv(index_label="scorer"))
    write_text((folder / SCORER_CORRELATIONS_FILE).with_suffix(".md"), _with_note(
        to_markdown(matrix.reset_index(names="scorer"), floatfmt=".3f"), unverified))
    stability = cud_stability(scores, excluded)
    if len(stability):
        write_table(_marked(stability, unverified), folder / CUD_STABILITY_FILE,
                    markdown=_with_note(to_markdown(stability, floatfmt=".3f"), unverified))
    return table

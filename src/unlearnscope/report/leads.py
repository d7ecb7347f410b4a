"""The sentence each report section opens with, computed from this run's tables: what the
section shows for this run. Each function takes the section's table(s) and returns one
sentence."""

from __future__ import annotations

import numpy as np
import pandas as pd

from unlearnscope.evaluation.validation import MEAN_METHOD
from unlearnscope.report import markup as m


def _names(items: list[str]) -> str:
    return ", ".join(items)


def configuration(facts: dict[str, int], present: list[str], absent: list[str]) -> str:
    """`facts`: 'samples', 'scorers', 'methods', 'seeded methods' counts; `present`/`absent`:
    names of the artefact kinds the run holds / lacks."""
    text = (f"This run holds {_names(present)}" if present else "This run holds no results yet")
    if facts.get("samples"):
        text += (f" for {facts['samples']} samples ({facts['scorers']} scorers, "
                 f"{facts['methods']} unlearning methods, {facts['seeded methods']} of them "
                 "over several seeds)")
    return text + (f"; it lacks {_names(absent)}." if absent else ".")


def distributions(scores: pd.DataFrame) -> str:
    """How many scorers and samples, and which scorer ties most (few distinct values weaken
    its rank correlations)."""
    n = scores["sample_id"].nunique()
    distinct = scores.groupby("scorer")["value"].nunique().sort_values(kind="stable")
    text = f"{len(distinct)} scorers on {n} samples; "
    if distinct.iloc[0] == n:
        return text + f"every scorer gives {n} distinct values."
    tied = distinct[distinct < n]
    return text + (f"{len(tied)} of them tie samples, most of all {distinct.index[0]} "
                   f"({distinct.iloc[0]} distinct values).")


def versus_measured(correlations: pd.DataFrame, held_out: bool) -> str:
    """Per method: the best scorer with its interval (and fraction of the noise ceiling), and
    how many scorers' intervals exclude 0."""
    n = pd.to_numeric(correlations["n"], errors="coerce").max()
    counted = f"the {int(n)} samples" if np.isfinite(n) else "the samples"
    where = (f"On {counted} held out from anchor discovery" if held_out
             else f"On {counted} validated")
    parts = []
    methods = list(dict.fromkeys(correlations["method"].astype(str)))
    for method in [x for x in methods if x != MEAN_METHOD] + (
            [MEAN_METHOD] if MEAN_METHOD in methods else []):
        rows = correlations[(correlations["method"].astype(str) == method)].dropna(
            subset=["spearman"])
        label = "the method average" if method == MEAN_METHOD else method
        if rows.empty:
            parts.append(f"no scorer has a correlation for {label}")
            continue
        best = rows.loc[rows["spearman"].idxmax()]
        text = (f"the best scorer for {label} is {best['scorer']} at "
                + m.interval(best["spearman"], best["spearman_low"], best["spearman_high"]))
        fraction = float(best.get("fraction_of_ceiling", float("nan")))
        if np.isfinite(fraction):
            text += f", {fraction:.2f} of the noise ceiling"
        excluding = sum(m.excludes_zero(lo, hi) for lo, hi in
                        zip(rows["spearman_low"], rows["spearman_high"], strict=True))
        text += (f" ({excluding} of {len(rows)} scorers' intervals exclude 0)" if excluding
                 else f" (no scorer's interval excludes 0 for {label})")
        parts.append(text)
    return f"{where}, " + "; ".join(parts) + "."


def sets(summary: pd.DataFrame) -> str:
    """`summary`: per scorer (index) `easy delta_vs_random` and `hard delta_vs_random`."""
    easy = summary.get("easy delta_vs_random", pd.Series(np.nan, index=summary.index))
    hard = summary.get("hard delta_vs_random", pd.Series(np.nan, index=summary.index))
    separating = int(((easy > 0) & (hard < 0)).sum())
    gap = (easy - hard).dropna()
    text = (f"Over methods, {separating} of {len(summary)} scorers pick easy sets that unlearn "
            "more than random sets and hard sets that unlearn less")
    if gap.empty:
        return text + "."
    best = gap.idxmax()
    return text + (f"; the widest gap is {best}'s (easy {easy[best]:+.2f}, hard "
                   f"{hard[best]:+.2f} efficacy against random).")


def circuits(statistics: pd.DataFrame, n_easy: int, n_hard: int, n_significant: int) -> str:
    """`statistics`: the easy vs hard circuit statistics (index = statistic)."""
    tested = statistics.dropna(subset=["permutation_p"])
    text = (f"Between {n_easy} easy and {n_hard} hard circuits, {n_significant} edge(s) differ "
            "in frequency at q < 0.05")
    if tested.empty:
        return text + "."
    name = tested["permutation_p"].idxmin()
    row = tested.loc[name]
    return text + (f"; the statistic that differs most is {name} (mean easy "
                   f"{m.number(float(row['mean_easy']))}, hard {m.number(float(row['mean_hard']))}"
                   f", permutation p = {m.number(float(row['permutation_p']))}).")


def scorer_correlations(matrix: pd.DataFrame, threshold: float = 0.8) -> str:
    """The closest and most opposed pair of scorers of a Spearman matrix."""
    values = matrix.to_numpy(dtype=float)
    i, j = np.triu_indices(len(matrix), k=1)
    pairs = pd.Series(values[i, j], index=[(matrix.index[a], matrix.columns[b])
                                           for a, b in zip(i, j, strict=True)]).dropna()
    if pairs.empty:
        return "No pair of scorers has a correlation here."
    high, low = pairs.idxmax(), pairs.idxmin()
    return (f"Of {len(pairs)} scorer pairs, {int((pairs.abs() >= threshold).sum())} have "
            f"|rho| >= {threshold}; the closest are {high[0]} and {high[1]} ({pairs[high]:.2f}), "
            f"the most opposed {low[0]} and {low[1]} ({pairs[low]:.2f}).")


def schedules(frame: pd.DataFrame, labels: pd.Series) -> str:
    """Per method, the schedule with the highest forget efficacy at the same step budget
    (`labels`: each row's schedule name with its scorer), against uniform."""
    parts = []
    for method, rows in frame.assign(label=labels).groupby("method", sort=False):
        best = rows.loc[rows["efficacy"].idxmax()]
        uniform = rows.loc[rows["schedule"] == "uniform", "efficacy"]
        parts.append(f"{method}: {best['label']} at {m.number(float(best['efficacy']))}"
                     + (f" (uniform {m.number(float(uniform.iloc[0]))})" if len(uniform)
                        else ""))
    return "At the same step budget, the schedule with the highest forget efficacy is, for " + (
        "; ".join(parts)) + "."


def methods(efficacy: dict[str, float], seeds: dict[str, int]) -> str:
    """`efficacy`: mean forget efficacy per method; `seeds`: seeds it is averaged over."""
    if not efficacy:
        return "No method has per-sample outcomes in this run."
    ordered = sorted(efficacy.items(), key=lambda item: -item[1])
    return "Mean forget efficacy, highest first: " + ", ".join(
        f"{name} {value:.3f}" + (f" (mean of {seeds[name]} seeds)" if seeds[name] > 1 else "")
        for name, value in ordered) + "."


def reliability(ceilings: dict[str, pd.Series]) -> str:
    """Each method's noise ceiling, or why it is unknown."""
    known = {k: r for k, r in ceilings.items() if np.isfinite(r["ceiling"])}
    unknown = [k for k in ceilings if k not in known]
    text = "Noise ceiling of the measured difficulty: " + ("; ".join(
        f"{k} {m.interval(r['ceiling'], r['ceiling_low'], r['ceiling_high'])} over "
        f"{int(r['n_seeds'])} seeds" for k, r in known.items()) if known else "none known")
    return text + (f"; unknown for {_names(unknown)} (one seed)." if unknown else ".")


def cross_method(pairs: pd.DataFrame) -> str:
    """`pairs`: the `pair` rows (anchors, target, spearman, bounds) of the cross-method table."""
    rows = pairs.dropna(subset=["spearman"])
    off = rows[rows["anchors"] != rows["target"]]
    rows = off if len(off) else rows
    if rows.empty:
        return "No pair of methods has a held-out correlation."
    low, high = rows.loc[rows["spearman"].idxmin()], rows.loc[rows["spearman"].idxmax()]
    excluding = sum(m.excludes_zero(lo, hi) for lo, hi in
                    zip(rows["spearman_low"], rows["spearman_high"], strict=True))
    kind = "other methods" if len(off) else "the same method"
    return (f"With anchors from one method and validation on {kind}, held-out Spearman ranges "
            f"from {low['spearman']:.2f} ({low['anchors']} to {low['target']}) to "
            f"{high['spearman']:.2f} ({high['anchors']} to {high['target']}); {excluding} of "
            f"{len(rows)} intervals exclude 0.")


def cud_choice(candidate: str, n_candidates: int, n_held_out: int, held_out: str) -> str:
    return (f"Of {n_candidates} CUD configurations, the fit half chose {candidate}; on the "
            f"{n_held_out} held-out samples its Spearman is {held_out}.")


def samples(frame: pd.DataFrame, n_scorers: int, efficacy_columns: list[str]) -> str:
    """`frame`: the per-sample table; names the least and most forgotten sample of the first
    method with outcomes."""
    text = f"{len(frame)} samples with {n_scorers} scorers' difficulty"
    if not efficacy_columns:
        return text + "."
    column = efficacy_columns[0]
    values = frame.set_index("sample_id")[column].dropna()
    text += f" and the measured efficacy of {len(efficacy_columns)} method(s)"
    if values.empty:
        return text + "."
    return text + (f"; for {column.removeprefix('efficacy: ')} the least forgotten is "
                   f"{values.idxmin()} ({values.min():.3f}), the most {values.idxmax()} "
                   f"({values.max():.3f}).")

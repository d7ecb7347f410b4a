"""The sentence each report section opens with, computed from this run's tables: what the
section shows for this run. Each function takes the section's table(s) and returns one
sentence."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from unlearnscope.evaluation.validation import MEAN_METHOD
from unlearnscope.report import markup as m


def _names(items: list[str]) -> str:
    return ", ".join(items)


def ordered_methods(methods: Iterable[object]) -> list[str]:
    """The distinct method names in first-seen order, the method average (`mean`) last."""
    names = list(dict.fromkeys(str(x) for x in methods))
    return [x for x in names if x != MEAN_METHOD] + ([MEAN_METHOD] if MEAN_METHOD in names
                                                     else [])


def method_label(method: str) -> str:
    return "the method average" if method == MEAN_METHOD else method


def _samples(n: pd.Series, held_out: bool) -> str:
    """'On the N held-out samples' (N the largest count of `n`), or without 'held-out'."""
    count = pd.to_numeric(n, errors="coerce").max()
    counted = f"the {int(count)}" if np.isfinite(count) else "the"
    return f"On {counted} held-out samples" if held_out else f"On {counted} samples validated"


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
    for method in ordered_methods(correlations["method"]):
        rows = correlations[(correlations["method"].astype(str) == method)].dropna(
            subset=["spearman"])
        label = method_label(method)
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


def _rho(row: pd.Series, prefix: str = "spearman") -> str:
    """`rho [low, high]` of a row's `<prefix>`, `<prefix>_low`, `<prefix>_high`."""
    return m.interval(float(row[prefix]), float(row[f"{prefix}_low"]),
                      float(row[f"{prefix}_high"]))


def controls(comparison: pd.DataFrame, held_out: bool) -> str:
    """`comparison`: `beyond.control_comparison`, one row per (method, scorer). Per method:
    the best trivial control, and the real scorers whose interval lies above its value, with
    the difference and the scorer's interval (or the closest one when none does)."""
    if comparison.empty:
        return "No scorer has a correlation with measured difficulty."
    parts = []
    for method in ordered_methods(comparison["method"]):
        rows = comparison[comparison["method"] == method]
        label = method_label(method)
        named = rows["best_control"].dropna()
        if named.empty:
            parts.append(f"for {label} no trivial control has a correlation")
            continue
        best = rows[rows["scorer"] == named.iloc[0]].iloc[0]
        text = f"for {label} the best trivial control is {best['scorer']} at {_rho(best)}"
        real = rows[~rows["control"]].dropna(subset=["difference"])
        above = real[real["above_best_control"].astype(bool)].sort_values(
            "difference", ascending=False, kind="stable")
        if len(above):
            text += (f" and {len(above)} of {len(real)} real scorers' intervals lie above it: "
                     + ", ".join(f"{r['scorer']} by {r['difference']:+.2f} ({_rho(r)})"
                                 for _, r in above.iterrows()))
        elif len(real):
            closest = real.loc[real["difference"].idxmax()]
            text += (f" and no real scorer's interval lies above it (closest: "
                     f"{closest['scorer']}, {closest['difference']:+.2f} at {_rho(closest)})")
        else:
            text += " and no real scorer has a correlation"
        parts.append(text)
    return f"{_samples(comparison['n'], held_out)}, " + "; ".join(parts) + "."


def partial(table: pd.DataFrame) -> str:
    """`table`: `validation/partial.csv` with a boolean `control_scorer` column (the scorer is
    a trivial control). Per control and method: how many real scorers' partial intervals lie
    above 0, and the highest one."""
    groups = []
    for control, by_control in table.groupby("control", sort=False):
        parts = []
        for method in ordered_methods(by_control["method"]):
            rows = by_control[(by_control["method"] == method) & ~by_control["control_scorer"]]
            rows = rows.dropna(subset=["partial_spearman"])
            label = method_label(method)
            if rows.empty:
                parts.append(f"for {label} no real scorer has a partial correlation")
                continue
            above = int((rows["partial_spearman_low"] > 0).sum())
            best = rows.loc[rows["partial_spearman"].idxmax()]
            parts.append(f"for {label} {above} of {len(rows)} real scorers' intervals lie "
                         f"above 0, the highest {best['scorer']}'s at "
                         f"{_rho(best, 'partial_spearman')}")
        groups.append(f"Controlled for {control} (partial Spearman), " + "; ".join(parts) + ".")
    return " ".join(groups)


def _fraction(row: pd.Series, prefix: str) -> str:
    """`<prefix>_fraction` of the ceiling with its interval, or that the ceiling is unknown."""
    value = float(row[f"{prefix}_fraction"])
    if not np.isfinite(value):
        return "ceiling unknown"
    return f"{_rho(row, f'{prefix}_fraction')} of the ceiling"


def prediction(comparison: pd.DataFrame, held_out: bool) -> str:
    """`comparison`: `beyond.prediction_comparison`, one row per method. The predictor's
    held-out Spearman (and fraction of the ceiling) against the best single scorer's."""
    parts = []
    for _, row in comparison.iterrows():
        label = method_label(str(row["method"]))
        if not np.isfinite(float(row["predictor"])):
            parts.append(f"for {label} the predictor has no held-out Spearman")
            continue
        text = f"for {label} {_rho(row, 'predictor')} ({_fraction(row, 'predictor')})"
        if pd.isna(row["best_scorer"]):
            parts.append(text + " with no single scorer to compare")
            continue
        parts.append(text + (f" against {_rho(row, 'best')} ({_fraction(row, 'best')}) for "
                             f"the best single scorer {row['best_scorer']}, a difference of "
                             f"{row['difference']:+.2f}"))
    return (f"{_samples(comparison['n'], held_out)}, the learned predictor's Spearman "
            "(and fraction of the noise ceiling) is " + "; ".join(parts) + ".")


def prediction_unevaluated(selection: pd.DataFrame) -> str:
    """`selection`: the model-selection table of a predictor without held-out outcomes."""
    chosen = selection[selection["chosen"].astype(str).str.lower() == "true"]
    models = ", ".join(f"{method_label(str(r['method']))} {r['params']}"
                       for _, r in chosen.iterrows())
    return (f"The predictor was fit for {selection['method'].nunique()} target(s) ("
            f"{models or 'no model chosen'}), but no outcome outside its fit half is known: "
            "predictions only, no held-out Spearman.")


CONTROL_ARM, GLOBAL_ARM = "random", "global"


def circuit_guided(table: pd.DataFrame, alpha: float = 0.05) -> str:
    """`table`: `validation/circuit_guided.csv`. Per method, every arm's efficacy on the hard
    samples, the masked arms above the random mask at p < `alpha`, and those above global."""
    parts = []
    for method, rows in table.groupby("method", sort=False):
        arms = rows.set_index("arm")
        values = []
        for arm, row in arms.iterrows():
            text = f"{arm} {row['efficacy_hard']:.1f}"
            if arm != CONTROL_ARM and np.isfinite(float(row["p_hard_vs_random"])):
                text += f" (p = {m.number(float(row['p_hard_vs_random']))} against random)"
            values.append(text)
        text = (f"{method}, on its {int(rows['n_hard'].max())} hardest held-out samples: "
                + ", ".join(values))
        masked = arms.drop(index=[CONTROL_ARM, GLOBAL_ARM], errors="ignore")
        if CONTROL_ARM in arms.index and len(masked):
            random = float(arms.loc[CONTROL_ARM, "efficacy_hard"])
            beating = [str(a) for a, r in masked.iterrows()
                       if r["efficacy_hard"] > random and r["p_hard_vs_random"] < alpha]
            text += (f"; {_names(beating)} beat{'s' if len(beating) == 1 else ''} the random "
                     f"mask at p < {alpha}" if beating else
                     f"; no circuit mask beats the random mask at p < {alpha}")
        if GLOBAL_ARM in arms.index and len(masked):
            reference = float(arms.loc[GLOBAL_ARM, "efficacy_hard"])
            over = [str(a) for a, r in masked.iterrows() if r["efficacy_hard"] > reference]
            text += (f", {_names(over)} exceed{'s' if len(over) == 1 else ''} global" if over
                     else ", none exceeds global")
        parts.append(text)
    return "Forget efficacy (x100) per arm at the same step budget, " + "; ".join(parts) + "."


def circuit_guided_costs(table: pd.DataFrame) -> str:
    """Per method and arm: the retain loss change and the model utility (where measured)."""
    parts = []
    for method, rows in table.groupby("method", sort=False):
        arms = []
        for _, row in rows.iterrows():
            utility = float(row["model_utility"])
            arms.append(f"{row['arm']} {float(row['retain_loss_change']):+.3f}"
                        + (f" / {utility:.3f}" if np.isfinite(utility) else " / –"))
        parts.append(f"{method}: " + ", ".join(arms))
    return ("Retain loss change (after - before) / model utility: " + "; ".join(parts) + ".")


def depth_claims(depth: pd.DataFrame | None, claims: pd.DataFrame | None,
                 alpha: float = 0.05) -> str:
    """`depth`: `validation/depth_ablation.csv` (an `all` row and one per third);
    `claims`: `validation/claims.csv`. Validity per third against all edges, and which of
    the claims hold (and which go significantly the other way)."""
    parts = []
    if depth is not None:
        rows = depth.set_index("band")
        thirds = rows.drop(index=["all"], errors="ignore").dropna(subset=["spearman"])
        text = ("CUD's held-out Spearman with measured difficulty by the layer of the edges' "
                "reader: " + ", ".join(f"{band} third (layers {r['reader_layers']}) {_rho(r)}"
                                       for band, r in thirds.iterrows()))
        if "all" in rows.index and np.isfinite(float(rows.loc["all", "spearman"])):
            whole = float(rows.loc["all", "spearman"])
            text += f", against {_rho(rows.loc['all'])} over all edges"
            above = [str(b) for b, r in thirds.iterrows() if r["spearman_low"] > whole]
            text += (f" ({_names(above)} third's interval lies above it)" if above
                     else " (no third's interval lies above it)")
        parts.append(text)
    if claims is not None:
        holds = claims["holds"].astype(str).str.lower() == "true"
        held = list(claims.loc[holds, "statistic"].astype(str))
        opposite = list(claims.loc[~holds & (claims["effect"] < 0) & (claims["p_value"] < alpha),
                                   "statistic"].astype(str))
        text = (f"{len(held)} of {len(claims)} of the CUD paper's circuit claims hold"
                + (f" ({_names(held)})" if held else ""))
        if opposite:
            text += (f", and {_names(opposite)} differ{'s' if len(opposite) == 1 else ''} the "
                     f"other way at p < {alpha}")
        parts.append(text)
    return "; ".join(parts) + "."

"""Report sections that test the scores beyond their raw correlations: the trivial controls
and partial correlations, the learned difficulty predictor, circuit-guided unlearning, and the
edge-depth ablation with the CUD paper's circuit claims. Each renders the run's `validation/`
tables (read by `rundata.load_run`) and names the command that makes the ones it lacks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from unlearnscope.evaluation.circuit_guided import ARMS
from unlearnscope.evaluation.prediction import PREDICTED
from unlearnscope.evaluation.validation import EFFICACY
from unlearnscope.layout import (
    CIRCUIT_GUIDED_FILE,
    CLAIMS_FILE,
    CORRELATIONS_FILE,
    DEPTH_ABLATION_FILE,
    PARTIAL_FILE,
    PREDICTION_CROSS_METHOD_FILE,
    PREDICTION_FILE,
    PREDICTION_IMPORTANCE_FILE,
    PREDICTION_SELECTION_FILE,
    PREDICTION_SUMMARY_FILE,
    VALIDATION_DIR,
)
from unlearnscope.report import leads
from unlearnscope.report import markup as m
from unlearnscope.report.reliability import method_ceilings, unverified_warning
from unlearnscope.report.rundata import RunData
from unlearnscope.report.sections import absent
from unlearnscope.scoring import scorer_class

CONTROL, PREDICTOR, SCORER = "control", "predictor", "scorer"
COMPARISON_COLUMNS = ["method", "scorer", "kind", "control", "spearman", "spearman_low",
                      "spearman_high", "n", "best_control", "best_control_spearman",
                      "difference", "above_best_control"]
PREDICTION_FILES = tuple(f"{VALIDATION_DIR}/{name}" for name in (
    PREDICTION_FILE, PREDICTION_SUMMARY_FILE, PREDICTION_IMPORTANCE_FILE,
    PREDICTION_CROSS_METHOD_FILE, PREDICTION_SELECTION_FILE))


def scorer_kind(name: object) -> str:
    """`control` for a trivial control (its class sets `Scorer.is_control`), `predictor` for a
    learned predictor's predictions (`predicted:<method>`), else `scorer`."""
    if getattr(scorer_class(str(name)), "is_control", False):
        return CONTROL
    return PREDICTOR if str(name).startswith(f"{PREDICTED}:") else SCORER


def _intervals(frame: pd.DataFrame, prefix: str = "spearman", digits: int = 3) -> list[str]:
    """`rho [low, high]` of each row's `<prefix>`, `<prefix>_low`, `<prefix>_high`."""
    return [m.interval(float(v), float(lo), float(hi), digits) for v, lo, hi in
            zip(frame[prefix], frame[f"{prefix}_low"], frame[f"{prefix}_high"], strict=True)]


def _signed(values: pd.Series) -> list[str]:
    """Signed differences with 3 decimals ('–' where missing)."""
    return ["–" if np.isnan(v) else f"{v:+.3f}" for v in values.astype(float)]


def _yes_no(values: pd.Series) -> list[str]:
    return ["yes" if str(v).lower() == "true" else "no" for v in values]


# 1. Trivial controls and partial correlations

def control_comparison(correlations: pd.DataFrame) -> pd.DataFrame:
    """Every (method, scorer) row of `correlations` with a Spearman (`COMPARISON_COLUMNS`),
    methods in report order, each method's rows by Spearman, highest first: `kind`
    (`scorer_kind`), `control` (bool), the method's best control (the control with the highest
    Spearman; None without one) and its Spearman, `difference` = spearman - that Spearman (NaN
    for controls), `above_best_control`: a real scorer whose interval lies above that value
    (spearman_low > it)."""
    rows = correlations.dropna(subset=["spearman"]).assign(
        method=lambda f: f["method"].astype(str), scorer=lambda f: f["scorer"].astype(str))
    if rows.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    rows["kind"] = [scorer_kind(s) for s in rows["scorer"]]
    rows["control"] = rows["kind"] == CONTROL
    parts = []
    for method in leads.ordered_methods(rows["method"]):
        group = rows[rows["method"] == method]
        controls = group[group["control"]]
        best = controls.loc[controls["spearman"].idxmax()] if len(controls) else None
        value = float("nan") if best is None else float(best["spearman"])
        parts.append(group.assign(
            best_control=None if best is None else best["scorer"], best_control_spearman=value,
            difference=(group["spearman"] - value).where(~group["control"]),
            above_best_control=~group["control"] & (group["spearman_low"] > value),
        ).sort_values("spearman", ascending=False, kind="stable"))
    return pd.concat(parts, ignore_index=True)[COMPARISON_COLUMNS]


def _partial_columns(partial: pd.DataFrame) -> dict[str, dict[tuple[str, str], str]]:
    """Column name -> {(scorer, method): partial `rho [low, high]`}, one column per control."""
    columns = {}
    for control, rows in partial.groupby("control", sort=False):
        keys = zip(rows["scorer"].astype(str), rows["method"].astype(str), strict=True)
        columns[f"partial Spearman given {control} [95% CI]"] = dict(
            zip(keys, _intervals(rows, "partial_spearman"), strict=True))
    return columns


def _control_table(comparison: pd.DataFrame, partial: pd.DataFrame | None) -> pd.DataFrame:
    kind = [f"{CONTROL} (best)" if s == b else k for s, b, k in
            zip(comparison["scorer"], comparison["best_control"], comparison["kind"],
                strict=True)]
    table = pd.DataFrame({
        "method": comparison["method"], "scorer": comparison["scorer"], "kind": kind,
        "Spearman [95% CI]": _intervals(comparison), "n": comparison["n"],
        "minus best control": _signed(comparison["difference"]),
        "interval above best control": [
            "–" if control else ("yes" if above else "no") for control, above in
            zip(comparison["control"], comparison["above_best_control"], strict=True)]})
    keys = list(zip(comparison["scorer"], comparison["method"], strict=True))
    for name, values in (_partial_columns(partial) if partial is not None else {}).items():
        table[name] = [values.get(key, "–") for key in keys]
    return table


def controls(data: RunData) -> str:
    """Per method: the best trivial control, every scorer against it (difference, and whether
    the scorer's interval lies above the control's value), and the partial Spearman of every
    scorer controlled for answer length."""
    parts = []
    partial = None
    if data.partial is not None:
        partial = data.partial.assign(control_scorer=[scorer_kind(s) == CONTROL
                                                      for s in data.partial["scorer"]])
    if data.correlations is None:
        parts.append(absent(data, "held-out correlations with measured difficulty", "validate",
                            f"{VALIDATION_DIR}/{CORRELATIONS_FILE}"))
    else:
        comparison = control_comparison(data.correlations)
        parts += [m.lead(leads.controls(comparison, held_out=data.anchors is not None)),
                  unverified_warning(data.correlations, data.partial), m.paragraph(
            "Trivial controls read only the tokenized sample (answer, question and sequence "
            "length, answer-token rarity, position within the author); a score that does not "
            "beat them has found nothing beyond surface form. A real scorer is counted as "
            "beating the best control when its whole 95% bootstrap interval lies above the "
            "best control's Spearman. Partial Spearman: the rank correlation left after "
            "regressing the control's ranks out of both the scorer and the measured "
            "difficulty (held-out samples only).")]
        if partial is not None:
            parts.append(m.paragraph(leads.partial(partial)))
        parts.append(m.table(_control_table(comparison, data.partial)))
    if partial is None:
        parts.append(absent(data, "partial correlations controlled for answer length", "demo",
                            f"{VALIDATION_DIR}/{PARTIAL_FILE}"))
    elif data.correlations is None:
        shown = partial.assign(kind=[scorer_kind(s) for s in partial["scorer"]])
        shown["partial Spearman [95% CI]"] = _intervals(partial, "partial_spearman")
        parts += [m.lead(leads.partial(partial)),
                  m.table(shown[["method", "scorer", "kind", "control",
                                 "partial Spearman [95% CI]", "n"]])]
    return "".join(parts)


# 2. Learned difficulty predictor

def ceiling_fraction(data: RunData, method: str, scorer: str, rho: float
                     ) -> tuple[float, float, float]:
    """(fraction, low, high) of the noise ceiling reached by `scorer` on `method`: the
    reliability table's row for it (its interval recomputes the ceiling in each resample),
    else `rho` / the method's ceiling without an interval, else NaNs (ceiling unknown)."""
    nan = float("nan")
    table = data.reliability
    if table is not None:
        rows = table[(table["kind"] == "scorer") & (table["ground_truth"] == EFFICACY)
                     & (table["method"].astype(str) == method)
                     & (table["item"].astype(str) == scorer)]
        if len(rows) and np.isfinite(float(rows["fraction_of_ceiling"].iloc[0])):
            row = rows.iloc[0]
            return (float(row["fraction_of_ceiling"]), float(row.get("fraction_low", nan)),
                    float(row.get("fraction_high", nan)))
    ceiling = method_ceilings(data).get(method)
    if ceiling is not None and np.isfinite(float(ceiling["ceiling"])):
        return rho / float(ceiling["ceiling"]), nan, nan
    return nan, nan, nan


def prediction_comparison(data: RunData) -> pd.DataFrame:
    """Per method of `validation/prediction.csv` (report order): `n`, the predictor's `model`
    and held-out Spearman `predictor` (`_low`, `_high`), the best single scorer (kind
    `scorer`, highest held-out Spearman, as `prediction_summary` picks it) as `best_scorer`
    and `best` (`_low`, `_high`), each one's fraction of the noise ceiling
    (`<name>_fraction`, `_low`, `_high`; `ceiling_fraction`) and `difference` = predictor -
    best."""
    table = data.prediction
    rows = []
    for method in leads.ordered_methods(table["method"]):
        group = table[table["method"].astype(str) == method]
        own = group[group["kind"] == PREDICTOR]
        row: dict[str, object] = {"method": method, "n": group["n"].max(),
                                  "model": own["model"].iloc[0] if len(own) else None}
        for name, pick in (("predictor", own.dropna(subset=["spearman"])),
                           ("best", group[group["kind"] == SCORER].dropna(subset=["spearman"]))):
            chosen = pick.loc[pick["spearman"].idxmax()] if len(pick) else None
            values = ((np.nan,) * 3 if chosen is None else
                      tuple(float(chosen[c]) for c in ("spearman", "spearman_low",
                                                       "spearman_high")))
            fraction = ((np.nan,) * 3 if chosen is None else
                        ceiling_fraction(data, method, str(chosen["scorer"]), values[0]))
            row.update({name: values[0], f"{name}_low": values[1], f"{name}_high": values[2],
                        f"{name}_fraction": fraction[0], f"{name}_fraction_low": fraction[1],
                        f"{name}_fraction_high": fraction[2]})
            if name == "best":
                row["best_scorer"] = None if chosen is None else str(chosen["scorer"])
        row["difference"] = row["predictor"] - row["best"]
        rows.append(row)
    return pd.DataFrame(rows)


def _comparison_table(comparison: pd.DataFrame, summary: pd.DataFrame | None) -> pd.DataFrame:
    shown = pd.DataFrame({
        "method": comparison["method"], "model": comparison["model"], "n": comparison["n"],
        "predictor [95% CI]": _intervals(comparison, "predictor"),
        "predictor / ceiling": _intervals(comparison, "predictor_fraction"),
        "best single scorer": comparison["best_scorer"],
        "its Spearman [95% CI]": _intervals(comparison, "best"),
        "its / ceiling": _intervals(comparison, "best_fraction"),
        "predictor - best": _signed(comparison["difference"])})
    if summary is not None:
        extra = summary.assign(method=summary["method"].astype(str)).set_index("method")
        for column, name in (("best_control", "best control"),
                             ("best_control_spearman", "best control's Spearman"),
                             ("fit_best_scorer", "scorer picked on the fit half"),
                             ("fit_best_scorer_spearman", "fit-half pick's Spearman")):
            shown[name] = [extra[column].get(method, "–") for method in comparison["method"]]
    return shown


def _importance_table(importance: pd.DataFrame) -> pd.DataFrame:
    """Features (rows, by mean importance over methods, highest first) x methods, each cell
    `mean ± sd`."""
    methods = leads.ordered_methods(importance["method"])
    frame = importance.assign(method=importance["method"].astype(str))
    means = frame.pivot_table(index="feature", columns="method", values="importance_mean")
    order = means.mean(axis=1).sort_values(ascending=False, kind="stable").index
    cells = {(r["feature"], r["method"]): f"{r['importance_mean']:.3f} ± "
             f"{r['importance_std']:.3f}" for _, r in frame.iterrows()}
    return pd.DataFrame({"feature": order, **{
        leads.method_label(method): [cells.get((f, method), "–") for f in order]
        for method in methods}})


def _cross_table(cross: pd.DataFrame) -> pd.DataFrame:
    """Fit methods (rows) x evaluated methods, each cell the held-out `rho [low, high]`."""
    frame = cross.assign(fit_method=cross["fit_method"].astype(str),
                         eval_method=cross["eval_method"].astype(str))
    cells = dict(zip(zip(frame["fit_method"], frame["eval_method"], strict=True),
                     _intervals(frame), strict=True))
    fits, evals = (leads.ordered_methods(frame[c]) for c in ("fit_method", "eval_method"))
    return pd.DataFrame({"fit on \\ evaluated on": fits, **{
        target: [cells.get((fit, target), "–") for fit in fits] for target in evals}})


def _cross_sentence(cross: pd.DataFrame) -> str:
    off = cross[cross["fit_method"].astype(str) != cross["eval_method"].astype(str)]
    off = off.dropna(subset=["spearman"])
    if off.empty:
        return "No predictor was evaluated on another method's outcomes."
    low, high = off.loc[off["spearman"].idxmin()], off.loc[off["spearman"].idxmax()]
    return (f"Fit on one method's outcomes and evaluated on another's, the held-out Spearman "
            f"ranges from {m.interval(low['spearman'], low['spearman_low'], low['spearman_high'])}"
            f" ({low['fit_method']} to {low['eval_method']}) to "
            f"{m.interval(high['spearman'], high['spearman_low'], high['spearman_high'])} "
            f"({high['fit_method']} to {high['eval_method']}).")


def prediction(data: RunData) -> str:
    """The learned predictor per method: held-out Spearman with interval next to the best
    single scorer, both as fractions of the noise ceiling; every scorer's held-out Spearman;
    permutation importances; the cross-method table; the model selection."""
    if data.prediction is None:
        return absent(data, "learned difficulty predictor", "predict", *PREDICTION_FILES)
    parts = [unverified_warning(data.prediction)]
    if data.prediction.empty:
        if data.prediction_selection is not None:
            parts.insert(0, m.lead(leads.prediction_unevaluated(data.prediction_selection)))
        else:
            parts.insert(0, m.paragraph("No outcome outside the predictor's fit half is known: "
                                        "no held-out Spearman.", css="missing"))
    else:
        comparison = prediction_comparison(data)
        parts.insert(0, m.lead(leads.prediction(comparison, held_out=data.anchors is not None)))
        parts += [m.paragraph(
            "A small model (ridge on rank-transformed features or gradient-boosted trees, "
            "chosen by cross-validation inside the fit half) maps every scorer's difficulty "
            "and the circuit statistics to measured difficulty on the fit half and predicts "
            "the rest; held-out samples only. Best single scorer: the real scorer with the "
            "highest held-out Spearman (picked on the held-out samples, so optimistic); the "
            "scorer picked on the fit half is the fair comparison. Fractions of the noise "
            "ceiling have an interval where validation/reliability.csv holds the predictor."),
            "<h3>Predictor against the best single scorer</h3>",
            m.table(_comparison_table(comparison, data.prediction_summary))]
        if data.prediction_summary is None:
            parts.append(absent(data, "prediction summary (best control, scorer picked on the "
                                "fit half)", "predict",
                                f"{VALIDATION_DIR}/{PREDICTION_SUMMARY_FILE}"))
        shown = data.prediction.assign(**{"Spearman [95% CI]": _intervals(data.prediction)})
        parts.append(m.details("held-out Spearman of the predictor and every scorer "
                               "(validation/prediction.csv)",
                               m.table(shown[["method", "scorer", "kind", "Spearman [95% CI]",
                                              "n", "model", "fit_spearman"]])))
    parts.append("<h3>Feature importance (permutation, held-out)</h3>")
    importance = data.prediction_importance
    if importance is None:
        parts.append(absent(data, "feature importances", "predict",
                            f"{VALIDATION_DIR}/{PREDICTION_IMPORTANCE_FILE}"))
    elif len(importance):
        top = importance.loc[importance.groupby("method", sort=False)["importance_mean"]
                             .idxmax()]
        parts += [m.paragraph(
            f"The drop in held-out Spearman when one feature is shuffled (mean ± sd over "
            f"repeats, {int(importance['n'].max())} samples); the most important feature: "
            + "; ".join(f"{leads.method_label(str(r['method']))} {r['feature']} "
                        f"({r['importance_mean']:.3f} ± {r['importance_std']:.3f})"
                        for _, r in top.iterrows()) + "."),
            m.table(_importance_table(importance))]
    else:
        parts.append(m.paragraph("None: no held-out outcome to measure them on."))
    parts.append("<h3>Across methods (fit on one method's outcomes, evaluated on another's)"
                 "</h3>")
    cross = data.prediction_cross_method
    if cross is None:
        parts.append(absent(data, "cross-method predictor table", "predict",
                            f"{VALIDATION_DIR}/{PREDICTION_CROSS_METHOD_FILE}"))
    elif len(cross):
        parts += [m.paragraph(_cross_sentence(cross)), m.table(_cross_table(cross))]
    else:
        parts.append(m.paragraph("None: no held-out outcome to evaluate on."))
    if data.prediction_selection is not None:
        parts.append(m.details("model selection by cross-validation inside the fit half "
                               "(validation/prediction_selection.csv)",
                               m.table(data.prediction_selection)))
    else:
        parts.append(absent(data, "model selection", "predict",
                            f"{VALIDATION_DIR}/{PREDICTION_SELECTION_FILE}"))
    return "".join(parts)


# 3. Circuit-guided unlearning

def circuit_guided(data: RunData) -> str:
    """Global vs circuit-masked vs random-mask updates at the same budget: efficacy on the hard
    held-out samples and on all, the sign-flip p against the random mask, the retain loss
    change and the model utility."""
    table = data.circuit_guided
    if table is None:
        return absent(data, "circuit-guided unlearning", "demo",
                      f"{VALIDATION_DIR}/{CIRCUIT_GUIDED_FILE}")
    rank = {arm: i for i, arm in enumerate(ARMS)}
    table = table.assign(order=[rank.get(str(a), len(ARMS)) for a in table["arm"]]).sort_values(
        ["order"], kind="stable").drop(columns="order")
    methods = list(dict.fromkeys(table["method"]))
    table = pd.concat([table[table["method"] == method] for method in methods])
    parts = [m.lead(leads.circuit_guided(table)), m.paragraph(
        "Each arm unlearns the whole forget set from the same target model with the same step "
        "budget and learning rate: global updates every parameter, hard-anchors only the heads "
        "and MLPs of the hard anchors' circuits, batch only those of each step's samples' "
        "circuits, random a seeded mask of random components with the hard-anchor mask's "
        "parameter count. Efficacy x100; p: paired sign-flip test of the hard samples' "
        "efficacy against the random mask."),
        m.paragraph(leads.circuit_guided_costs(table))]
    for method, rows in table.groupby("method", sort=False):
        budgets = rows[["steps", "forget_slots"]].drop_duplicates()
        if len(budgets) > 1:
            parts.append(m.paragraph(
                f"{method}: the arms ran different budgets (steps "
                f"{', '.join(map(str, rows['steps']))}; forget slots "
                f"{', '.join(map(str, rows['forget_slots']))}), so they do not compare.",
                css="problem"))
    parts.append(m.table(table))
    return "".join(parts)


# 4. Edge depth and the CUD paper's circuit claims

def depth_and_claims(data: RunData) -> str:
    """CUD's validity computed over the edges read in each third of the layers, and the CUD
    paper's mechanistic claims tested on easy vs hard circuits (effect, p, whether each
    holds)."""
    depth, claims = data.depth_ablation, data.claims
    parts = []
    if depth is not None or claims is not None:
        parts.append(m.lead(leads.depth_claims(depth, claims)))
    parts.append("<h3>CUD by the depth of the edges' reader</h3>")
    if depth is None:
        parts.append(absent(data, "edge-depth ablation of CUD", "demo",
                            f"{VALIDATION_DIR}/{DEPTH_ABLATION_FILE}"))
    else:
        parts += [m.paragraph(
            "Band b holds the edges whose reader is in a layer l with floor(3 l / L) = b (the "
            "logits in the last band); each row computes CUD with the run's anchors over its "
            "band's top edges only and validates it on the held-out samples."),
            m.table(pd.DataFrame({
                "band": depth["band"], "reader layers": depth["reader_layers"],
                "edges in band": depth["n_edges"], "circuit edges": depth["circuit_edges"],
                "Spearman [95% CI]": _intervals(depth), "n": depth["n"]}))]
    parts.append("<h3>The CUD paper's circuit claims, easy vs hard</h3>")
    if claims is None:
        parts.append(absent(data, "the CUD paper's circuit claims", "demo",
                            f"{VALIDATION_DIR}/{CLAIMS_FILE}"))
    else:
        parts += [m.paragraph(
            "Effects are oriented so that a positive value is the claimed direction; a claim "
            "holds when its effect is positive and p < 0.05."),
            m.table(pd.DataFrame({
                "claim": claims["claim"], "statistic": claims["statistic"],
                "easy": claims["value_easy"], "hard": claims["value_hard"],
                "effect": claims["effect"], "effect kind": claims["effect_kind"],
                "p": claims["p_value"], "test": claims["test"], "n easy": claims["n_easy"],
                "n hard": claims["n_hard"], "holds": _yes_no(claims["holds"])}))]
    return "".join(parts)

"""The report's sections: each takes the run's `RunData` and returns the section's HTML body,
rendering what the run holds and naming the command that makes what it lacks."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from unlearnscope.errors import DataError
from unlearnscope.layout import (
    ANCHORS_DIR,
    ANCHORS_FILE,
    CONFIG_FILE,
    CORRELATIONS_FILE,
    CUD_STABILITY_FILE,
    METRICS_FILE,
    OUTCOMES_FILE,
    SAMPLES_FILE,
    SCHEDULES_FILE,
    SCORER_CORRELATIONS_FILE,
    SCORES_FILE,
    SETS_FILE,
    SUMMARY_FILE,
    UNLEARN_DIR,
    VALIDATION_DIR,
)
from unlearnscope.report import leads
from unlearnscope.report import markup as m
from unlearnscope.report.glance import correlation_grid, sample_frame, sample_table
from unlearnscope.report.plots import (
    correlation_heatmap,
    difficulty_scatters,
    efficacy_histograms,
    grouped_bars,
    score_histograms,
)
from unlearnscope.report.reliability import ceiling_note, ceiling_of, unverified_warning
from unlearnscope.report.rundata import RunData, measured_difficulty
from unlearnscope.report.signatures import DEFAULT_TOP_N, compare_easy_hard

TOFU_METRICS = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_prob",
                "forget_rouge", "extraction_strength", "exact_memorization", "privleak")
SHOWN_IDS = 30  # sample ids listed per group in the circuit section


def commands(run_dir: Path) -> dict[str, str]:
    """The command that produces each kind of artefact in `run_dir`."""
    d = str(run_dir)
    return {
        "demo": f"unlearnscope demo --out {d}",
        "score": f"unlearnscope score --model M --data D --out {d}",
        "unlearn": (f"unlearnscope unlearn --model M --method NAME --forget D "
                    f"--out {d}/unlearn/NAME"),
        "evaluate": f"unlearnscope evaluate --model {d}/unlearn/NAME/model --out {d}/unlearn/NAME",
        "validate": f"unlearnscope validate --run {d}",
        "sets": f"unlearnscope validate sets --run {d}",
        "schedules": f"unlearnscope validate schedules --run {d}",
        "anchors": (f"unlearnscope anchors --method vote --k K --outcomes "
                    f"{d}/unlearn/*/outcomes.parquet --out {d}/anchors"),
        "circuits": f"unlearnscope circuits --model M --data D --out {d}",
        "predict": f"unlearnscope predict --run {d}",
    }


def absent(data: RunData, what: str, command: str, *files: str) -> str:
    """'not computed' for an absent artefact, or the reason an existing one was unusable."""
    reason = data.problem(*files)
    return m.problem(reason) if reason else m.not_computed(what, commands(data.run_dir)[command])


def _fit_ids(data: RunData) -> list[str]:
    """Samples used for anchor discovery (validation leaves them out)."""
    return data.anchors.fit_ids if data.anchors is not None else []


def configuration(data: RunData) -> str:
    """Headline facts of the run, the demo summary and the resolved configuration."""
    facts: dict[str, object] = {"run folder": str(data.run_dir)}
    if data.scores is not None:
        facts["samples scored"] = data.scores["sample_id"].nunique()
        facts["scorers"] = ", ".join(sorted(data.scores["scorer"].unique()))
    if data.methods:
        facts["unlearning methods"] = ", ".join(data.methods)
    if data.anchors is not None:
        anchors = data.anchors
        facts["anchors"] = (f"{len(anchors.easy)} easy, {len(anchors.hard)} hard "
                            f"({anchors.method}, k={anchors.k}), found on "
                            f"{len(anchors.fit_ids)} samples, {len(anchors.held_out_ids)} held out")
    if data.correlations is not None:
        best = _best_scorer(data.correlations)
        if best is not None:
            ceiling = ceiling_of(data, best["method"], best["scorer"])
            facts["best scorer vs measured difficulty"] = (
                f"{best['scorer']} (method {best['method']}): Spearman {best['spearman']:.3f} "
                f"[{best['spearman_low']:.3f}, {best['spearman_high']:.3f}], n={best['n']}, "
                + (f"noise ceiling {ceiling:.3f}" if ceiling is not None
                   else "noise ceiling unknown"))
    if data.sets is not None:
        summary, _ = _sets_over_methods(data.sets)
        columns = [c for c in ("hard delta_vs_random", "easy delta_vs_random")
                   if c in summary.columns]
        facts["sets vs random, over methods (" + " / ".join(columns) + ")"] = "; ".join(
            f"{scorer}: " + " / ".join(f"{row[c]:+.2f}" for c in columns)
            for scorer, row in summary.iterrows())
    parts = [m.lead(_configuration_lead(data)), m.key_value_table(facts)]
    if data.problems:
        parts.append("<h3>Files that could not be used</h3><ul>" + "".join(
            f"<li>{escape(message)}</li>" for message in data.problems.values()) + "</ul>")
    if data.summary is not None:
        flat = pd.json_normalize(data.summary, sep=".").iloc[0].to_dict()
        parts.append(m.details("summary.json", m.key_value_table(flat)))
    if data.config is not None:
        parts.append(m.details("config.json (resolved options and environment)",
                               m.preformatted(json.dumps(data.config, indent=2,
                                                         sort_keys=True, default=str))))
    else:
        parts.append(absent(data, "run configuration (config.json)", "demo", CONFIG_FILE))
    return "".join(parts)


def _configuration_lead(data: RunData) -> str:
    kinds = {"scores": data.scores, "unlearning outcomes": data.methods or None,
             "correlations with measured difficulty": data.correlations,
             "noise ceilings": data.reliability, "easy/hard sets": data.sets,
             "schedules": data.schedules, "anchors": data.anchors,
             "circuits": data.circuits_dir}
    present = [name for name, value in kinds.items() if value is not None]
    absent = [name for name, value in kinds.items() if value is None]
    facts = {}
    if data.scores is not None:
        facts = {"samples": data.scores["sample_id"].nunique(),
                 "scorers": data.scores["scorer"].nunique(), "methods": len(data.methods),
                 "seeded methods": sum(len(run.seeds) > 1 for run in data.methods.values())}
    return leads.configuration(facts, present, absent)


def _best_scorer(correlations: pd.DataFrame) -> pd.Series | None:
    """The row with the highest Spearman against the method-averaged difficulty (or against
    any method when no `mean` rows exist)."""
    rows = correlations[correlations["method"] == "mean"]
    rows = (rows if len(rows) else correlations).dropna(subset=["spearman"])
    return None if rows.empty else rows.loc[rows["spearman"].idxmax()]


def distributions(data: RunData) -> str:
    """Summary statistics and a histogram of each scorer's raw value."""
    if data.scores is None:
        return absent(data, "scores", "score", SCORES_FILE)
    stats = (data.scores.groupby("scorer")["value"]
             .agg(["count", "mean", "std", "min", "median", "max"]).reset_index())
    note = m.paragraph("Raw values (the value column); the difficulty used in the comparisons "
                       "is oriented so that higher = harder.")
    return (m.lead(leads.distributions(data.scores)) + m.table(stats) + note
            + m.image(score_histograms(data.scores), "score histograms"))


def versus_measured(data: RunData) -> str:
    """Scatter of every scorer's difficulty against the measured difficulty, and the
    correlations of `unlearnscope validate`: a scorer x method heatmap, the whole table folded
    below it."""
    parts = []
    if data.correlations is not None:
        parts.append(m.lead(leads.versus_measured(data.correlations,
                                                  held_out=data.anchors is not None)))
    measured = measured_difficulty(data.methods, exclude_ids=_fit_ids(data))
    if data.scores is None:
        parts.append(absent(data, "scores", "score", SCORES_FILE))
    elif measured is None:
        parts.append(m.not_computed("measured difficulty (per-sample unlearning outcomes)",
                                    commands(data.run_dir)["unlearn"]))
    else:
        pairs, titles = {}, {}
        for scorer, rows in data.scores.groupby("scorer"):
            frame = rows.set_index("sample_id")[["difficulty"]].join(measured, how="inner")
            if len(frame):
                pairs[scorer], titles[scorer] = frame, _scatter_title(data, scorer)
        with_outcomes = [name for name, run in data.methods.items() if run.outcomes is not None]
        parts.append(m.paragraph(
            f"Measured difficulty: rank of -efficacy within each method ({', '.join(with_outcomes)}"
            f"), averaged over methods; {len(measured)} samples, those used to discover anchors "
            "left out."))
        if pairs:
            parts.append(m.image(difficulty_scatters(pairs, titles), "difficulty scatters"))
    if data.correlations is None:
        parts.append(absent(data, "correlations with measured difficulty", "validate",
                             f"{VALIDATION_DIR}/{CORRELATIONS_FILE}"))
    else:
        parts.append("<h3>Correlations with measured difficulty (95% bootstrap CI)</h3>")
        parts.append(unverified_warning(data.correlations))
        parts.append(m.paragraph(
            "Each cell: Spearman of the scorer's difficulty with the method's measured "
            "difficulty, its 95% bootstrap interval (bold where it excludes 0) and, where the "
            "method ran several seeds, the fraction of the noise ceiling named in its header. "
            "Red: harder by the scorer is harder to unlearn; blue: the opposite."))
        parts.append(correlation_grid(data))
        parts.append(m.details("every correlation (validation/correlations.csv)",
                               m.table(data.correlations.sort_values(["scorer", "method"]))
                               + ceiling_note(data)))
    return "".join(parts)


def _scatter_title(data: RunData, scorer: str) -> str:
    if data.correlations is None:
        return f"{scorer} (Spearman: run validate)"
    rows = data.correlations[data.correlations["scorer"] == scorer]
    mean = rows[rows["method"] == "mean"]
    row = mean.iloc[0] if len(mean) else rows.iloc[0] if len(rows) == 1 else None
    if row is None:
        return f"{scorer} (no correlation row)"
    ceiling = ceiling_of(data, row["method"], scorer)
    return (f"{scorer}: Spearman {row['spearman']:.2f} "
            f"[{row['spearman_low']:.2f}, {row['spearman_high']:.2f}]"
            + (f", ceiling {ceiling:.2f}" if ceiling is not None else ""))


def easy_hard_sets(data: RunData) -> str:
    """The easy/hard set experiment: each scorer's easy and hard sets' efficacy and their
    difference to random sets, over methods (the file's `mean` rows, else the mean of the
    methods' rows), then the whole table."""
    if data.sets is None:
        return absent(data, "easy/hard set experiment", "sets", f"{VALIDATION_DIR}/{SETS_FILE}")
    sets = data.sets.sort_values(["scorer", "method", "set"], kind="stable")
    summary, random = _sets_over_methods(sets)
    parts = [m.lead(leads.sets(summary)), "<h3>Over methods</h3>",
             m.table(summary.reset_index())]
    if len(random):
        parts.append(m.paragraph(f"Random sets' efficacy: {m.number(float(random.mean()))}."))
    parts += ["<h3>Per scorer, method and set</h3>", m.table(sets)]
    return "".join(parts)


def _sets_over_methods(sets: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Per scorer (index), the easy and hard sets' `efficacy` and `delta_vs_random` over
    methods (the table's `mean` rows, else the mean of the methods' rows), and the random
    sets' efficacy."""
    mean_rows = sets[sets["method"] == "mean"]
    over_methods = mean_rows if len(mean_rows) else sets
    scored = over_methods[over_methods["set"] != "random"]
    summary = scored.pivot_table(index="scorer", columns="set",
                                 values=["efficacy", "delta_vs_random"], aggfunc="mean")
    summary.columns = [f"{part} {value}" for value, part in summary.columns]
    return summary, over_methods.loc[over_methods["set"] == "random", "efficacy"]


def circuit_signatures(data: RunData, top_n: float = DEFAULT_TOP_N) -> str:
    """Easy vs hard circuits: from the anchors, else the easiest and hardest quartile of the
    measured difficulty."""
    if data.circuits_dir is None:
        return m.not_computed("circuits (circuits/)", commands(data.run_dir)["circuits"])
    if data.anchors is not None:
        easy, hard = data.anchors.easy, data.anchors.hard
        source = "reference anchor sets (anchors/anchors.json)"
    else:
        measured = measured_difficulty(data.methods)
        if measured is None:
            return (absent(data, "reference anchors", "anchors", f"{ANCHORS_DIR}/{ANCHORS_FILE}")
                    + m.not_computed("measured difficulty", commands(data.run_dir)["unlearn"]))
        order = measured.sort_values(kind="stable")
        quarter = max(1, len(order) // 4)
        easy, hard = list(order.index[:quarter]), list(order.index[-quarter:])
        source = "easiest and hardest quartile of measured difficulty (no anchors in this run)"
    try:
        result = compare_easy_hard(data.circuits_dir, easy, hard, top_n=top_n)
    except DataError as error:
        return m.problem(str(error))
    p = result.statistics.set_index("statistic")
    parts = [m.lead(leads.circuits(p, len(result.ids["easy"]), len(result.ids["hard"]),
                                   int(result.edge_summary["n_significant_q05"]))),
             m.paragraph(f"Groups: {source}: {len(result.ids['easy'])} easy and "
                         f"{len(result.ids['hard'])} hard circuits, each the top "
                         f"{result.n_edges_selected} of {result.n_edges_in_graph} edges by "
                         "|score| (dangling nodes pruned).")]
    parts.append(m.key_value_table({f"{name} samples": ", ".join(ids[:SHOWN_IDS])
                                    + (" ..." if len(ids) > SHOWN_IDS else "")
                                    for name, ids in result.ids.items()}))
    for name, missing in result.not_stored.items():
        if missing:
            parts.append(m.paragraph(f"{len(missing)} {name} sample(s) without a stored "
                                     f"circuit: {', '.join(missing[:10])}"))
    empty = {name: count for name, count in result.n_empty.items() if count}
    if empty:
        parts.append(m.paragraph(
            "Circuits left empty by pruning (their top edges do not connect the input to the "
            "logits; a larger --top-n or the midpoint integration rule may help): "
            + ", ".join(f"{count} of {len(result.ids[name])} {name}"
                        for name, count in empty.items()) + ".", css="problem"))
    parts += [
        m.image(result.plots["layer_histogram"], "edges by layer"),
        m.paragraph(_p_text(p, "last_third_fraction")),
        m.image(result.plots["depth"], "circuit depth"),
        m.paragraph(_p_text(p, "mean_depth") + " " + _p_text(p, "max_depth")),
        m.image(result.plots["edge_frequency"], "edge frequencies"),
        m.paragraph(f"{result.edge_summary['n_significant_q05']} edge(s) differ at "
                    "Benjamini-Hochberg q < 0.05 (Fisher exact tests)."),
        "<h3>Circuit statistics, easy vs hard, two-sided tests</h3>",
        m.table(result.statistics),
        "<h3>Edge-frequency comparison</h3>", m.key_value_table(result.edge_summary),
        "<h3>Edges whose frequency differs most (easy - hard)</h3>", m.table(result.top_edges),
    ]
    return "".join(parts)


def _p_text(tests: pd.DataFrame, statistic: str) -> str:
    row = tests.loc[statistic]
    return (f"{statistic}: mean easy {m.number(row['mean_easy'])}, "
            f"hard {m.number(row['mean_hard'])}; "
            f"Mann-Whitney p = {m.number(row['mannwhitney_p'])}, "
            f"permutation p = {m.number(row['permutation_p'])}.")


def scorer_correlations(data: RunData) -> str:
    """Spearman correlation matrix between scorers: the validation's, else computed here."""
    matrix, note = data.scorer_correlations, ""
    if matrix is None:
        if data.scores is None:
            return absent(data, "scorer correlations", "validate",
                           f"{VALIDATION_DIR}/{SCORER_CORRELATIONS_FILE}")
        matrix = (data.scores.pivot_table(index="sample_id", columns="scorer",
                                          values="difficulty")
                  .corr(method="spearman"))
        matrix.index.name = matrix.columns.name = None
        note = m.paragraph("validation/scorer_correlations.csv is absent; Spearman computed "
                           "here from scores.parquet over all scored samples (run `"
                           f"{commands(data.run_dir)['validate']}` for the held-out version).")
    parts = [m.lead(leads.scorer_correlations(matrix)), note,
             m.image(correlation_heatmap(matrix), "scorer correlations"),
             m.table(matrix, index=True)]
    if data.cud_stability is not None:
        parts += ["<h3>Stability of CUD across anchor methods (pairwise Spearman)</h3>",
                  m.table(data.cud_stability)]
    elif problem := data.problem(f"{VALIDATION_DIR}/{CUD_STABILITY_FILE}"):
        parts.append(m.problem(problem))
    return "".join(parts)


def schedules(data: RunData) -> str:
    """Uniform vs weighted vs curriculum schedules at the same step budget."""
    if data.schedules is None:
        return absent(data, "schedule experiment", "schedules",
                      f"{VALIDATION_DIR}/{SCHEDULES_FILE}")
    frame = data.schedules.sort_values(["method", "schedule"], kind="stable")
    labelled = frame.assign(schedule=[
        s if pd.isna(c) or c in ("", "-", "none") else f"{s} ({c})"
        for s, c in zip(frame["schedule"], frame["scorer"], strict=True)])
    plot = grouped_bars(labelled, group="method", bar="schedule", value="efficacy",
                        title="forget efficacy by schedule")
    return (m.lead(leads.schedules(frame, labelled["schedule"])) + m.table(frame)
            + m.image(plot, "schedule comparison"))


def methods(data: RunData) -> str:
    """Per unlearning method: forget/retain loss and probability before and after (the lowest
    seed's run), mean efficacy (over seeds), and the TOFU metrics of the unlearned model."""
    if not data.methods:
        return m.not_computed("unlearning runs (unlearn/<method>/)",
                              commands(data.run_dir)["unlearn"])
    rows, efficacy = [], {}
    for name, run in data.methods.items():
        row: dict[str, object] = {"method": name}
        summary = run.summary or {}
        row["steps"] = summary.get("steps")
        for part in ("forget", "retain"):
            for key, value in (summary.get(part) or {}).items():
                row[f"{part} {key}"] = value
        if run.outcomes is not None:
            efficacy[name] = run.outcomes["efficacy"].to_numpy(dtype=float)
            row["n samples"] = len(run.outcomes)
            row["mean efficacy"] = float(np.mean(efficacy[name]))
            row["mean delta_loss"] = (float(run.outcomes["delta_loss"].mean())
                                      if "delta_loss" in run.outcomes else None)
            row["seeds"] = len(run.seeds) or 1  # outcomes of several seeds are their mean
        rows.append(row)
    seeds = {name: len(run.seeds) or 1 for name, run in data.methods.items()}
    parts = [m.lead(leads.methods({k: float(np.mean(v)) for k, v in efficacy.items()}, seeds)),
             "<h3>Unlearning summary</h3>", m.table(pd.DataFrame(rows))]
    for name in data.methods:
        reason = data.problem(f"{UNLEARN_DIR}/{name}/{OUTCOMES_FILE}",
                              f"{UNLEARN_DIR}/{name}/{SUMMARY_FILE}")
        if reason:
            parts.append(m.problem(reason))
    if efficacy:
        parts.append(m.image(efficacy_histograms(efficacy), "efficacy per method"))
    parts.append("<h3>TOFU metrics of the unlearned models</h3>" + _tofu_metrics(data))
    return "".join(parts)


def _tofu_metrics(data: RunData) -> str:
    with_metrics = {name: run.metrics for name, run in data.methods.items() if run.metrics}
    if not with_metrics:
        files = [f"{UNLEARN_DIR}/{name}/{METRICS_FILE}" for name in data.methods]
        return absent(data, "TOFU metrics", "evaluate", *files)
    rows, reasons = [], []
    for name, metrics in with_metrics.items():
        keys = [*TOFU_METRICS, *sorted(k for k in metrics if k.startswith("mia_"))]
        rows.append({"method": name, **{k: metrics.get(k) for k in keys}})
        reasons += [f"{name}: {k} missing: {why}"
                    for k, why in (metrics.get("missing") or {}).items()]
    frame = pd.DataFrame(rows)
    frame[frame.columns[1:]] = frame[frame.columns[1:]].apply(pd.to_numeric, errors="coerce")
    notes = "".join(m.paragraph(r) for r in reasons)
    return m.table(frame) + (m.details("missing metrics and why", notes) if notes else "")


def samples(data: RunData) -> str:
    """Every sample: its question, each scorer's difficulty and each method's measured efficacy
    (the seed mean where seeds exist), sortable by clicking a header."""
    if data.scores is None and not any(r.outcomes is not None for r in data.methods.values()):
        return absent(data, "per-sample table (scores and outcomes)", "score",
                       SCORES_FILE)
    frame = sample_frame(data)
    efficacy = [c for c in frame.columns if c.startswith("efficacy: ")]
    n_scorers = 0 if data.scores is None else data.scores["scorer"].nunique()
    parts = [m.lead(leads.samples(frame, n_scorers, efficacy))]
    if data.samples is None:
        parts.append(absent(data, "sample questions (samples.parquet)", "demo",
                             SAMPLES_FILE))
    if not efficacy:
        parts.append(m.not_computed("measured efficacy (per-sample unlearning outcomes)",
                                    commands(data.run_dir)["unlearn"]))
    parts.append(m.paragraph("Difficulty: higher = harder by that scorer; efficacy: how much "
                             "unlearning moved the sample (its seed mean for a method run "
                             "under several seeds). Click a header to sort; click again to "
                             "reverse."))
    parts.append(sample_table(frame))
    return "".join(parts)

"""The report's reliability section: how noisy the measured difficulty is (DESIGN 5.9), from
`validation/reliability.csv`, and the notes other sections put next to their correlations."""

from __future__ import annotations

import numpy as np
import pandas as pd

from unlearnscope.evaluation.holdout import UNVERIFIED_COLUMN, unverified_note
from unlearnscope.evaluation.validation import EFFICACY, reliability_summary
from unlearnscope.layout import RELIABILITY_FILE, VALIDATION_DIR
from unlearnscope.report import leads
from unlearnscope.report import markup as m
from unlearnscope.report.plots import grouped_bars
from unlearnscope.report.rundata import RunData

CEILING_BAR = "noise ceiling"
ITEM_LABELS = {"seed_pair": "seeds", "scorer": "scorer", "method_pair": "other method"}


def _command(data: RunData) -> str:
    return f"unlearnscope validate --run {data.run_dir}"


def unverified_warning(*tables: pd.DataFrame | None) -> str:
    """A problem paragraph when a validation table was written with an unverified holdout."""
    names = sorted({name for table in tables if table is not None
                    and UNVERIFIED_COLUMN in table.columns
                    for value in table[UNVERIFIED_COLUMN].dropna()
                    for name in str(value).split(",") if name})
    return m.paragraph(unverified_note(names), css="problem") if names else ""


def ceiling_note(data: RunData) -> str:
    """What the `ceiling` columns of the correlation table mean, and where it is unknown."""
    if data.correlations is None or "ceiling" not in data.correlations.columns:
        return m.paragraph("No noise ceilings in validation/correlations.csv (written by an "
                           f"older validate; rerun `{_command(data)}`).")
    known = data.correlations.dropna(subset=["ceiling"])["method"].unique()
    text = ("ceiling: the noise ceiling of the method's seed mean (section 'Reliability of "
            "measured difficulty'); fraction_of_ceiling = spearman / ceiling. ")
    text += (f"Known for {', '.join(map(str, known))}; " if len(known) else
             "Unknown for every method here: each ran one seed ")
    text += "– where a method ran one seed (unlearn --seeds 0,1,2 measures it), and for mean."
    return m.paragraph(text)


def ceiling_of(data: RunData, method: str, scorer: str) -> float | None:
    """The noise ceiling shown beside one (scorer, method) correlation, if known."""
    if data.correlations is None or "ceiling" not in data.correlations.columns:
        return None
    rows = data.correlations[(data.correlations["scorer"] == scorer)
                             & (data.correlations["method"] == method)]
    value = float(rows["ceiling"].iloc[0]) if len(rows) else float("nan")
    return value if np.isfinite(value) else None


def reliability(data: RunData) -> str:
    """Per method: seed-to-seed Spearman, reliability of the seed mean, noise ceiling, each
    scorer raw and as a fraction of the ceiling, steps-to-forget and method agreement."""
    table = data.reliability
    if table is None:
        reason = data.problem(f"{VALIDATION_DIR}/{RELIABILITY_FILE}")
        if reason:
            return m.problem(reason)
        return m.not_computed("reliability of measured difficulty (validation/reliability.csv)",
                              _command(data))
    parts = [m.lead(leads.reliability(method_ceilings(data))), unverified_warning(table),
             m.paragraph(
        "Measured difficulty (-efficacy) moves with the seed, which fixes the forget order and "
        "the retain batches. With R seeds: Spearman between every pair of seeds, the "
        "Spearman-Brown reliability of the R-seed mean r_R = R r / (1 + (R-1) r) (r the mean "
        "pairwise rho), and the noise ceiling sqrt(r_R), the most a scorer can be expected to "
        "reach against that mean. 95% bootstrap intervals resample samples; the interval of "
        "rho / ceiling recomputes the ceiling in each resample.")]
    summary = reliability_summary(table)
    parts += ["<h3>Per method</h3>", m.table(summary)]
    unknown = summary[summary["note"] != ""]
    for _, row in unknown.iterrows():
        parts.append(m.paragraph(f"{row['method']}: {row['note']}.", css="missing"))
    scorers = table[(table["kind"] == "scorer") & (table["ground_truth"] == EFFICACY)]
    if len(scorers):
        ceilings = table[table["kind"] == "ceiling"].dropna(subset=["ceiling"])
        bars = pd.concat([
            scorers[["method", "item", "spearman"]],
            ceilings[["method", "spearman"]].assign(item=CEILING_BAR,
                                                    spearman=ceilings["ceiling"])])
        parts.append(m.image(grouped_bars(bars.dropna(subset=["spearman"]), group="method",
                                          bar="item", value="spearman",
                                          title="Spearman with the seed mean, and the ceiling"),
                             "scorers against the seed mean and the noise ceiling"))
    for kind, heading, columns in (
            ("seed_pair", "Seed-to-seed Spearman",
             ["method", "item", "n", "spearman", "spearman_low", "spearman_high"]),
            ("scorer", "Scorers against each ground truth (raw and as a fraction of the ceiling)",
             ["item", "method", "ground_truth", "n", "spearman", "spearman_low",
              "spearman_high", "ceiling", "fraction_of_ceiling", "fraction_low",
              "fraction_high"]),
            ("agreement", "Steps to forget (each sample unlearned alone) against batch efficacy",
             ["method", "ground_truth", "n", "spearman", "spearman_low", "spearman_high",
              "distinct", "tied", "note"]),
            ("method_pair", "Agreement between methods (different seeds paired)",
             ["method", "item", "n", "spearman", "note"])):
        rows = table[table["kind"] == kind]
        if len(rows):
            shown = rows[columns].rename(columns={"item": ITEM_LABELS.get(kind, "item")})
            parts += [f"<h3>{heading}</h3>", m.table(shown)]
    return "".join(parts)


def method_ceilings(data: RunData) -> dict[str, pd.Series]:
    """Per method, its `ceiling` row of `validation/reliability.csv` (efficacy ground truth:
    `n_seeds`, `ceiling`, `ceiling_low`, `ceiling_high`, `note`); empty without the file."""
    table = data.reliability
    if table is None:
        return {}
    rows = table[(table["kind"] == "ceiling") & (table["ground_truth"] == EFFICACY)]
    return {str(row["method"]): row for _, row in rows.iterrows()}

"""Report sections of the CUD validations that recompute CUD from the circuit store: the
cross-method generalization (`validation/cross_method.csv`) and the configuration chosen on the
fit half (`validation/cud_choice.csv`). Each reads its table when present and names the command
that makes it when absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from unlearnscope.errors import DataError
from unlearnscope.evaluation.cross_method import (
    CROSS_METHOD_COLUMNS,
    LEAVE_ONE_OUT,
    PAIR,
    cross_method_matrix,
)
from unlearnscope.evaluation.cud_choice import CHOICE_COLUMNS, STORE_SOURCE, criterion_sentence
from unlearnscope.layout import CROSS_METHOD_FILE, CUD_CHOICE_FILE, VALIDATION_DIR
from unlearnscope.report import leads
from unlearnscope.report import markup as m
from unlearnscope.report.plots import correlation_heatmap
from unlearnscope.report.rundata import RunData

SHOWN_CANDIDATES = 15  # best candidates listed before the whole table


def _table(data: RunData, name: str, columns: list[str]) -> pd.DataFrame | str | None:
    """The run's `validation/<name>` table, `None` when absent, or the HTML of its problem."""
    path = Path(data.run_dir) / VALIDATION_DIR / name
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"])
    except (OSError, ValueError) as error:
        return m.problem(str(DataError(f"unreadable table ({error})", source=str(path))))
    missing = [c for c in columns if c not in frame.columns]
    if missing or frame.empty:
        reason = f"missing column '{missing[0]}'" if missing else "no rows"
        return m.problem(str(DataError(reason, source=str(path))))
    return frame


def _interval(rho: float, low: float, high: float) -> str:
    return "–" if not np.isfinite(rho) else f"{rho:.3f} [{low:.3f}, {high:.3f}]"


def cross_method(data: RunData) -> str:
    """Heatmap of Spearman(CUD with anchors from method A, -efficacy of method B) on held-out
    samples, the leave-one-method-out rows, the seed pairing and the whole table."""
    table = _table(data, CROSS_METHOD_FILE, CROSS_METHOD_COLUMNS)
    if table is None:
        return m.not_computed("cross-method generalization of CUD",
                              f"unlearnscope validate cross-method --run {data.run_dir}")
    if isinstance(table, str):
        return table
    pairs = table[table["kind"] == PAIR]
    parts = [m.lead(leads.cross_method(pairs)), m.paragraph(
        "Anchors voted on the fit half from one method's outcomes (rows), CUD recomputed "
        "from the circuit store, Spearman with another method's measured difficulty "
        "(-efficacy, columns) on the held-out half only; the diagonal validates a method on "
        "itself. Settings: validation/cross_method.md.")]
    if len(pairs):
        parts.append(m.image(correlation_heatmap(cross_method_matrix(table)),
                             "cross-method Spearman heatmap"))
    pairing = table["pairing"].value_counts()
    parts.append(m.paragraph("Seed pairing: " + ", ".join(
        f"{count} row(s) {name}" for name, count in pairing.items()) + "."
        + (" Same-seed rows share their data order, which inflates agreement."
           if "same seed" in pairing.index else "")))
    loo = table[table["kind"] == LEAVE_ONE_OUT]
    if len(loo):
        shown = pd.DataFrame({
            "left out (validated on)": loo["target"], "anchors from": loo["anchors"],
            "Spearman [95% CI]": [_interval(r, lo, hi) for r, lo, hi in
                                  zip(loo["spearman"], loo["spearman_low"],
                                      loo["spearman_high"], strict=True)],
            "pairing": loo["pairing"], "n": loo["n"]})
        parts += ["<h3>Leave one method out</h3>", m.table(shown)]
    parts.append(m.details("every row (validation/cross_method.csv)", m.table(table)))
    return "".join(parts)


def cud_choice(data: RunData) -> str:
    """Which CUD configuration was chosen on the fit half (by its cross-fitted score), from
    which candidates, on which samples, and its held-out Spearman; whether the criterion
    predicts held-out validity; the best candidates and the whole table."""
    table = _table(data, CUD_CHOICE_FILE, CHOICE_COLUMNS)
    if table is None:
        return m.not_computed("CUD configuration chosen on the fit half",
                              f"unlearnscope validate cud-choice --run {data.run_dir}")
    if isinstance(table, str):
        return table
    chosen = table[table["chosen"].astype(str).str.lower() == "true"]
    if len(chosen) != 1:
        return m.problem(f"{data.run_dir / VALIDATION_DIR / CUD_CHOICE_FILE}: {len(chosen)} rows "
                         "marked chosen (expected one)")
    row = chosen.iloc[0]
    from_store = table[table["source"] == STORE_SOURCE]
    dimensions = {column: ", ".join(str(v) for v in dict.fromkeys(from_store[column]))
                  for column in ("top_n", "vector", "similarity", "anchor_method")}
    scored = table[table["source"] != STORE_SOURCE]
    how = (f"{int(row['fit_cv_folds'])}-fold cross-fitting (anchors voted on the other "
           "folds, CUD scored on the left-out one)" if row["source"] == STORE_SOURCE
           else "the fit samples outside its anchors' fit samples")
    facts = {
        "chosen configuration": row["candidate"],
        "candidates": f"{len(table)}: {len(from_store)} from the circuit store ("
                      + "; ".join(f"{k}: {v}" for k, v in dimensions.items()) + ")"
                      + (f", {len(scored)} scored CUD(s): {', '.join(scored['candidate'])}"
                         if len(scored) else ""),
        "chosen on": f"the fit half only: {int(row['fit_n'])} samples, by {how}; "
                     "cross-fitted Spearman " + m.number(float(row["fit_cv_spearman"]))
                     + " (in-sample, for comparison: "
                     + m.number(float(row["fit_in_sample_spearman"])) + ")",
        "reported on": f"the held-out half: {int(row['held_out_n'])} samples, read only after "
                       "the choice",
        "held-out Spearman [95% CI]": _interval(float(row["held_out_spearman"]),
                                                float(row["held_out_low"]),
                                                float(row["held_out_high"])),
    }
    anchors = data.anchors
    if anchors is not None:
        facts["fit samples (anchors/anchors.json)"] = ", ".join(anchors.fit_ids)
        facts["held-out samples"] = ", ".join(anchors.held_out_ids)
    ordered = table.sort_values("fit_cv_spearman", ascending=False, kind="mergesort",
                                na_position="last")
    columns = ["candidate", "source", "fit_cv_spearman", "fit_in_sample_spearman", "fit_n",
               "held_out_spearman", "chosen", "note"]
    return "".join([
        m.lead(leads.cud_choice(str(row["candidate"]), len(table), int(row["held_out_n"]),
                                facts["held-out Spearman [95% CI]"])),
        m.key_value_table(facts),
        m.paragraph("Each candidate is scored out of sample within the fit half, so that no "
                    "sample's score comes from anchors voted on its own outcome; the in-sample "
                    "score (anchors among the scored samples) is shown for comparison and "
                    "flatters configurations that memorize their anchors. "
                    + criterion_sentence(table)),
        f"<h3>Best {min(SHOWN_CANDIDATES, len(table))} candidates on the fit half</h3>",
        m.table(ordered[columns].head(SHOWN_CANDIDATES)),
        m.details("every candidate (validation/cud_choice.csv)", m.table(ordered)),
    ])

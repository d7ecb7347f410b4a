"""open-unlearning interop, both ways: its TOFU evaluation logs as our outcome tables, and our
difficulty as per-index weight files for its trainers.

**Reading.** open-unlearning (locuslab/open-unlearning) writes each evaluation of a model to
`<benchmark>_EVAL.json` (`TOFU_EVAL.json`): one entry per metric, `{"agg_value": ...,
"value_by_index": {"<row>": {...}}}`, `<row>` the row number in the evaluated split. Its
`forget_Q_A_Prob` rows hold `{"prob": p, "avg_loss": l}`, `l` the mean NLL over answer tokens
and `p = exp(-l)`: our `loss` and `prob` (DESIGN 5.1). Its `forget_Q_A_ROUGE` rows hold
`rougeL_recall`, our ROUGE-L recall of the greedy answer. Given the log of the model before
unlearning and of the model after, `import_outcomes` builds our outcome table (DESIGN 5.4:
`efficacy = 1 - prob_after / prob_before` clipped to [0, 1], `delta_loss = loss_after -
loss_before`), so `validate` can score our difficulty metrics on runs made with open-unlearning.
Row `i` of the forget split becomes sample `forgetXX_perturbed-<i:05d>`, the id our TOFU loader
gives row `i` of `tofu:forgetXX` and of `tofu:forgetXX_perturbed` (the same questions in the same
order; open-unlearning evaluates the latter); another `id_prefix` gives `<id_prefix>-<i:05d>`.
`read_retain_logs` reads what forget quality and privleak need from a retain model's log: its
`forget_truth_ratio` rows (`{"score": R}`) and `mia_min_k` AUC, or the same numbers from the
`metrics.json` that `unlearnscope evaluate` wrote for it.

**Writing.** `weight_table` turns one scorer's difficulty into a weight per row, written by
`write_weights` as JSON in the same per-index layout:

    {"format": "unlearnscope-weights/1", "scorer": "mrd", "weighting": "ease",
     "id_prefix": "forget10_perturbed", "n": 400,
     "value_by_index": {"0": {"sample_id": "forget10_perturbed-00000", "difficulty": -0.31,
                              "weight": 1.27}, ...}}

- `ease` (default): our `weighted` schedule's weights (`unlearning.samplers.ease_weights`): the
  value for the MRD forms (`mrd`, `mrd_grad`, `mrd_hutchinson`; high MRD = easy), else the rank
  of ease (1 for the hardest row, n for the easiest, ties averaged);
- `hardness`: the rank of difficulty (1 for the easiest row, n for the hardest).

Weights are scaled to mean 1 over the listed rows, so they serve as per-sample loss weights
without changing the loss scale, or as sampling weights (`torch.utils.data.WeightedRandomSampler`
normalizes them itself). `difficulty` is ours: higher = harder to unlearn.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from unlearnscope.data import tofu
from unlearnscope.data.tofu import N_AUTHORS, QUESTIONS_PER_AUTHOR
from unlearnscope.errors import DataError
from unlearnscope.evaluation.tofu import PRIVLEAK_ATTACK, RetainReference
from unlearnscope.layout import read_scores
from unlearnscope.runs import read_json, write_text
from unlearnscope.unlearning.outcomes import outcome_table
from unlearnscope.unlearning.samplers import ease_weights, load_difficulty

logger = logging.getLogger(__name__)

LOSS_METRIC = "forget_Q_A_Prob"
ROUGE_METRIC = "forget_Q_A_ROUGE"
ROUGE_FIELD = "rougeL_recall"
TRUTH_RATIO_METRIC = "forget_truth_ratio"
WEIGHTS_FORMAT = "unlearnscope-weights/1"
WEIGHTINGS = ("ease", "hardness")
WEIGHT_COLUMNS = ["index", "sample_id", "difficulty", "weight"]
_ROW_ID = re.compile(r"(?P<prefix>.+)-(?P<index>\d+)")


def sample_id(id_prefix: str, index: int) -> str:
    """Our id of row `index` of a split whose ids start with `id_prefix`: `forget10-00003`
    (`id_prefix` as given: `tofu.id_prefix` turns a TOFU split name into its ids' prefix)."""
    return f"{id_prefix}-{index:05d}"


def split_sample_id(value: str, *, source: str | None = None) -> tuple[str, int]:
    """`(id_prefix, row)` of an id made by `sample_id`; other ids are a `DataError`."""
    match = _ROW_ID.fullmatch(value)
    if match is None:
        raise DataError(f"sample id '{value}' is not <split>-<row number> (a TOFU id such as "
                        "forget10_perturbed-00003), so it names no row of an open-unlearning dataset",
                        source=source, field="sample_id")
    return match["prefix"], int(match["index"])


def tofu_forget_rows(id_prefix: str) -> int | None:
    """Rows of the TOFU forget split `id_prefix` (`forget10` or `forget10_perturbed`: 400),
    None for another prefix."""
    percent = tofu.forget_percent(id_prefix)
    if percent is None:
        return None
    return N_AUTHORS * QUESTIONS_PER_AUTHOR * percent // 100


def _infer_id_prefix(n_rows: int, source: str) -> str:
    for percent in ("01", "05", "10"):
        if tofu_forget_rows(f"forget{percent}") == n_rows:
            return tofu.id_prefix(f"forget{percent}")
    raise DataError(f"{n_rows} rows are not a whole TOFU forget split (forget01: 40, forget05: "
                    "200, forget10: 400 rows); give the id prefix of the evaluated split",
                    source=source, field="id_prefix")


def _number(value: Any, source: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = "a list (one value per answer option)" if isinstance(value, list) else repr(value)
        raise DataError(f"expected a number, got {kind}", source=source, field=field)
    if not math.isfinite(value):
        raise DataError(f"non-finite value {value}", source=source, field=field)
    return float(value)


def _rows(logs: Mapping[str, Any], metric: str, source: str) -> dict[int, dict | None]:
    """`value_by_index` of `metric`, keyed by row number (None where open-unlearning logged
    that it could not compute the row)."""
    entry = logs.get(metric)
    if not isinstance(entry, dict):
        raise DataError(f"no metric '{metric}' (has: {', '.join(sorted(logs)) or 'nothing'})",
                        source=source, field=metric)
    by_index = entry.get("value_by_index")
    if not isinstance(by_index, dict) or not by_index:
        raise DataError("expected a non-empty object of per-row values", source=source,
                        field=f"{metric}.value_by_index")
    rows: dict[int, dict | None] = {}
    for key, value in by_index.items():
        if not str(key).isdigit():
            raise DataError(f"row key '{key}' is not a row number", source=source,
                            field=f"{metric}.value_by_index")
        if value is not None and not isinstance(value, dict):
            raise DataError(f"expected an object, got {value!r}", source=source,
                            field=f"{metric}.value_by_index.{key}")
        rows[int(key)] = value
    return rows


def _row_losses(rows: Mapping[int, dict | None], metric: str, source: str) -> dict[int, float]:
    """Mean answer NLL per computed row: `avg_loss`, else -log(`prob`)."""
    losses = {}
    for row, value in rows.items():
        if value is None:
            continue
        where = f"{metric}.value_by_index.{row}"
        if "avg_loss" in value:
            losses[row] = _number(value["avg_loss"], source, f"{where}.avg_loss")
        elif "prob" in value:
            prob = _number(value["prob"], source, f"{where}.prob")
            if not 0.0 < prob <= 1.0:
                raise DataError(f"probability {prob} is not in (0, 1]", source=source,
                                field=f"{where}.prob")
            losses[row] = -math.log(prob)
        else:
            raise DataError("neither 'avg_loss' nor 'prob'", source=source, field=where)
    return losses


def _row_rouge(rows: Mapping[int, dict | None], source: str) -> dict[int, float]:
    rouge = {}
    for row, value in rows.items():
        if value is None:
            continue
        field = f"{ROUGE_METRIC}.value_by_index.{row}.{ROUGE_FIELD}"
        if ROUGE_FIELD not in value:
            raise DataError("missing", source=source, field=field)
        rouge[row] = _number(value[ROUGE_FIELD], source, field)
    return rouge


def _same_rows(before: Mapping[int, Any], after: Mapping[int, Any], metric: str,
               before_source: str, after_source: str) -> None:
    if set(before) != set(after):
        only_before = sorted(set(before) - set(after))
        only_after = sorted(set(after) - set(before))
        detail = (f"rows {only_before[:5]} only in {before_source}" if only_before
                  else f"rows {only_after[:5]} only in {after_source}")
        raise DataError(f"the two logs evaluated different rows ({len(before)} before, "
                        f"{len(after)} after; {detail}): were both made on one forget split?",
                        source=after_source, field=f"{metric}.value_by_index")


def import_outcomes(before: str | Path, after: str | Path, *, id_prefix: str | None = None,
                    metric: str = LOSS_METRIC) -> pd.DataFrame:
    """Our outcome table `[n_rows]` from open-unlearning's evaluation logs of one model before
    and after unlearning: `sample_id, loss_before, loss_after, prob_before, prob_after,
    efficacy, delta_loss` (+ `rouge_before, rouge_after, rouge_drop` when both logs hold
    `forget_Q_A_ROUGE`), in row order.

    `metric` names the per-row probability metric (`forget_Q_A_Prob`; `forget_Q_A_PARA_Prob`
    for the paraphrased questions). Row `i` becomes sample `<prefix>-<i:05d>`, `prefix` the ids'
    prefix of the TOFU split `id_prefix` (`forget10` and `forget10_perturbed`:
    `forget10_perturbed`) or `id_prefix` itself for another name; without `id_prefix`, that of
    the TOFU forget split of that many rows (400 rows: `forget10`). A TOFU forget prefix must
    match the number of rows. Rows open-unlearning logged as null in either file
    are left out, with a warning.
    """
    before_source, after_source = str(before), str(after)
    before_logs, after_logs = read_json(before), read_json(after)
    rows_before = _rows(before_logs, metric, before_source)
    rows_after = _rows(after_logs, metric, after_source)
    _same_rows(rows_before, rows_after, metric, before_source, after_source)
    n_rows = len(rows_before)
    split = id_prefix
    id_prefix = (_infer_id_prefix(n_rows, before_source) if split is None
                 else tofu.id_prefix(split))
    expected = tofu_forget_rows(id_prefix)
    if expected is not None and (n_rows != expected or max(rows_before) >= expected):
        raise DataError(f"{n_rows} rows (numbered up to {max(rows_before)}), but TOFU "
                        f"{split} has {expected}: give the id prefix of the evaluated split",
                        source=before_source, field="id_prefix")
    loss_before = _row_losses(rows_before, metric, before_source)
    loss_after = _row_losses(rows_after, metric, after_source)
    kept = sorted(set(loss_before) & set(loss_after))
    if len(kept) < n_rows:
        logger.warning("%d of %d rows are null in %s or %s and are left out", n_rows - len(kept),
                       n_rows, before_source, after_source)
    if not kept:
        raise DataError("no row was computed in both logs", source=after_source,
                        field=f"{metric}.value_by_index")
    rouge_before = rouge_after = None
    has_rouge = [ROUGE_METRIC in before_logs, ROUGE_METRIC in after_logs]
    if all(has_rouge):
        by_row_before = _row_rouge(_rows(before_logs, ROUGE_METRIC, before_source), before_source)
        by_row_after = _row_rouge(_rows(after_logs, ROUGE_METRIC, after_source), after_source)
        missing = [row for row in kept if row not in by_row_before or row not in by_row_after]
        if missing:
            raise DataError(f"no ROUGE for rows {missing[:5]} that have probabilities",
                            source=after_source, field=f"{ROUGE_METRIC}.value_by_index")
        rouge_before = np.array([by_row_before[row] for row in kept])
        rouge_after = np.array([by_row_after[row] for row in kept])
    elif any(has_rouge):
        logger.warning("%s is only in %s: the outcome table has no ROUGE columns", ROUGE_METRIC,
                       before_source if has_rouge[0] else after_source)
    return outcome_table([sample_id(id_prefix, row) for row in kept],
                         np.array([loss_before[row] for row in kept]),
                         np.array([loss_after[row] for row in kept]), rouge_before, rouge_after)


def read_retain_logs(path: str | Path, forget_ids: Sequence[str],
                     forget_split: str | None = None) -> RetainReference:
    """A retain model's per-sample forget truth ratios (keyed by sample id) and min-k MIA AUC
    (None when not logged), from the `metrics.json` `unlearnscope evaluate` wrote for it
    (`metrics_report`; logs of another `forget_split` than the given one are refused), or from
    an open-unlearning `TOFU_EVAL.json`, whose `forget_truth_ratio` rows are row numbers of the
    forget split, mapped to `forget_ids` (rows logged as null are left out, with a warning)."""
    source = str(path)
    logs = read_json(path)
    auc_key = f"mia_{PRIVLEAK_ATTACK}"
    if "forget_truth_ratios" in logs:
        logged_split = logs.get("forget_split")
        if forget_split is not None and logged_split not in (None, forget_split):
            raise DataError(f"logs are for {logged_split}, not {forget_split}", source=source,
                            field="forget_split")
        ratios = logs["forget_truth_ratios"]
        if not isinstance(ratios, dict) or not ratios:
            raise DataError("no per-sample truth ratios", source=source,
                            field="forget_truth_ratios")
        return RetainReference({str(k): float(v) for k, v in ratios.items()}, logs.get(auc_key))
    entry = logs.get(TRUTH_RATIO_METRIC)
    if not (isinstance(entry, dict) and isinstance(entry.get("value_by_index"), dict)):
        raise DataError("neither an `evaluate` metrics.json (forget_truth_ratios) nor an "
                        f"open-unlearning log ({TRUTH_RATIO_METRIC}.value_by_index)",
                        source=source)
    ratios = {}
    for row, value in _rows(logs, TRUTH_RATIO_METRIC, source).items():
        if row >= len(forget_ids):
            raise DataError(f"row {row} is beyond the {len(forget_ids)} forget samples",
                            source=source, field=TRUTH_RATIO_METRIC)
        if value is not None:
            ratios[forget_ids[row]] = _number(value.get("score"), source,
                                              f"{TRUTH_RATIO_METRIC}.value_by_index.{row}.score")
    if len(ratios) < len(entry["value_by_index"]):
        logger.warning("%d rows of %s are null in %s and are left out",
                       len(entry["value_by_index"]) - len(ratios), TRUTH_RATIO_METRIC, source)
    mia = logs.get(auc_key)
    return RetainReference(ratios, mia.get("agg_value") if isinstance(mia, dict) else None)


def weight_table(scores: str | Path, scorer: str, *, weighting: str = "ease",
                 id_prefix: str | None = None) -> tuple[pd.DataFrame, str]:
    """Per-row weights `[n_samples]` (`index, sample_id, difficulty, weight`, in row order)
    from one scorer of a score table (`scores.parquet`), and the id prefix of its rows.

    Every sample id must be `<prefix>-<row>` with one prefix: when given, `id_prefix` or the ids'
    prefix of that TOFU split (`forget10`: `forget10_perturbed-<row>`, or `forget10-<row>` in a
    table written before).
    Weights follow `weighting` (see the module docstring) scaled to mean 1.
    """
    if weighting not in WEIGHTINGS:
        raise DataError(f"weighting '{weighting}' is not one of {', '.join(WEIGHTINGS)}",
                        field="weighting")
    source = str(scores)
    if not Path(scores).is_file():
        raise DataError("score table not found", source=source)
    table = read_scores(scores)
    ids = table.loc[table["scorer"].astype(str) == scorer, "sample_id"].tolist()
    scorer, value, difficulty = load_difficulty(scores, ids, scorer)
    rows = [split_sample_id(i, source=source) for i in ids]
    prefixes = sorted({prefix for prefix, _ in rows})
    # a TOFU split name also accepts tables written before its ids took the twin's spelling
    accepted = set() if id_prefix is None else {id_prefix, tofu.id_prefix(id_prefix)}
    if len(prefixes) > 1 or (id_prefix is not None and prefixes[0] not in accepted):
        wanted = (f"'{tofu.id_prefix(id_prefix)}'" if id_prefix is not None
                  else "one split")
        raise DataError(f"sample ids come from {', '.join(prefixes)}, expected {wanted}: "
                        "weights number the rows of one dataset", source=source,
                        field="sample_id")
    expected = tofu_forget_rows(prefixes[0])
    if expected is not None and max(row for _, row in rows) >= expected:
        raise DataError(f"row {max(row for _, row in rows)} is beyond the {expected} rows of "
                        f"TOFU {prefixes[0]}", source=source, field="sample_id")
    if weighting == "ease":
        weights = np.asarray(ease_weights(scorer, value, difficulty), dtype=np.float64)
    else:
        weights = rankdata(difficulty, method="average")
    frame = pd.DataFrame({"index": [row for _, row in rows], "sample_id": ids,
                          "difficulty": difficulty, "weight": weights / weights.mean()})
    return frame.sort_values("index", kind="stable").reset_index(drop=True), prefixes[0]


def write_weights(path: str | Path, table: pd.DataFrame, *, scorer: str, weighting: str,
                  id_prefix: str) -> None:
    """Write a `weight_table` as the per-index JSON of the module docstring (atomically)."""
    by_index = {str(int(row.index)): {"sample_id": row.sample_id,
                                      "difficulty": float(row.difficulty),
                                      "weight": float(row.weight)}
                for row in table.itertuples(index=False)}
    record = {"format": WEIGHTS_FORMAT, "scorer": scorer, "weighting": weighting,
              "normalization": "mean 1 over the listed rows", "id_prefix": id_prefix,
              "n": len(by_index), "value_by_index": by_index}
    write_text(path, json.dumps(record, indent=2) + "\n")


def read_weights(path: str | Path) -> pd.DataFrame:
    """A weight file of `write_weights` as `index, sample_id, difficulty, weight` rows
    `[n]` in row order; a malformed file is a `DataError` naming the file and field."""
    source = str(path)
    record = read_json(path)
    if record.get("format") != WEIGHTS_FORMAT:
        raise DataError(f"expected format '{WEIGHTS_FORMAT}', got {record.get('format')!r}",
                        source=source, field="format")
    by_index = record.get("value_by_index")
    if not isinstance(by_index, dict) or not by_index:
        raise DataError("expected a non-empty object of per-row weights", source=source,
                        field="value_by_index")
    rows = []
    for key, entry in by_index.items():
        where = f"value_by_index.{key}"
        if not str(key).isdigit():
            raise DataError(f"row key '{key}' is not a row number", source=source,
                            field="value_by_index")
        if not isinstance(entry, dict) or not isinstance(entry.get("sample_id"), str):
            raise DataError("expected an object with a sample_id", source=source,
                            field=f"{where}.sample_id")
        weight = _number(entry.get("weight"), source, f"{where}.weight")
        if weight < 0:
            raise DataError(f"negative weight {weight}", source=source, field=f"{where}.weight")
        rows.append((int(key), entry["sample_id"],
                     _number(entry.get("difficulty"), source, f"{where}.difficulty"), weight))
    if record.get("n") != len(rows):
        raise DataError(f"says {record.get('n')} rows, holds {len(rows)}", source=source,
                        field="n")
    frame = pd.DataFrame(rows, columns=WEIGHT_COLUMNS)
    return frame.sort_values("index", kind="stable").reset_index(drop=True)

"""Read what a run folder holds, tolerating absent stages.

Every artefact is optional: an absent file stays `None` and the report says which command
makes it. A file that exists but cannot be used (malformed, missing a column) is recorded in
`RunData.problems` under its relative path, with a `DataError` message naming the file and
field, and is otherwise treated as absent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from unlearnscope.anchors.sets import AnchorSets, read_anchors
from unlearnscope.errors import DataError
from unlearnscope.evaluation import validation
from unlearnscope.evaluation.circuit_guided import CIRCUIT_GUIDED_COLUMNS
from unlearnscope.evaluation.depth_ablation import DEPTH_COLUMNS
from unlearnscope.evaluation.holdout import UNVERIFIED_COLUMN
from unlearnscope.evaluation.partial import PARTIAL_COLUMNS
from unlearnscope.evaluation.prediction import (
    CROSS_METHOD_COLUMNS,
    IMPORTANCE_COLUMNS,
    PREDICTION_COLUMNS,
    SELECTION_COLUMNS,
    SUMMARY_COLUMNS,
)
from unlearnscope.layout import (
    ANCHORS_DIR,
    ANCHORS_FILE,
    CIRCUIT_GUIDED_FILE,
    CIRCUITS_DIR,
    CLAIMS_FILE,
    CONFIG_FILE,
    CORRELATION_REQUIRED,
    CORRELATIONS_FILE,
    CUD_STABILITY_FILE,
    DEPTH_ABLATION_FILE,
    EVAL_DIR,
    HEADER_FILE,
    METRICS_FILE,
    OUTCOME_REQUIRED,
    OUTCOMES_FILE,
    PARTIAL_FILE,
    PREDICTION_CROSS_METHOD_FILE,
    PREDICTION_FILE,
    PREDICTION_IMPORTANCE_FILE,
    PREDICTION_SELECTION_FILE,
    PREDICTION_SUMMARY_FILE,
    RELIABILITY_FILE,
    RELIABILITY_REQUIRED,
    SAMPLE_COLUMNS,
    SAMPLES_FILE,
    SCHEDULE_REQUIRED,
    SCHEDULES_FILE,
    SCORE_COLUMNS,
    SCORER_CORRELATIONS_FILE,
    SCORES_FILE,
    SET_REQUIRED,
    SETS_FILE,
    STABILITY_COLUMNS,
    SUMMARY_FILE,
    UNLEARN_DIR,
    VALIDATION_DIR,
    read_table,
    seed_folders,
)
from unlearnscope.report.signatures import CLAIM_COLUMNS
from unlearnscope.runs import read_json, write_parquet

T = TypeVar("T")


@dataclass
class MethodRun:
    """One `unlearn/<method>/` folder: per-sample outcomes, loss summary and TOFU metrics.

    A method run under several seeds (`unlearn/<method>/seed<s>/`) has one outcome table per
    seed in `seeds`; `outcomes` is then their seed mean and `summary` the first seed's."""

    name: str
    outcomes: pd.DataFrame | None = None
    summary: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    seeds: dict[int, pd.DataFrame] = field(default_factory=dict)

    def measured(self) -> pd.DataFrame | dict[int, pd.DataFrame] | None:
        """What validation reads for this method: the per-seed tables, else the outcomes."""
        return self.seeds or self.outcomes


@dataclass
class RunData:
    """Everything the report reads from a run folder (`None` where absent)."""

    run_dir: Path
    config: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    scores: pd.DataFrame | None = None
    samples: pd.DataFrame | None = None
    methods: dict[str, MethodRun] = field(default_factory=dict)
    correlations: pd.DataFrame | None = None
    scorer_correlations: pd.DataFrame | None = None
    cud_stability: pd.DataFrame | None = None
    sets: pd.DataFrame | None = None
    schedules: pd.DataFrame | None = None
    reliability: pd.DataFrame | None = None
    partial: pd.DataFrame | None = None
    prediction: pd.DataFrame | None = None
    prediction_summary: pd.DataFrame | None = None
    prediction_importance: pd.DataFrame | None = None
    prediction_cross_method: pd.DataFrame | None = None
    prediction_selection: pd.DataFrame | None = None
    circuit_guided: pd.DataFrame | None = None
    depth_ablation: pd.DataFrame | None = None
    claims: pd.DataFrame | None = None
    anchors: AnchorSets | None = None
    circuits_dir: Path | None = None
    problems: dict[str, str] = field(default_factory=dict)

    def problem(self, *relative_paths: str) -> str | None:
        """The first recorded problem among `relative_paths`, if any."""
        return next((self.problems[p] for p in relative_paths if p in self.problems), None)


def read_square_matrix(path: Path) -> pd.DataFrame:
    """A square correlation matrix written with its row labels in the first column."""
    frame = read_table(path, ())
    frame = frame.drop(columns=[UNVERIFIED_COLUMN], errors="ignore")
    if frame.shape[1] < 2:
        raise DataError("expected row labels and one column per scorer", source=str(path))
    frame = frame.set_index(frame.columns[0])
    frame.index = frame.index.astype(str)
    frame.index.name = None
    if list(frame.index) != list(frame.columns):
        raise DataError("rows and columns name different scorers", source=str(path))
    try:
        return frame.astype(float)
    except ValueError as error:
        raise DataError(f"not a number ({error})", source=str(path)) from None


def _table(columns: Sequence[str], allow_empty: bool = False) -> Callable[[Path], pd.DataFrame]:
    """A reader of a table with every one of `columns` (`layout.read_table`)."""
    return partial(read_table, columns=columns, allow_empty=allow_empty)


# RunData field: (its table under validation/, its reader). `unlearnscope predict` writes
# header-only tables when no held-out outcome is known, so those may have no rows.
VALIDATION_TABLES: dict[str, tuple[str, Callable[[Path], pd.DataFrame]]] = {
    "correlations": (CORRELATIONS_FILE, _table(CORRELATION_REQUIRED)),
    "scorer_correlations": (SCORER_CORRELATIONS_FILE, read_square_matrix),
    "cud_stability": (CUD_STABILITY_FILE, _table(STABILITY_COLUMNS)),
    "sets": (SETS_FILE, _table(SET_REQUIRED)),
    "schedules": (SCHEDULES_FILE, _table(SCHEDULE_REQUIRED)),
    "reliability": (RELIABILITY_FILE, _table(RELIABILITY_REQUIRED)),
    "partial": (PARTIAL_FILE, _table(PARTIAL_COLUMNS)),
    "prediction": (PREDICTION_FILE, _table(PREDICTION_COLUMNS, allow_empty=True)),
    "prediction_summary": (PREDICTION_SUMMARY_FILE, _table(SUMMARY_COLUMNS, allow_empty=True)),
    "prediction_importance": (PREDICTION_IMPORTANCE_FILE,
                              _table(IMPORTANCE_COLUMNS, allow_empty=True)),
    "prediction_cross_method": (PREDICTION_CROSS_METHOD_FILE,
                                _table(CROSS_METHOD_COLUMNS, allow_empty=True)),
    "prediction_selection": (PREDICTION_SELECTION_FILE, _table(SELECTION_COLUMNS)),
    "circuit_guided": (CIRCUIT_GUIDED_FILE, _table(CIRCUIT_GUIDED_COLUMNS)),
    "depth_ablation": (DEPTH_ABLATION_FILE, _table(DEPTH_COLUMNS)),
    "claims": (CLAIMS_FILE, _table(CLAIM_COLUMNS)),
}


def load_run(run_dir: str | Path) -> RunData:
    """Read every artefact of the run folder that exists."""
    root = Path(run_dir)
    if not root.is_dir():
        raise DataError("run folder not found", source=str(root))
    data = RunData(run_dir=root)

    def attempt(relative: str, reader: Callable[[Path], T]) -> T | None:
        path = root / relative
        if not path.is_file():
            return None
        try:
            return reader(path)
        except DataError as error:
            data.problems[relative] = str(error)
            return None

    data.config = attempt(CONFIG_FILE, read_json)
    data.summary = attempt(SUMMARY_FILE, read_json)
    data.scores = attempt(SCORES_FILE, lambda p: read_table(p, SCORE_COLUMNS))
    data.samples = attempt(SAMPLES_FILE, lambda p: read_table(p, SAMPLE_COLUMNS))
    for name, (file, reader) in VALIDATION_TABLES.items():
        setattr(data, name, attempt(f"{VALIDATION_DIR}/{file}", reader))
    data.anchors = attempt(f"{ANCHORS_DIR}/{ANCHORS_FILE}", read_anchors)
    unlearn = root / UNLEARN_DIR
    for folder in sorted(p for p in unlearn.iterdir() if p.is_dir()) if unlearn.is_dir() else []:
        prefix = f"{UNLEARN_DIR}/{folder.name}"
        if folder.name == validation.MEAN_METHOD:
            data.problems[prefix] = (f"{prefix}: the method name '{folder.name}' is reserved "
                                     "for the method-averaged difficulty")
            continue
        data.methods[folder.name] = _method_run(folder, prefix, attempt, data.problems)
    if (root / CIRCUITS_DIR / HEADER_FILE).is_file():
        data.circuits_dir = root / CIRCUITS_DIR
    return data


def _method_run(folder: Path, prefix: str, attempt: Callable,
                problems: dict[str, str]) -> MethodRun:
    """One method's folder in either layout (`outcomes.parquet`, or `seed<s>/` per seed; the
    lowest seed's summary)."""
    def outcomes(relative: str) -> pd.DataFrame | None:
        return attempt(relative, lambda p: read_table(p, OUTCOME_REQUIRED))

    metrics = attempt(f"{prefix}/{EVAL_DIR}/{METRICS_FILE}"
                      if (folder / EVAL_DIR / METRICS_FILE).is_file()
                      else f"{prefix}/{METRICS_FILE}", read_json)
    try:
        seeds = seed_folders(folder)
    except DataError as error:
        problems[prefix] = str(error)
        return MethodRun(folder.name, metrics=metrics)
    if not seeds or list(seeds.values()) == [folder]:
        return MethodRun(folder.name, outcomes=outcomes(f"{prefix}/{OUTCOMES_FILE}"),
                         summary=attempt(f"{prefix}/{SUMMARY_FILE}", read_json), metrics=metrics)
    tables = {seed: outcomes(f"{prefix}/seed{seed}/{OUTCOMES_FILE}") for seed in seeds}
    tables = {seed: table for seed, table in tables.items() if table is not None}
    first = min(seeds) if seeds else None
    return MethodRun(folder.name, metrics=metrics, seeds=tables,
                     outcomes=validation.seed_mean_outcomes(tables) if tables else None,
                     summary=None if first is None
                     else attempt(f"{prefix}/seed{first}/{SUMMARY_FILE}", read_json))


def write_samples(run_dir: str | Path, samples: Iterable[Any]) -> Path:
    """Write `run_dir/samples.parquet`: the `id` and `question` of each sample (objects with
    those attributes, such as `unlearnscope.data.Sample`), which the report's per-sample table
    shows next to the scores and outcomes."""
    frame = pd.DataFrame([{"sample_id": s.id, "question": s.question} for s in samples],
                         columns=list(SAMPLE_COLUMNS))
    path = Path(run_dir) / SAMPLES_FILE
    write_parquet(path, frame)
    return path


def measured_difficulty(methods: dict[str, MethodRun], exclude_ids: Iterable[str] = ()
                        ) -> pd.Series | None:
    """Measured difficulty per sample as `unlearnscope validate` computes it (DESIGN 5.4): the
    rank of -efficacy (its seed mean for a method run under several seeds) within each method
    with outcomes, averaged over methods, on the samples every method scored, without
    `exclude_ids`. `None` without outcomes."""
    outcomes = {name: run.measured() for name, run in methods.items()
                if run.measured() is not None}
    if not outcomes:
        return None
    measured = validation.measured_difficulty(outcomes, exclude_ids)[validation.MEAN_METHOD]
    return measured.rename("measured_difficulty")

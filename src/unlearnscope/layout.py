"""The run folder: every folder and file name, the columns of its tables, and their readers.

Each command writes into its `--out` folder; `unlearnscope demo` runs them all into one run
folder, laid out like this (`<method>` an unlearning method, `<s>` a seed, `<r>` a process rank):

    RUN/
      config.json            every command: resolved options, versions (`runs.write_config`)
      summary.json           demo: what the run found
      target/, retain/       finetune: finetune.json, training.parquet, model/ (weights and
                             tokenizer), checkpoint/progress.json + Accelerate state while running
      samples.parquet        demo: SAMPLE_COLUMNS, the question of every sample
      scores.parquet         score: SCORE_COLUMNS, one row per (sample, scorer)
      scorers.json           score: every scorer's settings
      progress/              score, while running: scores-rank<r>.jsonl, scorer-options.jsonl
      circuits/              circuits: the circuit store (header.json, index.json, shards)
      analysis/              circuits analyze RUN: statistics and plots
      paper/circuits/        demo: the store of the CUD authors' attribution settings
      unlearn/<method>/      unlearn (one seed), or one seed<s>/ per seed holding the same:
        outcomes.parquet     OUTCOME_COLUMNS (+ ROUGE_COLUMNS), one row per forget sample
        summary.json, training.parquet, trajectory.parquet, model/ (unless --no-save)
        checkpoint/          while running: before.json, trajectory.jsonl, latest/progress.json
        metrics.json, per_sample.parquet   evaluate (`evaluate --out unlearn/<method>/eval`
                             puts them in eval/, beside its own config.json)
      steps_to_forget/<method>/
        steps_to_forget.parquet   steps-to-forget: STEPS_COLUMNS; progress-<r>.jsonl running
      anchors/anchors.json   anchors: the easy and hard sets (`anchors.sets`)
      validation/            validate: correlations, scorer_correlations, cud_stability,
                             reliability, sets, schedules, cross_method, cud_choice; predict:
                             prediction*; the demo adds partial, circuit_guided,
                             depth_ablation, claims (each <name>.csv and <name>.md)
      predicted.parquet      predict: the predictions as a score table
      report.html            report

Progress files keep the three names they were first written under, so existing runs resume:
a checkpoint's `progress.json`, steps-to-forget's `progress-<r>.jsonl` and the scorer's
`progress/scores-rank<r>.jsonl`.

`config.json` and a checkpoint's `progress.json` are `runs.CONFIG_FILE` and
`runs.CHECKPOINT_STATE` (layout imports `runs`, which writes them), re-exported here.

`X_COLUMNS` are a table's columns as its writer writes them, in order; `X_REQUIRED` the ones
its readers need (columns added later are missing from older runs, which still load).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from unlearnscope.errors import DataError
from unlearnscope.runs import CHECKPOINT_STATE as CHECKPOINT_STATE
from unlearnscope.runs import CONFIG_FILE, check_finite, read_json

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.json"
PER_SAMPLE_FILE = "per_sample.parquet"
SAMPLES_FILE = "samples.parquet"
SCORES_FILE = "scores.parquet"
SCORERS_FILE = "scorers.json"
OUTCOMES_FILE = "outcomes.parquet"
TRAINING_FILE = "training.parquet"
TRAJECTORY_FILE = "trajectory.parquet"
STEPS_FILE = "steps_to_forget.parquet"
FINETUNE_FILE = "finetune.json"
ANCHORS_FILE = "anchors.json"
REPORT_FILE = "report.html"

MODEL_DIR = "model"  # finetune/unlearn run folders keep their weights and tokenizer here
CHECKPOINT_DIR = "checkpoint"
PROGRESS_DIR = "progress"  # the scorer's progress logs
CIRCUITS_DIR = "circuits"  # where `unlearnscope circuits --out DIR` puts its store
HEADER_FILE = "header.json"  # a circuit store's settings; its presence marks a store
INDEX_FILE = "index.json"  # a circuit store's sample id -> (shard, row)
ANALYSIS_DIR = "analysis"
PAPER_CIRCUITS_DIR = Path("paper") / CIRCUITS_DIR  # the store of the CUD authors' settings
ANCHORS_DIR = "anchors"
VALIDATION_DIR = "validation"
UNLEARN_DIR = "unlearn"
STEPS_DIR = "steps_to_forget"
EVAL_DIR = "eval"
TARGET_DIR = "target"
RETAIN_DIR = "retain"
SEED_DIR = re.compile(r"^seed(\d+)$")

CORRELATIONS_FILE = "correlations.csv"
SCORER_CORRELATIONS_FILE = "scorer_correlations.csv"
CUD_STABILITY_FILE = "cud_stability.csv"
RELIABILITY_FILE = "reliability.csv"
SETS_FILE = "sets.csv"
SCHEDULES_FILE = "schedules.csv"
PARTIAL_FILE = "partial.csv"
PREDICTION_FILE = "prediction.csv"
PREDICTION_SUMMARY_FILE = "prediction_summary.csv"
PREDICTION_IMPORTANCE_FILE = "prediction_importance.csv"
PREDICTION_CROSS_METHOD_FILE = "prediction_cross_method.csv"
PREDICTION_SELECTION_FILE = "prediction_selection.csv"
PREDICTED_FILE = "predicted.parquet"  # in the run folder: the predictions as a score table
CIRCUIT_GUIDED_FILE = "circuit_guided.csv"
DEPTH_ABLATION_FILE = "depth_ablation.csv"
CLAIMS_FILE = "claims.csv"
CROSS_METHOD_FILE = "cross_method.csv"
CUD_CHOICE_FILE = "cud_choice.csv"


def _required(columns: tuple[str, ...], *names: str) -> tuple[str, ...]:
    """`names`, each one of `columns`, in the order of `columns`."""
    unknown = [name for name in names if name not in columns]
    if unknown:
        raise ValueError(f"{', '.join(unknown)} not among the table's columns")
    return tuple(column for column in columns if column in names)


SCORE_COLUMNS = ("sample_id", "scorer", "value", "difficulty")
SAMPLE_COLUMNS = ("sample_id", "question")
OUTCOME_COLUMNS = ("sample_id", "loss_before", "loss_after", "prob_before", "prob_after",
                   "efficacy", "delta_loss")
ROUGE_COLUMNS = ("rouge_before", "rouge_after", "rouge_drop")  # when ROUGE was measured
OUTCOME_REQUIRED = _required(OUTCOME_COLUMNS, "sample_id", "efficacy")
STEPS_COLUMNS = ("sample_id", "steps_to_forget", "interpolated_steps", "capped", "prob_before",
                 "prob_final", "loss_before", "loss_final")
STEPS_REQUIRED = _required(STEPS_COLUMNS, "sample_id", "steps_to_forget")
CORRELATION_COLUMNS = ("scorer", "method", "spearman", "spearman_low", "spearman_high",
                       "kendall", "auroc", "n", "ceiling", "fraction_of_ceiling")
CORRELATION_REQUIRED = CORRELATION_COLUMNS[:8]
STABILITY_COLUMNS = ("scorer_a", "scorer_b", "spearman", "n")
RELIABILITY_COLUMNS = ("method", "ground_truth", "kind", "item", "n_seeds", "n", "spearman",
                       "spearman_low", "spearman_high", "reliability", "ceiling", "ceiling_low",
                       "ceiling_high", "fraction_of_ceiling", "fraction_low", "fraction_high",
                       "distinct", "tied", "note")
RELIABILITY_REQUIRED = _required(RELIABILITY_COLUMNS, "method", "ground_truth", "kind", "item",
                                 "n_seeds", "n", "spearman", "reliability", "ceiling",
                                 "fraction_of_ceiling")
SET_COLUMNS = ("scorer", "method", "set", "k", "efficacy", "delta_vs_random", "random_std",
               "random_min", "random_max", "n_random", "p_value", "p_value_sets",
               "forget_slots", "distinct_samples_drawn")
SET_REQUIRED = SET_COLUMNS[:6]
SCHEDULE_COLUMNS = ("method", "schedule", "scorer", "forget_slots", "distinct_samples_drawn",
                    "efficacy", "forget_quality", "model_utility", "steps_to_target")
SCHEDULE_REQUIRED = _required(SCHEDULE_COLUMNS, "method", "schedule", "scorer", "efficacy",
                              "forget_quality", "model_utility", "steps_to_target")


def seed_folder(folder: str | Path, seed: int, seeds: Collection[int]) -> Path:
    """Where the run of `seed` of one method goes: `folder` itself when it is the method's only
    seed, else `folder/seed<seed>/`."""
    return Path(folder) if len(seeds) == 1 else Path(folder) / f"seed{seed}"


def anchors_file(run_dir: str | Path) -> Path:
    """`run_dir/anchors/anchors.json`, where a run folder keeps its anchor sets."""
    return Path(run_dir) / ANCHORS_DIR / ANCHORS_FILE


def store_folder(path: str | Path) -> Path:
    """The circuit store `path` names: `path` itself when it holds `header.json`, else the
    store of the run folder `path` (its `circuits/`, which need not exist)."""
    path = Path(path)
    return path if (path / HEADER_FILE).is_file() else path / CIRCUITS_DIR


def score_progress_file(out_dir: str | Path, rank: int) -> Path:
    """The scorer's progress log of process `rank`."""
    return Path(out_dir) / PROGRESS_DIR / f"scores-rank{rank}.jsonl"


def score_progress_files(out_dir: str | Path) -> list[Path]:
    """Every process's scorer progress log in `out_dir`, sorted by name."""
    return sorted((Path(out_dir) / PROGRESS_DIR).glob("scores-rank*.jsonl"))


def scorer_options_file(out_dir: str | Path) -> Path:
    """The scorer's log of the options behind each recorded value's digest."""
    return Path(out_dir) / PROGRESS_DIR / "scorer-options.jsonl"


def steps_progress_file(out_dir: str | Path, rank: int) -> Path:
    """Steps-to-forget's progress log of process `rank`."""
    return Path(out_dir) / f"progress-{rank}.jsonl"


def steps_progress_files(out_dir: str | Path) -> list[Path]:
    """Every process's steps-to-forget progress log in `out_dir`, sorted by name."""
    return sorted(Path(out_dir).glob("progress-*.jsonl"))


def require_columns(frame: pd.DataFrame, columns: Iterable[str], source: str) -> None:
    """A `DataError` naming `source` and the first of `columns` that `frame` lacks."""
    for column in columns:
        if column not in frame.columns:
            raise DataError("missing column", source=source, field=column)


def read_table(path: str | Path, columns: Sequence[str], *,
               allow_empty: bool = False) -> pd.DataFrame:
    """The table at `path` (parquet or CSV) with every one of `columns`; no rows is an error
    unless `allow_empty`."""
    path = Path(path)
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise DataError(f"unreadable table ({error})", source=str(path)) from None
    require_columns(frame, columns, str(path))
    if frame.empty and not allow_empty:
        raise DataError("no rows", source=str(path))
    return frame


def read_scores(path: str | Path) -> pd.DataFrame:
    """A score table (`SCORE_COLUMNS`), one row per (sample, scorer), `sample_id` as text;
    a repeated (sample, scorer) or a non-finite difficulty is a `DataError`."""
    table = pd.read_parquet(path)
    require_columns(table, SCORE_COLUMNS, str(path))
    table = table.assign(sample_id=table["sample_id"].astype(str))
    duplicated = table.duplicated(["sample_id", "scorer"])
    if duplicated.any():
        row = table[duplicated].iloc[0]
        raise DataError(f"duplicate row for sample '{row.sample_id}' and scorer '{row.scorer}'",
                        source=str(path), field="sample_id")
    check_finite(torch.tensor(table["difficulty"].to_numpy(np.float64)),
                 f"{path} column difficulty")
    return table


def read_outcomes(path: str | Path) -> pd.DataFrame:
    """The outcome table of one unlearning run (needs `OUTCOME_REQUIRED`), `sample_id` as
    text; a repeated sample or a non-finite efficacy is a `DataError`."""
    table = pd.read_parquet(path)
    require_columns(table, OUTCOME_REQUIRED, str(path))
    table = table.assign(sample_id=table["sample_id"].astype(str))
    if table["sample_id"].duplicated().any():
        raise DataError("duplicate sample id", source=str(path), field="sample_id")
    check_finite(torch.tensor(table["efficacy"].to_numpy(np.float64)), f"{path} column efficacy")
    return table


def read_outcome_files(paths: Sequence[str | Path], names: Sequence[str] | None = None
                       ) -> dict[str, pd.DataFrame]:
    """`read_outcomes` of each of `paths` (an outcomes file, or a run folder holding one), by
    method name: `names`, else each run's `summary.json` `method`, else the run folder's
    name. Names must be unique (give `names` for several runs of a method)."""
    if names is not None and len(names) != len(paths):
        raise DataError(f"{len(names)} method names for {len(paths)} outcome files",
                        field="method_names")
    tables: dict[str, pd.DataFrame] = {}
    for index, path in enumerate(paths):
        path = Path(path)
        if path.is_dir():
            path = path / OUTCOMES_FILE
        if not path.is_file():
            raise DataError("outcomes file not found", source=str(path))
        if names is not None:
            name = names[index]
        elif (path.parent / SUMMARY_FILE).is_file():
            name = read_json(path.parent / SUMMARY_FILE).get("method", path.parent.name)
        else:
            name = path.parent.name
        if name in tables:
            raise DataError(f"method name '{name}' given to two outcome files; name them with "
                            "method names", source=str(path), field="method_names")
        tables[name] = read_outcomes(path)
    return tables


def run_seed(folder: str | Path) -> int:
    """The seed an unlearning run folder was run with: `settings.seed` of its `summary.json`,
    else of its `config.json` (`options.settings.seed`), else 0."""
    folder = Path(folder)
    for name, keys in ((SUMMARY_FILE, ("settings", "seed")),
                       (CONFIG_FILE, ("options", "settings", "seed"))):
        if (folder / name).is_file():
            value = read_json(folder / name)
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                return int(value)
    return 0


def seed_folders(folder: str | Path) -> dict[int, Path]:
    """`{seed: folder}` of a method's unlearning folder: its `seed<s>/` subfolders holding
    outcomes (several seeds), else the folder itself when it holds `outcomes.parquet` (one
    seed, read by `run_seed`); `{}` when neither. Both at once is a `DataError`."""
    folder = Path(folder)
    seeds = {int(match.group(1)): child for child in sorted(folder.iterdir())
             if child.is_dir() and (match := SEED_DIR.match(child.name))
             and (child / OUTCOMES_FILE).is_file()} if folder.is_dir() else {}
    single = (folder / OUTCOMES_FILE).is_file()
    if seeds and single:
        raise DataError(f"holds both {OUTCOMES_FILE} and seed<s>/{OUTCOMES_FILE}: move one "
                        "layout away", source=str(folder))
    return {run_seed(folder): folder} if single else seeds


def read_seed_outcomes(folder: str | Path) -> dict[int, pd.DataFrame]:
    """`{seed: outcome table}` of one method's unlearning folder (either layout)."""
    found = seed_folders(folder)
    if not found:
        raise DataError(f"no {OUTCOMES_FILE} and no seed<s>/{OUTCOMES_FILE}", source=str(folder))
    return {seed: read_outcomes(path / OUTCOMES_FILE) for seed, path in sorted(found.items())}


def read_method_outcomes(run_dir: str | Path) -> dict[str, dict[int, pd.DataFrame]]:
    """`{method: {seed: outcome table}}` of a run folder's `unlearn/<method>/` folders (each in
    either layout; folders without outcomes are skipped)."""
    unlearn = Path(run_dir) / UNLEARN_DIR
    methods = {folder.name: read_seed_outcomes(folder)
               for folder in (sorted(p for p in unlearn.iterdir() if p.is_dir())
                              if unlearn.is_dir() else [])
               if seed_folders(folder)}
    if not methods:
        raise DataError(f"no {UNLEARN_DIR}/<method>/{OUTCOMES_FILE} or {UNLEARN_DIR}/<method>/"
                        f"seed<s>/{OUTCOMES_FILE}", source=str(run_dir))
    return methods


def read_steps_to_forget(path: str | Path) -> tuple[str, pd.DataFrame]:
    """(method, table) of a `steps_to_forget.parquet` (or the folder holding it; needs
    `STEPS_REQUIRED`): the method is `settings.method` of the folder's `config.json`, else the
    folder's name."""
    path = Path(path)
    if path.is_dir():
        path = path / STEPS_FILE
    if not path.is_file():
        raise DataError("steps-to-forget table not found", source=str(path))
    table = pd.read_parquet(path)
    require_columns(table, STEPS_REQUIRED, str(path))
    table = table.assign(sample_id=table["sample_id"].astype(str))
    if table["sample_id"].duplicated().any():
        raise DataError("duplicate sample id", source=str(path), field="sample_id")
    config = path.parent / CONFIG_FILE
    settings = (read_json(config).get("options") or {}).get("settings") if config.is_file() \
        else None
    method = (settings or {}).get("method") or path.parent.name
    return str(method), table


def read_run_steps_to_forget(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """`{method: table}` of a run folder's `steps_to_forget/<name>/` folders (`{}` if none)."""
    found: dict[str, pd.DataFrame] = {}
    for path in sorted(Path(run_dir).glob(f"{STEPS_DIR}/*/{STEPS_FILE}")):
        method, table = read_steps_to_forget(path)
        if method in found:
            raise DataError(f"a second steps-to-forget table for method '{method}'",
                            source=str(path))
        found[method] = table
    return found

"""The run folder's layout: what the writers write is what the layout's readers (and the
report) read, under the names existing runs have on disk."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tiny_models import toy_llama, toy_tokenizer
from unlearning_support import toy_samples
from unlearnscope import layout
from unlearnscope.anchors import AnchorSets, write_anchors
from unlearnscope.circuits.store import write_header
from unlearnscope.errors import DataError
from unlearnscope.evaluation.validation import cud_stability, write_validation
from unlearnscope.layout import (
    CORRELATION_COLUMNS,
    OUTCOME_COLUMNS,
    RELIABILITY_COLUMNS,
    SAMPLE_COLUMNS,
    SCORE_COLUMNS,
    STABILITY_COLUMNS,
    STEPS_COLUMNS,
)
from unlearnscope.report.rundata import VALIDATION_TABLES, RunData, load_run, write_samples
from unlearnscope.runs import write_parquet
from unlearnscope.scoring import get_scorer, score_samples
from unlearnscope.unlearning.outcomes import outcome_table
from unlearnscope.unlearning.steps_to_forget import StepsToForgetConfig, steps_to_forget
from unlearnscope.unlearning.trainer import run_unlearning

FORGET, RETAIN = toy_samples("f")[:4], toy_samples("r")[4:]
FAST = {"epochs": 1, "lr": 5e-3, "batch_size": 2, "grad_accum": 1, "warmup_epochs": 0.0}


def test_on_disk_names_are_those_of_existing_runs(tmp_path):
    names = {
        "config": layout.CONFIG_FILE, "summary": layout.SUMMARY_FILE,
        "scores": layout.SCORES_FILE, "outcomes": layout.OUTCOMES_FILE,
        "steps": layout.STEPS_FILE, "anchors": f"{layout.ANCHORS_DIR}/{layout.ANCHORS_FILE}",
        "store": f"{layout.CIRCUITS_DIR}/{layout.HEADER_FILE}",
        "checkpoint": f"{layout.CHECKPOINT_DIR}/{layout.CHECKPOINT_STATE}",
        "model": layout.MODEL_DIR, "unlearn": layout.UNLEARN_DIR,
        "validation": layout.VALIDATION_DIR, "paper": str(layout.PAPER_CIRCUITS_DIR)}
    assert names == {
        "config": "config.json", "summary": "summary.json", "scores": "scores.parquet",
        "outcomes": "outcomes.parquet", "steps": "steps_to_forget.parquet",
        "anchors": "anchors/anchors.json", "store": "circuits/header.json",
        "checkpoint": "checkpoint/progress.json", "model": "model", "unlearn": "unlearn",
        "validation": "validation", "paper": "paper/circuits"}
    # the three progress-file styles, each found again by its own lister
    assert layout.score_progress_file(tmp_path, 3) == tmp_path / "progress/scores-rank3.jsonl"
    assert layout.scorer_options_file(tmp_path) == tmp_path / "progress/scorer-options.jsonl"
    assert layout.steps_progress_file(tmp_path, 3) == tmp_path / "progress-3.jsonl"
    for rank in (1, 0):
        for path in (layout.score_progress_file(tmp_path, rank),
                     layout.steps_progress_file(tmp_path, rank)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
    layout.scorer_options_file(tmp_path).write_text("")  # not a rank's scores
    assert layout.score_progress_files(tmp_path) == [
        layout.score_progress_file(tmp_path, 0), layout.score_progress_file(tmp_path, 1)]
    assert layout.steps_progress_files(tmp_path) == [
        layout.steps_progress_file(tmp_path, 0), layout.steps_progress_file(tmp_path, 1)]


def test_every_validation_table_the_report_reads_has_a_field():
    assert set(VALIDATION_TABLES) <= {f.name for f in fields(RunData)}


def test_required_columns_are_columns_the_writer_writes():
    for columns, required in ((OUTCOME_COLUMNS, layout.OUTCOME_REQUIRED),
                              (STEPS_COLUMNS, layout.STEPS_REQUIRED),
                              (CORRELATION_COLUMNS, layout.CORRELATION_REQUIRED),
                              (RELIABILITY_COLUMNS, layout.RELIABILITY_REQUIRED),
                              (layout.SET_COLUMNS, layout.SET_REQUIRED),
                              (layout.SCHEDULE_COLUMNS, layout.SCHEDULE_REQUIRED)):
        assert required and set(required) < set(columns)
    assert layout.OUTCOME_REQUIRED == ("sample_id", "efficacy")
    with pytest.raises(ValueError, match="efficacy not among"):
        layout._required(("sample_id",), "efficacy")


def test_outcome_and_stability_writers_produce_the_layout_columns():
    table = outcome_table(["a", "b"], np.array([1.0, 2.0]), np.array([1.5, 2.0]))
    assert tuple(table.columns) == OUTCOME_COLUMNS
    with_rouge = outcome_table(["a"], np.array([1.0]), np.array([1.5]), np.array([0.5]),
                               np.array([0.25]))
    assert tuple(with_rouge.columns) == OUTCOME_COLUMNS + layout.ROUGE_COLUMNS
    ids = [f"s{i}" for i in range(6)]
    scores = pd.DataFrame([(i, name, v, v) for name in ("cud:npo", "cud:rmu")
                           for i, v in zip(ids, np.arange(6.0) * (1 if name == "cud:npo" else -1),
                                           strict=True)], columns=SCORE_COLUMNS)
    assert tuple(cud_stability(scores).columns) == STABILITY_COLUMNS


def test_paths_of_seed_folders_stores_and_anchors(tmp_path):
    assert layout.seed_folder(tmp_path, 3, [3]) == tmp_path
    assert layout.seed_folder(tmp_path, 3, [1, 3]) == tmp_path / "seed3"
    assert layout.anchors_file(tmp_path) == tmp_path / "anchors" / "anchors.json"
    assert layout.store_folder(tmp_path) == tmp_path / "circuits"  # need not exist yet
    write_header(tmp_path / "circuits", {"n_layers": 2, "n_heads": 4})
    assert layout.store_folder(tmp_path) == tmp_path / "circuits"
    assert layout.store_folder(tmp_path / "circuits") == tmp_path / "circuits"


def _outcomes(tmp_path: Path, name: str, frame: pd.DataFrame) -> Path:
    path = tmp_path / name / "outcomes.parquet"
    write_parquet(path, frame)
    return path


def test_outcome_files_by_method_each_read_by_the_one_reader(tmp_path):
    good = pd.DataFrame({"sample_id": [1, 2], "efficacy": [0.5, 0.25]})
    first = _outcomes(tmp_path, "a", good)
    (first.parent / "summary.json").write_text('{"method": "npo"}')
    second = _outcomes(tmp_path, "b", good)
    tables = layout.read_outcome_files([first.parent, second])
    assert list(tables) == ["npo", "b"]
    assert tables["b"]["sample_id"].tolist() == ["1", "2"]  # as read_outcomes gives them
    assert list(layout.read_outcome_files([first, second], ["x", "y"])) == ["x", "y"]
    with pytest.raises(DataError, match="given to two outcome files"):
        layout.read_outcome_files([second, second])
    with pytest.raises(DataError, match="1 method names for 2"):
        layout.read_outcome_files([first, second], ["x"])
    missing = _outcomes(tmp_path, "c", good.drop(columns="efficacy"))
    with pytest.raises(DataError, match="missing column") as error:
        layout.read_outcome_files([missing])
    assert error.value.source == str(missing) and error.value.field == "efficacy"
    repeated = _outcomes(tmp_path, "d", pd.concat([good, good]))
    with pytest.raises(DataError, match="duplicate sample id"):
        layout.read_outcome_files([repeated])


def test_a_run_folder_written_by_the_writers_reads_back_through_the_layout(tmp_path):
    tokenizer = toy_tokenizer()
    run = tmp_path / "run"
    scores = score_samples(toy_llama(tokenizer), tokenizer, FORGET,
                           [get_scorer("loss"), get_scorer("prob")], run, batch_size=4)
    assert tuple(scores.columns) == SCORE_COLUMNS
    assert layout.score_progress_files(run) == [layout.score_progress_file(run, 0)]
    write_samples(run, FORGET)
    seeds = [0, 1]
    for seed in seeds:
        run_unlearning(toy_llama(tokenizer), tokenizer, FORGET, RETAIN, "grad_ascent",
                       out_dir=layout.seed_folder(run / "unlearn" / "ga", seed, seeds),
                       save=False, seed=seed, **FAST)
    run_unlearning(toy_llama(tokenizer), tokenizer, FORGET, RETAIN, "npo",
                   out_dir=layout.seed_folder(run / "unlearn" / "npo", 0, [0]), save=False,
                   **FAST)
    steps_dir = run / "steps_to_forget" / "ga"
    steps_to_forget(toy_llama(tokenizer), tokenizer, FORGET, out_dir=steps_dir,
                    config=StepsToForgetConfig(method="grad_ascent", lr=2e-3, max_steps=3,
                                               copies=2))
    assert layout.steps_progress_files(steps_dir) == [layout.steps_progress_file(steps_dir, 0)]
    write_anchors(layout.anchors_file(run).parent,
                  AnchorSets("vote", 1, ["f0"], ["f3"], ["f0", "f3"], ["f1", "f2"]))
    write_header(run / "circuits", {"n_layers": 2, "n_heads": 4})

    outcomes = layout.read_method_outcomes(run)
    assert {m: sorted(s) for m, s in outcomes.items()} == {"ga": [0, 1], "npo": [0]}
    for tables in outcomes.values():
        assert all(tuple(t.columns) == OUTCOME_COLUMNS for t in tables.values())
    assert list(layout.read_outcome_files([run / "unlearn" / "npo"])) == ["npo"]
    steps = layout.read_run_steps_to_forget(run)
    assert list(steps) == ["grad_ascent"] and tuple(steps["grad_ascent"].columns) == STEPS_COLUMNS
    write_validation(run, layout.read_scores(run / layout.SCORES_FILE), outcomes,
                     steps_to_forget=steps, n_boot=20)
    validation = run / layout.VALIDATION_DIR
    assert tuple(pd.read_csv(validation / layout.CORRELATIONS_FILE).columns) == \
        CORRELATION_COLUMNS
    assert tuple(pd.read_csv(validation / layout.RELIABILITY_FILE).columns) == \
        RELIABILITY_COLUMNS

    data = load_run(run)
    assert data.problems == {}
    assert tuple(data.scores.columns) == SCORE_COLUMNS
    assert tuple(data.samples.columns) == SAMPLE_COLUMNS
    assert data.anchors.hard == ["f3"]
    assert data.circuits_dir == run / "circuits"
    assert sorted(data.methods) == ["ga", "npo"] and sorted(data.methods["ga"].seeds) == seeds
    assert data.methods["npo"].summary["method"] == "npo"
    for table in (data.correlations, data.reliability, data.scorer_correlations):
        assert table is not None and len(table)

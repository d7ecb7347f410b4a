"""The circuit-guided comparison: arms, hard held-out samples, the paired test, the table."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from test_circuit_mask import _run_folder
from tiny_models import toy_llama, toy_tokenizer
from unlearning_support import toy_samples
from unlearnscope.evaluation.circuit_guided import (
    CIRCUIT_GUIDED_COLUMNS,
    hardest_held_out,
    paired_sign_flip_p,
    write_circuit_guided,
)
from unlearnscope.evaluation.experiments import CachedUnlearning
from unlearnscope.runs import write_json, write_parquet
from unlearnscope.unlearning.trainer import run_unlearning

FORGET, RETAIN = toy_samples("f")[:6], toy_samples("r")[6:]
SETTINGS = {"lr": 1e-2, "batch_size": 2, "grad_accum": 1, "warmup_epochs": 0.0}


def test_paired_sign_flip_by_hand():
    # sign patterns of (1, 2, 3): |sum| in {6, 4, 2, 0, 0, 2, 4, 6}; two reach 6
    assert paired_sign_flip_p(np.array([1.0, 2.0, 3.0])) == pytest.approx(2 / 8)
    assert paired_sign_flip_p(np.zeros(4)) == 1.0
    assert 0 < paired_sign_flip_p(np.full(20, 1.0), permutations=500) <= 2 / 501


def test_hardest_held_out_ignores_fit_samples():
    ids = ["a", "b", "c", "d"]
    outcomes = {"npo": {0: pd.DataFrame({"sample_id": ids, "efficacy": [0.0, 0.9, 0.1, 0.5]})},
                "grad_diff": {0: pd.DataFrame({"sample_id": ids,
                                               "efficacy": [0.0, 0.8, 0.2, 0.4]})}}
    assert hardest_held_out(outcomes, ["b", "c", "d"], 2) == ["c", "d"]


def test_write_circuit_guided_runs_every_arm_at_one_budget(tmp_path):
    tokenizer = toy_tokenizer()
    target = toy_llama(tokenizer)
    ids = [s.id for s in FORGET]
    run = _run_folder(tmp_path / "run", target, ids, hard=ids[:2])
    write_json(run / "anchors" / "anchors.json", {
        "method": "vote", "k": 1, "easy": ["f2"], "hard": ["f0", "f1"], "fit_ids": ids[:3],
        "held_out_ids": ids[3:]})
    write_parquet(run / "unlearn" / "npo" / "outcomes.parquet", pd.DataFrame(
        {"sample_id": ids, "efficacy": [0.0, 0.0, 0.0, 0.9, 0.1, 0.5]}))
    unlearner = CachedUnlearning(target, tokenizer, RETAIN, SETTINGS)
    table = write_circuit_guided(run, unlearner, FORGET, methods=["grad_diff"], budget_steps=3,
                                 top_n=0.2, n_hard=2, seed=1)
    assert list(table.columns) == CIRCUIT_GUIDED_COLUMNS
    assert list(table.arm) == ["global", "hard-anchors", "batch", "random"]
    assert set(table.steps) == {3} and table.forget_slots.nunique() == 1
    arms = table.set_index("arm")
    assert arms.loc["global", "update_fraction"] == 1.0
    assert arms.loc["random", "update_params"] == arms.loc["hard-anchors", "update_params"]
    assert 0 < arms.loc["hard-anchors", "update_fraction"] < 1
    assert np.isnan(arms.loc["random", "p_hard_vs_random"])
    assert 0 < arms.loc["global", "p_hard_vs_random"] <= 1
    # the hard-anchors arm, rerun by hand: efficacy on the two hardest held-out (f4, f5)
    direct = run_unlearning(copy.deepcopy(target), tokenizer, FORGET, RETAIN, "grad_diff",
                            max_steps=3, circuit_mask="hard-anchors", circuits=str(run),
                            mask_top_n=0.2, mask_seed=1, **SETTINGS)
    efficacy = direct.outcomes.set_index("sample_id").efficacy
    assert arms.loc["hard-anchors", "efficacy_hard"] == pytest.approx(
        100 * efficacy.loc[["f4", "f5"]].mean())
    assert arms.loc["hard-anchors", "efficacy_all"] == pytest.approx(100 * efficacy.mean())
    saved = pd.read_csv(run / "validation" / "circuit_guided.csv")
    assert len(saved) == 4
    assert "f4, f5" in (run / "validation" / "circuit_guided.md").read_text()

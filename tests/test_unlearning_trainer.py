"""The unlearning loop: run folder, outcomes, schedules, checkpoint and resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from tiny_models import toy_llama, toy_tokenizer
from unlearning_support import toy_samples
from unlearnscope.data.sample import Sample
from unlearnscope.data.tokenize import encode_sample, encode_samples, pad_id
from unlearnscope.errors import DataError
from unlearnscope.models.generation import greedy_answers, rouge_l_recall
from unlearnscope.models.logprobs import answer_nll
from unlearnscope.unlearning import trainer
from unlearnscope.unlearning.outcomes import outcome_table
from unlearnscope.unlearning.samplers import build_stream
from unlearnscope.unlearning.trainer import UnlearnConfig, plan_steps, run_unlearning

FORGET, RETAIN = toy_samples("f")[:4], toy_samples("r")[4:]
FAST = {"epochs": 2, "lr": 5e-3, "batch_size": 2, "grad_accum": 1, "warmup_epochs": 0.0}


@pytest.fixture(scope="module")
def tokenizer():
    return toy_tokenizer()


def test_plan_counts_steps_per_epoch_over_the_global_batch():
    plan = plan_steps(UnlearnConfig(epochs=3, batch_size=4, grad_accum=2, warmup_epochs=1.0),
                      n_forget=20, processes=2)
    assert (plan.global_batch, plan.steps_per_epoch, plan.total_steps, plan.warmup_steps) == (
        16, 2, 6, 2)
    assert plan_steps(UnlearnConfig(max_steps=5), 20, 1).total_steps == 5


def test_outcome_table_by_hand():
    table = outcome_table(["a", "b", "c"], np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 0.1]),
                          np.array([1.0, 0.5, 0.2]), np.array([0.25, 0.5, 0.4]))
    assert table["prob_before"].tolist() == pytest.approx([math.exp(-1), math.exp(-2),
                                                           math.exp(-0.5)])
    # efficacy = 1 - p_after/p_before = 1 - exp(-3)/exp(-1); unchanged -> 0; improved -> 0.
    assert table["efficacy"].tolist() == pytest.approx([1 - math.exp(-2), 0.0, 0.0])
    assert table["delta_loss"].tolist() == pytest.approx([2.0, 0.0, -0.4])
    assert table["rouge_drop"].tolist() == pytest.approx([0.75, 0.0, -0.2])


def test_rouge_l_recall_by_hand():
    # LCS of "the cat sat on mats" and "the dog sat" is "the sat": recall 2/5.
    assert rouge_l_recall(["the cat sat on mats"], ["the dog sat"]).tolist() == pytest.approx(
        [0.4])
    assert rouge_l_recall(["same words here"], ["same words here"]).tolist() == [1.0]


def test_batched_greedy_answers_equal_one_at_a_time(tokenizer):
    model = toy_llama(tokenizer, seed=2)
    samples = toy_samples()[:3]
    batched = greedy_answers(model, tokenizer, samples, batch_size=3, max_new_tokens=6)
    alone = [greedy_answers(model, tokenizer, [s], max_new_tokens=6)[0] for s in samples]
    assert batched == alone and any(batched)


def test_run_writes_outcomes_summary_trajectory_and_model(tokenizer, tmp_path):
    model = toy_llama(tokenizer)
    encoded = encode_samples(tokenizer, FORGET).samples
    before = answer_nll(model, encoded, pad_id(tokenizer)).numpy()
    result = run_unlearning(model, tokenizer, FORGET, RETAIN, "grad_ascent", track_every=1,
                            rouge=True, max_new_tokens=4, out_dir=tmp_path, **FAST)
    after = answer_nll(result.model, encoded, pad_id(tokenizer)).numpy()
    outcomes = pd.read_parquet(tmp_path / "outcomes.parquet")
    assert list(outcomes.columns) == ["sample_id", "loss_before", "loss_after", "prob_before",
                                      "prob_after", "efficacy", "delta_loss", "rouge_before",
                                      "rouge_after", "rouge_drop"]
    assert outcomes["sample_id"].tolist() == ["f0", "f1", "f2", "f3"]
    np.testing.assert_allclose(outcomes["loss_before"], before, rtol=1e-6)
    np.testing.assert_allclose(outcomes["loss_after"], after, rtol=1e-6)
    assert (outcomes["delta_loss"] > 0).all() and (outcomes["efficacy"] > 0).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["forget"]["loss_after"] == pytest.approx(after.mean(), rel=1e-6)
    assert summary["forget"]["prob_before"] == pytest.approx(np.exp(-before).mean(), rel=1e-6)
    assert summary["retain"]["loss_before"] > 0 and summary["steps"] == 4
    trajectory = pd.read_parquet(tmp_path / "trajectory.parquet")
    assert sorted(trajectory["step"].unique()) == [0, 1, 2, 3, 4]
    last = trajectory[trajectory["step"] == 4].set_index("sample_id")["loss"]
    np.testing.assert_allclose(last.loc[["f0", "f1", "f2", "f3"]], after, rtol=1e-6)
    training = pd.read_parquet(tmp_path / "training.parquet")
    assert training["step"].tolist() == [1, 2, 3, 4] and training["lr"].iloc[0] == 5e-3
    assert (tmp_path / "model" / "config.json").is_file()
    assert not (tmp_path / "checkpoint").exists()


def test_config_json_counts_the_samples_cut_to_max_length(tokenizer, tmp_path):
    lengths = [len(encode_sample(tokenizer, s).input_ids) for s in FORGET + RETAIN]
    prompts = [len(encode_sample(tokenizer, s).prompt_ids) for s in FORGET + RETAIN]
    limit = sorted(lengths)[len(lengths) // 2]
    assert max(prompts) < limit
    run_unlearning(toy_llama(tokenizer), tokenizer, FORGET, RETAIN, "grad_ascent",
                   out_dir=tmp_path, save=False, max_length=limit, **{**FAST, "epochs": 1})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["n_truncated"] == sum(n > limit for n in lengths) > 0
    assert config["options"]["settings"]["max_length"] == limit


def test_methods_with_a_retain_term_need_retain_samples(tokenizer):
    with pytest.raises(DataError, match="give retain samples"):
        run_unlearning(toy_llama(tokenizer), tokenizer, FORGET, None, "npo", **FAST)


def test_resume_after_a_kill_reaches_the_same_final_model(tokenizer, tmp_path, monkeypatch):
    settings = {**FAST, "epochs": 3, "checkpoint_every": 2, "track_every": 1, "save": False}
    straight = run_unlearning(toy_llama(tokenizer), tokenizer, FORGET, RETAIN, "npo",
                              out_dir=tmp_path / "straight", **settings)

    real_step = trainer._UnlearnRun.train_step

    def killed_at_step_four(*args, **kwargs):
        if args[1] == 3:  # (run, step, forget, retain)
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer._UnlearnRun, "train_step", killed_at_step_four)
    with pytest.raises(KeyboardInterrupt):
        run_unlearning(toy_llama(tokenizer), tokenizer, FORGET, RETAIN, "npo",
                       out_dir=tmp_path / "resumed", **settings)
    assert (tmp_path / "resumed" / "checkpoint" / "latest" / "progress.json").is_file()
    monkeypatch.setattr(trainer._UnlearnRun, "train_step", real_step)
    resumed = run_unlearning(toy_llama(tokenizer), tokenizer, FORGET, RETAIN, "npo",
                             out_dir=tmp_path / "resumed", resume=True, **settings)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(straight.outcomes, resumed.outcomes, rtol=1e-6)
    pd.testing.assert_frame_equal(straight.training, resumed.training, rtol=1e-6)
    pd.testing.assert_frame_equal(straight.trajectory, resumed.trajectory, rtol=1e-6)


@pytest.mark.parametrize("schedule", ["weighted", "easy-to-hard", "hard-to-easy"])
def test_difficulty_schedules_train_from_a_score_table(tokenizer, tmp_path, schedule):
    scores = pd.DataFrame({"sample_id": [s.id for s in FORGET], "scorer": "mrd",
                           "value": [0.4, 0.1, 0.3, 0.2], "difficulty": [-0.4, -0.1, -0.3, -0.2]})
    result = run_unlearning(toy_llama(tokenizer), tokenizer, FORGET, RETAIN, "grad_diff",
                            schedule=schedule, difficulty=scores, out_dir=tmp_path, save=False,
                            **FAST)
    assert result.summary["settings"]["schedule"] == schedule
    assert len(result.training) == 4
    with pytest.raises(DataError, match="needs difficulty"):
        run_unlearning(toy_llama(tokenizer), tokenizer, FORGET, RETAIN, "grad_diff",
                       schedule=schedule, **FAST)


def _many_samples(n: int) -> list:
    facts = toy_samples("f")
    return [Sample(f"f{i}", facts[i % len(facts)].question, facts[i % len(facts)].answer)
            for i in range(n)]


@pytest.mark.parametrize("schedule", ["uniform", "weighted", "easy-to-hard", "hard-to-easy"])
def test_every_schedule_under_a_budget_has_the_same_slots_and_reaches_its_pool(
        tokenizer, monkeypatch, schedule):
    # The demo's schedule setting: 40 samples, 3 epochs, batch 8, a budget of 10 steps.
    forget = _many_samples(40)
    value = np.linspace(1.0, 0.025, 40)
    scores = pd.DataFrame({"sample_id": [s.id for s in forget], "scorer": "mrd",
                           "value": value, "difficulty": -value})
    built = []

    def spy(*args, **kwargs):
        built.append(kwargs)
        return build_stream(*args, **kwargs)

    monkeypatch.setattr(trainer, "build_stream", spy)
    result = run_unlearning(toy_llama(tokenizer), tokenizer, forget, None, "grad_ascent",
                            schedule=schedule, difficulty=scores, epochs=3, batch_size=8,
                            grad_accum=1, max_steps=10, lr=1e-3, warmup_epochs=0.0)
    summary = result.summary
    assert summary["steps"] == 10 and summary["forget_slots"] == 80
    assert built[0]["total_slots"] == 80  # annealing and pacing use the real slot count
    # the summary counts the distinct samples among the stream's 80 draws
    distinct = len(set(build_stream(schedule, 40, **built[0]).draw(80)))
    assert summary["distinct_forget_samples_drawn"] == distinct
    if schedule != "weighted":  # weighted draws with replacement: its pool is all 40 anyway
        assert summary["distinct_forget_samples_drawn"] == 40


def test_slots_follow_steps_when_n_is_not_a_multiple_of_the_global_batch(tokenizer):
    forget = _many_samples(10)
    difficulty = np.arange(10, dtype=float)
    scores = pd.DataFrame({"sample_id": [s.id for s in forget], "scorer": "loss",
                           "value": difficulty, "difficulty": difficulty})
    result = run_unlearning(toy_llama(tokenizer), tokenizer, forget, None, "grad_ascent",
                            schedule="easy-to-hard", difficulty=scores, epochs=3, batch_size=4,
                            grad_accum=1, lr=1e-3, warmup_epochs=0.0)
    assert result.summary["steps"] == 9 and result.summary["forget_slots"] == 36
    assert result.summary["distinct_forget_samples_drawn"] == 10


def test_distinct_forget_samples_count_the_run_before_a_resume(tokenizer, tmp_path,
                                                                monkeypatch):
    # 8 samples, batch 2, 6 steps: the first 4 steps draw all 8, the last 2 only 4 of them.
    forget = toy_samples("f")
    settings = {**FAST, "max_steps": 6, "checkpoint_every": 4, "save": False}
    straight = run_unlearning(toy_llama(tokenizer), tokenizer, forget, None, "grad_ascent",
                              out_dir=tmp_path / "straight", **settings)
    assert straight.summary["distinct_forget_samples_drawn"] == 8
    real_step = trainer._UnlearnRun.train_step
    after_resume: list[int] = []

    def killed_at_step_five(*args, **kwargs):
        if args[1] == 4:  # (run, step, forget, retain)
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer._UnlearnRun, "train_step", killed_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        run_unlearning(toy_llama(tokenizer), tokenizer, forget, None, "grad_ascent",
                       out_dir=tmp_path / "resumed", **settings)
    progress_file = tmp_path / "resumed" / "checkpoint" / "latest" / "progress.json"
    progress = json.loads(progress_file.read_text())
    assert progress["forget_drawn"] == list(range(8))
    # A checkpoint without the record cannot give the count: refused, naming the field.
    progress_file.write_text(json.dumps({k: v for k, v in progress.items()
                                         if k != "forget_drawn"}))
    monkeypatch.setattr(trainer._UnlearnRun, "train_step", real_step)
    with pytest.raises(DataError, match="forget_drawn"):
        run_unlearning(toy_llama(tokenizer), tokenizer, forget, None, "grad_ascent",
                       out_dir=tmp_path / "resumed", resume=True, **settings)
    progress_file.write_text(json.dumps(progress))

    def recorded(*args, **kwargs):
        after_resume.extend(args[2])  # the step's forget indices
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer._UnlearnRun, "train_step", recorded)
    resumed = run_unlearning(toy_llama(tokenizer), tokenizer, forget, None, "grad_ascent",
                             out_dir=tmp_path / "resumed", resume=True, **settings)
    assert len(after_resume) == 4 and len(set(after_resume)) < 8
    assert resumed.summary["distinct_forget_samples_drawn"] == 8
    assert resumed.summary["forget_slots"] == straight.summary["forget_slots"] == 12

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tiny_models import toy_llama, toy_tokenizer
from unlearning_support import toy_samples
from unlearnscope.data import Sample
from unlearnscope.errors import DataError
from unlearnscope.evaluation.experiments import (
    DEFAULT_SCHEDULES,
    CachedUnlearning,
    ScheduleMetrics,
    easy_hard_sets,
    permutation_p_value,
    schedule_comparison,
    select_sets,
    set_rank_p_value,
    steps_to_target,
    to_markdown,
    write_table,
)
from unlearnscope.evaluation.tofu import evaluate_tofu
from unlearnscope.layout import SCHEDULE_COLUMNS, SET_COLUMNS
from unlearnscope.unlearning.samplers import build_stream

IDS = [f"s{i}" for i in range(8)]
FORGET = [Sample(i, "Q?", "A.") for i in IDS]


def _scores():
    # scorer "good": difficulty = index; scorer "flat": all tied (ties broken by id)
    rows = [(i, "good", float(n), float(n)) for n, i in enumerate(IDS)]
    rows += [(i, "flat", 0.0, 0.0) for i in IDS]
    return pd.DataFrame(rows, columns=["sample_id", "scorer", "value", "difficulty"])


class FakeCachedUnlearning:
    """Efficacy of a sample = 1 - index/10 (sample s0 easiest); method 'b' halves it. A run
    draws 3 slots per sample and reaches all but the last sample of its set."""

    def __init__(self):
        self.calls = []

    def run(self, samples, method, **kwargs):
        self.calls.append((method, tuple(s.id for s in samples), kwargs))
        eff = [(1 - int(s.id[1:]) / 10) * (0.5 if method == "b" else 1.0) for s in samples]
        trajectory = pd.DataFrame(
            [(step, s.id, 1.0 - step * 0.1) for step in range(4) for s in samples],
            columns=["step", "sample_id", "prob"])
        # outcome rows in reverse order: the experiments must align them by sample id
        outcomes = pd.DataFrame({"sample_id": [s.id for s in samples], "efficacy": eff})[::-1]
        summary = {"forget_slots": 3 * len(samples),
                   "distinct_forget_samples_drawn": len(samples) - 1}
        return SimpleNamespace(outcomes=outcomes, model=method, trajectory=trajectory,
                               summary=summary)


def test_select_sets_orders_by_difficulty_and_breaks_ties_by_id():
    easy, hard = select_sets(_scores(), "good", 2, IDS)
    assert easy == ["s0", "s1"] and hard == ["s6", "s7"]
    easy, hard = select_sets(_scores(), "flat", 3, IDS)
    assert easy == ["s0", "s1", "s2"] and hard == ["s5", "s6", "s7"]
    easy, _ = select_sets(_scores(), "good", 2, ["s5", "s6", "s3", "s7"])
    assert easy == ["s3", "s5"]
    with pytest.raises(ValueError, match="fewer than"):
        select_sets(_scores(), "good", 3, IDS[:5])


def test_easy_hard_table_against_hand_values():
    fake = FakeCachedUnlearning()
    table = easy_hard_sets(fake, FORGET, _scores(), scorers=["good"], methods=["a", "b"], k=2,
                           random_seeds=(0, 1))
    assert tuple(table.columns) == SET_COLUMNS
    rows = table.set_index(["scorer", "method", "set"])
    # random baseline: mean efficacy of the two random 2-sets drawn from the 8 ids
    random_sets = []
    for seed in (0, 1):
        order = np.random.default_rng(seed).permutation(8)
        random_sets.append([IDS[i] for i in order[:2]])
    base_a = np.mean([np.mean([100 * (1 - int(i[1:]) / 10) for i in ids]) for ids in random_sets])
    assert rows.loc[("random", "a", "random"), "efficacy"] == pytest.approx(base_a)
    easy_a = 100 * np.mean([1.0, 0.9])
    hard_a = 100 * np.mean([0.4, 0.3])
    assert rows.loc[("good", "a", "easy"), "efficacy"] == pytest.approx(easy_a)
    assert rows.loc[("good", "a", "hard"), "delta_vs_random"] == pytest.approx(hard_a - base_a)
    assert rows.loc[("good", "b", "easy"), "efficacy"] == pytest.approx(easy_a / 2)
    mean_hard = np.mean([hard_a - base_a, (hard_a - base_a) / 2])
    assert rows.loc[("good", "mean", "hard"), "delta_vs_random"] == pytest.approx(mean_hard)
    assert rows.loc[("good", "mean", "easy"), "delta_vs_random"] > 0 > mean_hard
    assert (table.forget_slots == 6).all() and (table.distinct_samples_drawn == 1).all()


def test_easy_hard_uncertainty_against_hand_values():
    table = easy_hard_sets(FakeCachedUnlearning(), FORGET, _scores(), scorers=["good"],
                           methods=["a", "b"], k=2, random_seeds=(0, 1))
    rows = table.set_index(["scorer", "method", "set"])
    # Random sets (seeds 0, 1): {s2, s4} -> 80, 60 (mean 70); {s0, s5} -> 100, 50 (mean 75).
    a = rows.xs("a", level="method")
    for label in ("random", "easy", "hard"):
        row = a.loc[("random" if label == "random" else "good", label)]
        assert row.random_std == pytest.approx(5 / np.sqrt(2))
        assert (row.random_min, row.random_max, row.n_random) == (70.0, 75.0, 2)
    assert np.isnan(a.loc[("random", "random"), "p_value"])
    assert np.isnan(a.loc[("random", "random"), "p_value_sets"])
    # Easy {s0, s1} = 100, 90 against 80, 60, 100, 50: D = 95 - 72.5 = 22.5; of the 15 ways
    # to pick 2 of the 6 values, |D*| >= 22.5 for the sums 190, 200, 190, 130, 110.
    assert a.loc[("good", "easy"), "p_value"] == pytest.approx(5 / 15)
    # Hard {s6, s7} = 40, 30: D = -37.5; only the sums 70 and 180 are as extreme.
    assert a.loc[("good", "hard"), "p_value"] == pytest.approx(2 / 15)
    # Set level: (95, 70, 75) around 80 -> 15 is the largest of 15, 10, 5: p = 1/3;
    # (35, 70, 75) around 60 -> 25 is the largest of 25, 10, 15: p = 1/3.
    assert a.loc[("good", "easy"), "p_value_sets"] == pytest.approx(1 / 3)
    assert a.loc[("good", "hard"), "p_value_sets"] == pytest.approx(1 / 3)
    # Method b halves every efficacy: same p-values, half the spread. The mean rows use the
    # per-sample efficacy averaged over a and b, i.e. 0.75 x a's.
    b, mean = rows.xs("b", level="method"), rows.xs("mean", level="method")
    for other, scale in ((b, 0.5), (mean, 0.75)):
        for key in (("good", "easy"), ("good", "hard")):
            assert other.loc[key, "p_value"] == pytest.approx(a.loc[key, "p_value"])
            assert other.loc[key, "p_value_sets"] == pytest.approx(a.loc[key, "p_value_sets"])
        assert other.loc[("random", "random"), "random_std"] == pytest.approx(
            scale * 5 / np.sqrt(2))
        assert other.loc[("random", "random"), "random_min"] == pytest.approx(scale * 70)
        assert other.loc[("good", "easy"), "efficacy"] == pytest.approx(scale * 95)


def test_permutation_p_values_by_hand():
    # Pooled 3, 4, 1, 2, 1, 2: D = 3.5 - 1.5 = 2 and D* = (3s - 13) / 4 for a pair summing to s;
    # |D*| >= 2 needs s >= 7: only the observed pair (3, 4). Exact over all 15 pairs.
    assert permutation_p_value(np.array([3.0, 4.0]), np.array([1.0, 2.0, 1.0, 2.0])) == (
        pytest.approx(1 / 15))
    assert permutation_p_value(np.array([1.0, 2.0]), np.array([1.0, 2.0, 2.0, 1.0])) == 1.0
    assert set_rank_p_value(3.5, np.array([1.5, 1.5])) == pytest.approx(1 / 3)
    assert set_rank_p_value(3.5, np.array([1.5, 5.0])) == 1.0
    assert set_rank_p_value(9.0, np.arange(19.0)) == pytest.approx(1.0)
    assert set_rank_p_value(100.0, np.arange(19.0)) == pytest.approx(1 / 20)


def test_sampled_permutation_p_value_agrees_with_the_exact_one():
    rng = np.random.default_rng(0)
    chosen, reference = rng.normal(1.0, 1.0, 4), rng.normal(0.0, 1.0, 8)  # C(12, 4) = 495
    exact = permutation_p_value(chosen, reference)
    sampled = permutation_p_value(chosen, reference, permutations=400, seed=3)
    assert 0.01 < exact < 0.5
    assert sampled == pytest.approx(exact, abs=4 * np.sqrt(exact * (1 - exact) / 400))
    assert (sampled * 401) == pytest.approx(round(sampled * 401))  # (1 + count) / (1 + B)
    assert permutation_p_value(chosen, reference, permutations=400, seed=3) == sampled


def test_steps_to_target_from_a_trajectory():
    trajectory = pd.DataFrame(
        [(0, "a", 0.8), (0, "b", 0.4), (2, "a", 0.6), (2, "b", 0.3), (4, "a", 0.2),
         (4, "b", 0.5)], columns=["step", "sample_id", "prob"])
    # step 2: efficacy a 0.25, b 0.25 -> 0.25; step 4: a 0.75, b 0 (clipped) -> 0.375
    assert steps_to_target(trajectory, 0.25) == 2.0
    assert steps_to_target(trajectory, 0.3) == 4.0
    assert np.isnan(steps_to_target(trajectory, 0.5))


def test_schedule_table_skips_schedules_without_their_scorer():
    fake = FakeCachedUnlearning()
    table = schedule_comparison(fake, FORGET, _scores(), methods=["a"], budget_steps=3,
                                target_efficacy=0.15, evaluate=lambda model: (0.5, 0.7),
                                schedules=(("uniform", None), ("weighted", "mrd"),
                                           ("easy-to-hard", "good")))
    assert tuple(table.columns) == SCHEDULE_COLUMNS
    assert list(table.schedule) == ["uniform", "easy-to-hard"]
    assert table.steps_to_target.tolist() == [2.0, 2.0]
    assert table.forget_slots.tolist() == [24, 24]
    assert table.distinct_samples_drawn.tolist() == [7, 7]
    assert fake.calls[1][2]["scorer"] == "good" and fake.calls[1][2]["max_steps"] == 3
    assert fake.calls[1][2]["track_every"] == 1
    schedule_comparison(fake, FORGET, _scores(), methods=["a"], budget_steps=3,
                        target_efficacy=0.15, evaluate=lambda model: (0.5, 0.7),
                        schedules=(("uniform", None),), track_every=3)
    assert fake.calls[-1][2]["track_every"] == 3
    with pytest.raises(DataError, match="track_every"):
        schedule_comparison(fake, FORGET, _scores(), methods=["a"], budget_steps=3,
                            target_efficacy=0.15, evaluate=lambda model: (0.5, 0.7),
                            track_every=0)


def test_schedule_metrics_evaluate_against_the_retain_model_loaded_once():
    tokenizer = toy_tokenizer()
    facts = toy_samples("f")
    forget = [Sample(s.id, s.question, s.answer,
                     {"paraphrased_answer": s.answer + " Indeed.",
                      "perturbed_answer": ["No idea.", s.answer[::-1]]}) for s in facts[:4]]
    retain = facts[4:7]
    retain_model, other = toy_llama(tokenizer, seed=1), toy_llama(tokenizer, seed=2)
    loads = []

    def load_retain():
        loads.append(1)
        return retain_model, tokenizer

    metrics = ScheduleMetrics(tokenizer, forget, retain, load_retain, max_new_tokens=3)
    assert loads == []  # nothing loaded until a model is evaluated
    # the retain model against itself: identical truth ratios, KS p-value 1
    quality, utility = metrics(retain_model)
    assert quality == pytest.approx(1.0)
    expected = evaluate_tofu(other, tokenizer, forget=forget, retain=retain,
                             retain_truth_ratios=metrics.reference().truth_ratios,
                             max_new_tokens=3, gradnorm=False)["metrics"]
    assert metrics(other) == (expected["forget_quality"], expected["model_utility"])
    assert expected["forget_quality"] < 1.0 and utility is not None
    assert loads == [1]


def test_markdown_rendering():
    text = to_markdown(pd.DataFrame({"a": ["x"], "b": [0.12345]}))
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x | 0.123 |"]


def test_write_table_writes_the_csv_and_its_markdown(tmp_path):
    table = pd.DataFrame({"a": ["x", "y"], "b": [0.12345, 2.0]})
    write_table(table, tmp_path / "out" / "t.csv")
    assert (tmp_path / "out" / "t.csv").read_text() == "a,b\nx,0.12345\ny,2.0\n"
    assert (tmp_path / "out" / "t.md").read_text().splitlines() == [
        "| a | b |", "|---|---|", "| x | 0.123 |", "| y | 2 |"]
    write_table(table, tmp_path / "t.csv", markdown="header\n")
    assert (tmp_path / "t.md").read_text() == "header\n"
    assert pd.read_csv(tmp_path / "t.csv").equals(table)


def test_validate_sets_and_schedules_cli_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    from unlearnscope.cli import main

    data = "synthetic:authors/{}?n_authors=5&questions_per_author=4&forget_fraction=0.4"
    run = tmp_path / "run"
    assert main(["score", "--model", str(tiny_model_dir), "--data", data.format("forget"),
                 "--out", str(run), "--scorers", "loss,min_k"]) == 0
    common = ["--run", str(run), "--model", str(tiny_model_dir), "--forget",
              data.format("forget"), "--retain", data.format("retain"), "--unlearn-methods",
              "grad_diff", "--epochs", "1", "--warmup-epochs", "0", "--lr", "1e-3"]
    assert main(["validate", "sets", *common, "--scorers", "loss,min_k", "--k", "2",
                 "--seeds", "2"]) == 0
    table = pd.read_csv(run / "validation" / "sets.csv")
    assert tuple(table.columns) == SET_COLUMNS
    assert set(table.set) == {"random", "easy", "hard"} and set(table.k) == {2}
    assert main(["validate", "schedules", *common, "--retain-model", str(tiny_model_dir),
                 "--budget", "2"]) == 0
    schedules = pd.read_csv(run / "validation" / "schedules.csv")
    assert tuple(schedules.columns) == SCHEDULE_COLUMNS
    assert list(schedules.schedule) == ["uniform"]  # no mrd or cud scores in this run
    assert "-> " in capsys.readouterr().out


def test_every_arm_draws_equal_slots_and_reaches_every_sample():
    # The experiment-arms check (DESIGN 5.9): real unlearning runs of a tiny model.
    tokenizer = toy_tokenizer()
    facts = toy_samples("f")
    forget = [Sample(f"f{i}", facts[i % 8].question, facts[i % 8].answer) for i in range(10)]
    ids = [s.id for s in forget]
    value = np.linspace(1.0, 0.1, 10)
    cud = np.random.default_rng(0).permutation(10) / 10
    scores = pd.DataFrame({"sample_id": ids * 2, "scorer": ["mrd"] * 10 + ["cud"] * 10,
                           "value": [*value, *cud], "difficulty": [*-value, *cud]})
    unlearner = CachedUnlearning(toy_llama(tokenizer), tokenizer, [],
                          {"epochs": 3, "lr": 1e-3, "batch_size": 4, "grad_accum": 1,
                           "warmup_epochs": 0.0})
    # 4 steps of 4 slots: 16 >= 10 samples, not a multiple of them.
    table = schedule_comparison(unlearner, forget, scores, methods=["grad_ascent"],
                                budget_steps=4, target_efficacy=0.5,
                                evaluate=lambda model: (None, None))
    assert len(table) == len(DEFAULT_SCHEDULES)
    assert (table.forget_slots == 16).all()
    for row in table.itertuples():
        if row.schedule == "weighted":  # draws with replacement: reports what it reached
            stream = build_stream("weighted", 10, seed=0, total_slots=16, scorer="mrd",
                                  value=value, difficulty=-value, chunks=3)
            assert row.distinct_samples_drawn == len(set(stream.draw(16)))
        else:
            assert row.distinct_samples_drawn == 10, row
    sets = easy_hard_sets(unlearner, forget, scores, scorers=["mrd", "cud"],
                          methods=["grad_ascent"], k=3, random_seeds=(0, 1))
    assert (sets.forget_slots == 12).all() and (sets.distinct_samples_drawn == 3).all()

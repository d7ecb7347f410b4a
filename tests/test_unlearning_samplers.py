"""Forget-sample streams: reachability, frequencies against weights, annealing, curricula."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import chisquare

from unlearnscope.errors import DataError, UnknownNameError
from unlearnscope.scoring.base import SCORERS, Scorer
from unlearnscope.unlearning.samplers import (
    CurriculumStream,
    UniformStream,
    WeightedStream,
    build_stream,
    ease_weights,
    load_difficulty,
)


def test_uniform_epochs_are_permutations_of_the_whole_dataset():
    stream = UniformStream(50, seed=1)
    first, second = stream.draw(50), stream.draw(50)
    assert sorted(first) == list(range(50)) and sorted(second) == list(range(50))
    assert first != second


def test_weighted_frequencies_match_the_weights_and_every_sample_is_reachable():
    weights = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 0.5, 0.5, 9.0])
    stream = WeightedStream(weights, seed=0, total_slots=10**12)  # annealing negligible
    draws = np.array(stream.draw(40_000))
    counts = np.bincount(draws, minlength=len(weights))
    expected = weights / weights.sum() * len(draws)
    assert counts.min() > 0
    assert chisquare(counts, expected).pvalue > 1e-3
    # A wrong orientation or a subset index would be rejected overwhelmingly:
    assert chisquare(counts, expected[::-1]).pvalue < 1e-10


def test_weighted_sampler_indexes_the_real_dataset_not_its_first_rows():
    weights = np.zeros(30)
    weights[[17, 29]] = 1.0  # only samples at the end of the dataset carry weight
    draws = set(WeightedStream(weights, seed=3, total_slots=10**12).draw(2000))
    assert draws == {17, 29}


def test_weighted_annealing_ends_uniform_and_late_draws_are_uniform():
    weights = np.array([8.0, 1.0, 1.0, 1.0, 1.0])
    total = 50_000
    stream = WeightedStream(weights, seed=0, total_slots=total)
    torch.testing.assert_close(stream.probabilities(0), torch.tensor(weights / 12.0,
                                                                       dtype=torch.float64))
    torch.testing.assert_close(stream.probabilities(total - 1), torch.full((5,), 0.2,
                                                                           dtype=torch.float64))
    middle = stream.probabilities(total // 2)
    assert middle[0].item() == pytest.approx(0.5 * 8 / 12 + 0.5 * 0.2, rel=1e-3)
    draws = np.array(stream.draw(total))
    early, late = draws[:5000], draws[-5000:]
    # Expected frequencies over a window: the mean of the slot distributions in it.
    for window, start in ((early, 0), (late, total - 5000)):
        probs = torch.stack([stream.probabilities(s) for s in range(start, start + 5000, 50)])
        expected = probs.mean(0).numpy() * len(window)
        assert chisquare(np.bincount(window, minlength=5), expected).pvalue > 1e-3


def test_streams_are_deterministic_and_resume_from_their_state():
    weights = np.arange(1, 21, dtype=float)
    reference = WeightedStream(weights, seed=5, total_slots=300).draw(130)
    stream = WeightedStream(weights, seed=5, total_slots=300)
    head = stream.draw(47)
    resumed = WeightedStream(weights, seed=5, total_slots=300)
    resumed.load_state_dict(stream.state_dict())
    assert head + resumed.draw(83) == reference
    assert WeightedStream(weights, seed=6, total_slots=300).draw(130) != reference


def test_curriculum_pools_grow_in_difficulty_order():
    order = np.array([3, 0, 4, 1, 2, 5])  # easiest first
    stream = CurriculumStream(order, seed=0, chunks=3, total_slots=18)
    stages = [stream.draw(6) for _ in range(4)]
    assert set(stages[0]) == {3, 0} and len(stages[0]) == 6
    # Each stage draws its new chunk first, then passes over its pool.
    assert set(stages[1][:2]) == {4, 1} and set(stages[1]) == {3, 0, 4, 1}
    assert set(stages[2][:2]) == {2, 5} and set(stages[2]) <= set(range(6))
    assert sorted(stages[3]) == list(range(6))  # past the run: passes over the full pool
    with pytest.raises(ValueError, match="permutation"):
        CurriculumStream(np.array([0, 0, 1]), seed=0, chunks=2, total_slots=6)


def _stage_draws(draws: list[int], total: int, chunks: int) -> list[list[int]]:
    bounds = [total * s // chunks for s in range(chunks + 1)]
    return [draws[a:b] for a, b in pairwise(bounds)]


@pytest.mark.parametrize("schedule", ["easy-to-hard", "hard-to-easy"])
def test_curricula_under_a_step_budget_reach_every_sample(schedule):
    # The demo's schedule setting: 40 samples, 3 epochs (3 chunks), batch 8, budget 10 steps:
    # 80 slots. Paced per stream epoch of 40 slots, the pool never grew past 27 samples.
    difficulty = np.random.default_rng(0).permutation(40).astype(float)
    order = np.argsort(difficulty if schedule == "easy-to-hard" else -difficulty)
    stream = build_stream(schedule, 40, seed=0, total_slots=80, scorer="loss",
                          value=difficulty, difficulty=difficulty, chunks=3)
    draws = stream.draw(80)
    assert len(set(draws)) == 40
    stages = _stage_draws(draws, 80, 3)
    assert [len(s) for s in stages] == [26, 27, 27]
    pools = [set(order[:14]), set(order[:27]), set(order)]
    for stage, pool, new in zip(stages, pools, ([], order[:14], order[:27]), strict=True):
        assert set(stage) <= pool
        # the newly added chunk comes first, each of its samples once
        fresh = pool - set(new)
        assert set(stage[:len(fresh)]) == fresh


def test_curriculum_stages_follow_slots_when_n_is_not_a_multiple_of_the_batch():
    # 10 samples, global batch 4, 3 epochs: 3 steps an epoch, 36 slots. Stages are 12 slots
    # (one training epoch each), not the stream's 10.
    difficulty = np.arange(10, dtype=float)
    draws = build_stream("easy-to-hard", 10, seed=0, total_slots=36, scorer="loss",
                         value=difficulty, difficulty=difficulty, chunks=3).draw(36)
    stages = _stage_draws(draws, 36, 3)
    assert [len(s) for s in stages] == [12, 12, 12]
    assert set(stages[0]) == {0, 1, 2, 3}
    assert set(stages[1]) == set(range(7)) and set(stages[1][:3]) == {4, 5, 6}
    assert set(stages[2]) == set(range(10)) and set(stages[2][:3]) == {7, 8, 9}


def test_curricula_draw_every_sample_whenever_the_run_has_n_slots():
    rng = np.random.default_rng(1)
    for n in range(1, 26):
        for chunks in range(1, 9):
            for total in (n, n + 1, 2 * n - 1, 3 * n + 2):
                order = rng.permutation(n)
                stream = CurriculumStream(order, seed=n, chunks=chunks, total_slots=total)
                draws = stream.draw(total)
                assert len(draws) == total and len(set(draws)) == n, (n, chunks, total)
                stages = min(chunks, n)
                for stage, part in enumerate(_stage_draws(draws, total, stages)):
                    assert set(part) <= set(order[:-(-n * (stage + 1) // stages)])


def test_curriculum_resumes_mid_stage_to_the_same_draws():
    order = np.random.default_rng(2).permutation(23)
    reference = CurriculumStream(order, seed=4, chunks=4, total_slots=50).draw(60)
    for cut in (1, 12, 13, 37, 50):
        stream = CurriculumStream(order, seed=4, chunks=4, total_slots=50)
        head = stream.draw(cut)
        resumed = CurriculumStream(order, seed=4, chunks=4, total_slots=50)
        resumed.load_state_dict(stream.state_dict())
        assert head + resumed.draw(60 - cut) == reference
    assert CurriculumStream(order, seed=5, chunks=4, total_slots=50).draw(60) != reference


def test_weighted_annealing_follows_the_real_slot_count():
    # All weight on sample 0, 4 samples, 7 slots (not a multiple of n): slot s draws from the
    # uniform part with probability t = s / 6, so it is not sample 0 with probability 3t/4.
    weights = np.array([1.0, 0.0, 0.0, 0.0])
    runs = np.array([WeightedStream(weights, seed=seed, total_slots=7).draw(7)
                     for seed in range(3000)])
    assert (runs[:, 0] == 0).all()
    other = (runs != 0).mean(axis=0)
    expected = 0.75 * np.arange(7) / 6
    np.testing.assert_allclose(other, expected, atol=4 * np.sqrt(0.25 / 3000))


def test_build_stream_orients_schedules_by_difficulty():
    difficulty = np.array([0.9, 0.1, 0.5, 0.3])  # sample 1 easiest, sample 0 hardest
    value = -difficulty
    easy_first = build_stream("easy-to-hard", 4, seed=0, total_slots=16, scorer="loss",
                              value=value, difficulty=difficulty, chunks=4)
    assert set(easy_first.draw(4)) == {1}
    hard_first = build_stream("hard-to-easy", 4, seed=0, total_slots=16, scorer="loss",
                              value=value, difficulty=difficulty, chunks=4)
    assert set(hard_first.draw(4)) == {0}
    assert ease_weights("loss", value, difficulty).tolist() == [1.0, 4.0, 2.0, 3.0]
    mrd = np.array([0.2, 0.05, 0.1, 0.0])
    assert ease_weights("mrd", mrd, -mrd).tolist() == mrd.tolist()
    with pytest.raises(DataError, match="needs difficulty"):
        build_stream("weighted", 4, seed=0, total_slots=8)
    with pytest.raises(UnknownNameError):
        build_stream("random", 4, seed=0, total_slots=8)


def test_load_difficulty_aligns_rows_and_names_problems(tmp_path):
    path = tmp_path / "scores.parquet"
    pd.DataFrame({"sample_id": ["b", "a", "b", "a"], "scorer": ["mrd", "mrd", "loss", "loss"],
                  "value": [0.1, 0.3, 2.0, 1.0], "difficulty": [-0.1, -0.3, 2.0, 1.0]}
                 ).to_parquet(path)
    scorer, value, difficulty = load_difficulty(path, ["a", "b"], "mrd")
    assert scorer == "mrd" and value.tolist() == [0.3, 0.1] and difficulty.tolist() == [-0.3, -0.1]
    with pytest.raises(DataError, match="choose one with --scorer"):
        load_difficulty(path, ["a"], None)
    with pytest.raises(DataError, match=r"no loss score for 1 forget samples, e\.g\. c"):
        load_difficulty(path, ["a", "c"], "loss")


def test_load_difficulty_accepts_a_dataframe():
    table = pd.DataFrame({"sample_id": ["x", "y"], "scorer": "loss", "value": [1.0, 2.0],
                          "difficulty": [1.0, 2.0]})
    scorer, value, difficulty = load_difficulty(table, ["y", "x"])
    assert scorer == "loss" and value.tolist() == [2.0, 1.0] and difficulty.tolist() == [2.0, 1.0]
    with pytest.raises(DataError, match="missing column"):
        load_difficulty(table.drop(columns="difficulty"), ["x"])


def test_ease_weights_use_the_value_for_every_scorer_whose_value_is_ease(monkeypatch):
    value = np.array([0.2, 0.05, 0.1, 0.0])
    for name in ("mrd", "mrd_grad", "mrd_hutchinson"):
        assert SCORERS[name].value_is_ease
        assert ease_weights(name, value, -value).tolist() == value.tolist()
        with pytest.raises(DataError, match=f"{name} values must be non-negative"):
            ease_weights(name, value - 0.1, 0.1 - value)
    # Any other scorer, known or not, is weighted by the rank of ease (hardest = 1).
    assert not SCORERS["loss"].value_is_ease
    for name in ("loss", "not_registered"):
        assert ease_weights(name, value, -value).tolist() == [4.0, 2.0, 3.0, 1.0]

    # The attribute is read through the registry, not from the name.
    class EaseValued(Scorer):
        name = "ease_valued"
        higher_is_harder = False
        value_is_ease = True

        def score(self, model, tokenizer, samples, encoded, *, batch_size):
            raise NotImplementedError

    monkeypatch.setitem(SCORERS, "ease_valued", EaseValued)
    assert ease_weights("ease_valued", value, -value).tolist() == value.tolist()


def test_uniform_and_weighted_draws_are_pinned():
    # Curriculum pacing follows the run's slots; the other schedules' draws stay as they were.
    assert UniformStream(7, seed=3).draw(16) == [6, 2, 0, 3, 4, 1, 5, 6, 3, 1, 4, 2, 0, 5, 3, 0]
    assert WeightedStream(np.arange(1, 8.0), seed=3, total_slots=16).draw(16) == [
        0, 5, 6, 5, 3, 4, 1, 2, 3, 4, 0, 2, 0, 0, 2, 4]

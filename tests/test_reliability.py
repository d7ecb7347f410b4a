"""Seed reliability and noise ceilings against hand computations and slow loops; seed pairing;
the reliability table and its seed-mean ground truth."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from unlearnscope.evaluation.reliability import (
    bootstrap_indices,
    mean_over_seed_pairs,
    noise_ceiling,
    resolution,
    rowwise_spearman,
    seed_pairing,
    seed_reliability,
    spearman_brown,
    versus_seed_mean,
)
from unlearnscope.evaluation.validation import (
    correlations,
    measured_difficulty,
    reliability_table,
    seed_mean_outcomes,
)

IDS = [f"s{i}" for i in range(10)]
# difficulty (-efficacy) of 10 samples under three seeds
SEEDS = np.array([
    [0.1, 0.2, 0.0], [0.5, 0.4, 0.6], [0.3, 0.1, 0.2], [0.9, 0.8, 0.7], [0.2, 0.5, 0.4],
    [0.7, 0.9, 0.8], [0.4, 0.3, 0.5], [0.8, 0.6, 0.9], [0.6, 0.7, 0.1], [0.0, 0.0, 0.3]])


def _per_seed(values=SEEDS, seeds=(0, 1, 2)) -> pd.DataFrame:
    return pd.DataFrame(values, index=IDS[: len(values)], columns=list(seeds))


def _outcomes(difficulty, ids=IDS):
    return pd.DataFrame({"sample_id": ids, "efficacy": -np.asarray(difficulty)})


def _slow_ceiling(per_seed: np.ndarray) -> float:
    r = np.mean([stats.spearmanr(per_seed[:, a], per_seed[:, b]).statistic
                 for a, b in itertools.combinations(range(per_seed.shape[1]), 2)])
    big_r = per_seed.shape[1]
    reliability = big_r * r / (1 + (big_r - 1) * r)
    return math.sqrt(reliability) if reliability > 0 else math.nan


def test_spearman_brown_and_ceiling_by_hand():
    assert spearman_brown(0.5, 3) == pytest.approx(1.5 / 2.0)  # 3 * 0.5 / (1 + 2 * 0.5)
    assert spearman_brown(0.6, 2) == pytest.approx(1.2 / 1.6)
    assert math.isnan(spearman_brown(0.5, 1))
    assert noise_ceiling(0.75) == pytest.approx(math.sqrt(0.75))
    assert math.isnan(noise_ceiling(-0.2)) and math.isnan(noise_ceiling(float("nan")))


def test_rowwise_spearman_equals_scipy_with_ties_and_constant_rows():
    x = np.array([[1.0, 2.0, 2.0, 5.0, 0.0], [3.0, 3.0, 3.0, 3.0, 3.0]])
    y = np.array([[0.5, 0.1, 0.3, 0.9, 0.2], [1.0, 2.0, 3.0, 4.0, 5.0]])
    rho = rowwise_spearman(x, y)
    assert rho[0] == pytest.approx(stats.spearmanr(x[0], y[0]).statistic, abs=1e-12)
    assert math.isnan(rho[1])


def test_seed_reliability_by_hand():
    result = seed_reliability(_per_seed(), n_boot=200, seed=1)
    pairs = {(a, b): stats.spearmanr(SEEDS[:, a], SEEDS[:, b]).statistic
             for a, b in itertools.combinations(range(3), 2)}
    assert result.pair_spearman == pytest.approx(pairs)
    r = np.mean(list(pairs.values()))
    assert result.mean_spearman == pytest.approx(r)
    assert result.reliability == pytest.approx(3 * r / (1 + 2 * r))
    assert result.ceiling == pytest.approx(math.sqrt(3 * r / (1 + 2 * r)))
    index = bootstrap_indices(10, 200, 1)
    slow = np.array([_slow_ceiling(SEEDS[i]) for i in index])
    slow = slow[np.isfinite(slow)]
    assert (result.ceiling_low, result.ceiling_high) == pytest.approx(
        tuple(np.quantile(slow, [0.025, 0.975])), abs=1e-12)
    assert result.note == ""


def test_one_seed_has_an_unknown_ceiling_and_says_so():
    result = seed_reliability(_per_seed(SEEDS[:, :1], seeds=(4,)))
    assert math.isnan(result.mean_spearman) and math.isnan(result.ceiling)
    assert math.isnan(result.ceiling_low)
    assert "one seed (4)" in result.note and "unknown" in result.note
    disagree = seed_reliability(_per_seed(np.stack([SEEDS[:, 0], -SEEDS[:, 0]], axis=1),
                                          seeds=(0, 1)))
    assert disagree.mean_spearman == pytest.approx(-1.0) and math.isnan(disagree.ceiling)
    assert "disagree" in disagree.note


def test_fraction_of_ceiling_interval_recomputes_the_ceiling_in_each_resample():
    score = np.array([0.3, 0.4, 0.1, 0.9, 0.6, 0.7, 0.2, 0.8, 0.5, 0.0])
    found = versus_seed_mean(score, SEEDS, n_boot=300, seed=5)
    mean = SEEDS.mean(axis=1)
    rho = stats.spearmanr(score, mean).statistic
    ceiling = _slow_ceiling(SEEDS)
    assert found["spearman"] == pytest.approx(rho)
    assert found["ceiling"] == pytest.approx(ceiling)
    assert found["fraction_of_ceiling"] == pytest.approx(rho / ceiling)
    rhos, fractions = [], []
    for i in bootstrap_indices(10, 300, 5):
        r = stats.spearmanr(score[i], mean[i]).statistic
        rhos.append(r)
        fractions.append(r / _slow_ceiling(SEEDS[i]))
    rhos, fractions = np.array(rhos), np.array(fractions)
    assert (found["spearman_low"], found["spearman_high"]) == pytest.approx(
        tuple(np.quantile(rhos[np.isfinite(rhos)], [0.025, 0.975])), abs=1e-12)
    assert (found["fraction_low"], found["fraction_high"]) == pytest.approx(
        tuple(np.quantile(fractions[np.isfinite(fractions)], [0.025, 0.975])), abs=1e-12)
    # not rho's interval over a fixed ceiling: the ceiling's noise is in it
    fixed = (found["spearman_low"] / ceiling, found["spearman_high"] / ceiling)
    assert abs(found["fraction_low"] - fixed[0]) > 0.05


def test_resolution_counts_distinct_values_and_tied_samples():
    assert resolution([1, 1, 1, 2, 3, 3]) == (3, 5)
    assert resolution([0.1, 0.2, 0.3]) == (3, 0)


def test_seed_pairing_prefers_different_seeds_and_flags_shared_data_order():
    pairing = seed_pairing([0, 1], [0, 1])
    assert pairing.pairs == ((0, 1), (1, 0)) and not pairing.shared_data_order
    assert "different seeds" in pairing.describe()
    same = seed_pairing([0], [0])
    assert same.pairs == ((0, 0),) and same.shared_data_order
    assert "share their data order" in same.describe()
    assert seed_pairing([0, 1, 2], [0]).pairs == ((1, 0), (2, 0))
    value, used = mean_over_seed_pairs({0: 1.0, 1: 2.0}, {0: 10.0, 1: 20.0},
                                       lambda a, b: a + b)
    assert value == pytest.approx(((1 + 20) + (2 + 10)) / 2) and used == pairing


def test_measured_difficulty_of_several_seeds_is_their_mean():
    outcomes = {"a": {0: _outcomes(SEEDS[:, 0]), 1: _outcomes(SEEDS[:, 1]),
                      2: _outcomes(SEEDS[:, 2])},
                "b": _outcomes(SEEDS[:, 0])}
    frame = measured_difficulty(outcomes)
    assert frame["a"].to_numpy() == pytest.approx(SEEDS.mean(axis=1))
    assert frame["b"].to_numpy() == pytest.approx(SEEDS[:, 0])
    assert seed_mean_outcomes(outcomes["a"])["efficacy"].to_numpy() == pytest.approx(
        -SEEDS.mean(axis=1))
    scores = pd.DataFrame({"sample_id": IDS, "scorer": "x", "value": SEEDS[:, 1],
                           "difficulty": SEEDS[:, 1]})
    table = correlations(scores, outcomes, n_boot=50).set_index("method")
    assert table.loc["a", "ceiling"] == pytest.approx(_slow_ceiling(SEEDS))
    assert table.loc["a", "fraction_of_ceiling"] == pytest.approx(
        stats.spearmanr(SEEDS[:, 1], SEEDS.mean(axis=1)).statistic / _slow_ceiling(SEEDS))
    assert math.isnan(table.loc["b", "ceiling"]) and math.isnan(table.loc["mean", "ceiling"])


def test_reliability_table_rows_per_method():
    outcomes = {"a": {0: _outcomes(SEEDS[:, 0]), 2: _outcomes(SEEDS[:, 2])},
                "b": {0: _outcomes(SEEDS[:, 1])}}
    scores = pd.DataFrame({"sample_id": IDS, "scorer": "x", "value": SEEDS[:, 1],
                           "difficulty": SEEDS[:, 1]})
    steps = pd.DataFrame({"sample_id": IDS, "steps_to_forget": [1, 1, 1, 3, 1, 2, 1, 3, 2, 1],
                          "capped": [False] * 9 + [True],
                          "interpolated_steps": np.linspace(0.1, 3.0, 10)})
    table = reliability_table(scores, outcomes, steps_to_forget={"a": steps},
                              exclude_ids=["s9"], n_boot=50)
    a = table[table.method == "a"]
    pair = a[a.kind == "seed_pair"].iloc[0]
    assert pair["item"] == "0-2" and pair.n == 9
    assert pair.spearman == pytest.approx(stats.spearmanr(SEEDS[:9, 0], SEEDS[:9, 2]).statistic)
    ceiling = a[a.kind == "ceiling"].iloc[0]
    assert ceiling.ceiling == pytest.approx(_slow_ceiling(SEEDS[:9, [0, 2]]))
    b = table[(table.method == "b") & (table.kind == "ceiling")].iloc[0]
    assert math.isnan(b.ceiling) and "unknown" in b.note
    agreement = a[(a.kind == "agreement") & (a.ground_truth == "steps_to_forget")].iloc[0]
    assert (agreement.distinct, agreement.tied) == (3, 9)  # s9 (capped) is excluded
    assert agreement.spearman == pytest.approx(stats.spearmanr(
        steps.steps_to_forget[:9], SEEDS[:9, [0, 2]].mean(axis=1)).statistic)
    interpolated = a[(a.kind == "agreement") & (a.ground_truth == "interpolated_steps")]
    assert interpolated.iloc[0].distinct == 9 and interpolated.iloc[0].tied == 0
    methods = table[table.kind == "method_pair"].iloc[0]
    assert (methods["method"], methods["item"]) == ("a", "b")
    assert methods.spearman == pytest.approx(stats.spearmanr(SEEDS[:9, 2], SEEDS[:9, 1])
                                             .statistic)  # only a's seed 2 differs from b's 0
    assert "different seeds" in methods.note

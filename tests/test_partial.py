"""Partial Spearman: a hand computation, the closed form on ranks, the bootstrap, the table."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from unlearnscope.errors import DataError
from unlearnscope.evaluation.partial import (
    PARTIAL_COLUMNS,
    bootstrap_partial_spearman_interval,
    partial_correlations,
    partial_spearman,
    write_partial_correlations,
)


def _closed_form(x, y, z):
    """r_xy.z from the three Pearson correlations of average ranks."""
    rx, ry, rz = (stats.rankdata(v) for v in (x, y, z))
    r = np.corrcoef(np.stack([rx, ry, rz]))
    rxy, rxz, ryz = r[0, 1], r[0, 2], r[1, 2]
    return (rxy - rxz * ryz) / math.sqrt((1 - rxz ** 2) * (1 - ryz ** 2))


def test_hand_computation_without_ties():
    # ranks are the values; sum d^2 = 4, 4, 14 -> r_xy = 0.8, r_xz = 0.8, r_yz = 0.3
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    z = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    expected = (0.8 - 0.8 * 0.3) / math.sqrt((1 - 0.64) * (1 - 0.09))
    assert partial_spearman(x, y, z) == pytest.approx(expected, abs=1e-12)
    # the order of the samples and monotone transforms change nothing
    order = np.array([3, 0, 4, 1, 2])
    assert partial_spearman(np.exp(x[order]), y[order] ** 3, -z[order]) == \
        pytest.approx(expected, abs=1e-12)


def test_equals_the_closed_form_and_least_squares_residuals_with_ties():
    rng = np.random.default_rng(0)
    z = rng.integers(0, 6, size=40).astype(float)  # many ties
    x = z + rng.normal(size=40)
    y = np.round(z + rng.normal(size=40))
    got = partial_spearman(x, y, z)
    assert got == pytest.approx(_closed_form(x, y, z), abs=1e-12)
    design = np.stack([np.ones(40), stats.rankdata(z)], axis=1)
    residual = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0]
                for r in (stats.rankdata(x), stats.rankdata(y))]
    assert got == pytest.approx(np.corrcoef(residual)[0, 1], abs=1e-12)
    assert abs(got) < abs(stats.spearmanr(x, y).statistic)  # the shared z is taken out


def test_undefined_cases_are_nan():
    z = np.arange(10.0)
    y = np.random.default_rng(1).normal(size=10)
    assert np.isnan(partial_spearman(2 * z + 1, y, z))  # x is a function of z
    assert np.isnan(partial_spearman(y, z, np.ones(10)))  # constant control
    assert np.isnan(partial_spearman(y[:3], y[:3], z[:3]))
    with pytest.raises(ValueError, match="lengths"):
        partial_spearman(y, y[:5], z)


def test_bootstrap_matches_a_slow_loop():
    rng = np.random.default_rng(2)
    z = rng.normal(size=15)
    x, y = z + rng.normal(size=15), z + rng.normal(size=15)
    low, high = bootstrap_partial_spearman_interval(x, y, z, n_boot=300, seed=5)
    index = np.random.default_rng(5).integers(0, 15, size=(300, 15))
    slow = [partial_spearman(x[i], y[i], z[i]) for i in index]
    slow = np.array([r for r in slow if np.isfinite(r)])
    assert (low, high) == pytest.approx(tuple(np.quantile(slow, [0.025, 0.975])), abs=1e-12)
    assert low < partial_spearman(x, y, z) < high


def _scores(columns, ids):
    return pd.DataFrame([(i, name, float(v), float(v)) for name, values in columns.items()
                         for i, v in zip(ids, values, strict=True)],
                        columns=["sample_id", "scorer", "value", "difficulty"])


def test_table_excludes_fit_ids_and_skips_the_control(tmp_path):
    rng = np.random.default_rng(3)
    ids = [f"s{i}" for i in range(30)]
    length = rng.integers(5, 40, size=30).astype(float)
    measured = -length + rng.normal(scale=5, size=30)  # longer = easier
    echo = -length + rng.normal(scale=1, size=30)  # a scorer that only re-discovers length
    signal = measured + length + rng.normal(scale=1, size=30)  # what length does not explain
    scores = _scores({"answer_length": -length, "echo": echo, "signal": signal}, ids)
    outcomes = {"npo": pd.DataFrame({"sample_id": ids, "efficacy": -measured})}
    fit = ids[:10]
    table = write_partial_correlations(tmp_path, scores, outcomes, exclude_ids=fit, n_boot=200)
    assert list(table.columns) == PARTIAL_COLUMNS
    assert set(table.scorer) == {"echo", "signal"}
    assert set(table.method) == {"npo", "mean"} and (table.n == 20).all()
    row = table.set_index(["scorer", "method"])
    held = slice(10, None)
    assert row.loc[("echo", "npo"), "partial_spearman"] == pytest.approx(
        _closed_form(echo[held], measured[held], -length[held]), abs=1e-12)
    assert abs(row.loc[("echo", "npo"), "partial_spearman"]) < 0.5
    assert row.loc[("signal", "npo"), "partial_spearman"] > 0.5
    assert (tmp_path / "validation" / "partial.csv").is_file()
    assert "partial spearman [95% CI]" in (tmp_path / "validation" / "partial.md").read_text()
    with pytest.raises(DataError, match="question_length"):
        partial_correlations(scores, outcomes, control="question_length")

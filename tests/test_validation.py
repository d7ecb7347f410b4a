"""Validation statistics against scipy and hand counts; rank averaging; exclusion; the CLI."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from unlearnscope.cli import main
from unlearnscope.errors import DataError
from unlearnscope.evaluation.validation import (
    bootstrap_spearman_interval,
    correlations,
    cud_stability,
    measured_difficulty,
    quartile_auroc,
    scorer_correlations,
    seed_difficulty,
)
from unlearnscope.layout import CORRELATION_COLUMNS, read_method_outcomes

IDS = [f"s{i}" for i in range(12)]
EFFICACY_A = np.array([0.9, 0.1, 0.5, 0.5, 0.7, 0.2, 1.0, 0.0, 0.3, 0.6, 0.8, 0.4])
EFFICACY_B = np.array([0.8, 0.3, 0.4, 0.6, 0.9, 0.1, 0.7, 0.2, 0.2, 0.5, 1.0, 0.0])


def _outcomes(efficacy, ids=IDS):
    return pd.DataFrame({"sample_id": ids, "efficacy": efficacy, "loss_before": 1.0,
                         "loss_after": 2.0})


def _scores(columns: dict[str, np.ndarray], ids=IDS) -> pd.DataFrame:
    rows = [(sid, name, float(v), float(v)) for name, values in columns.items()
            for sid, v in zip(ids, values, strict=True)]
    return pd.DataFrame(rows, columns=["sample_id", "scorer", "value", "difficulty"])


def test_spearman_and_kendall_equal_scipy_with_a_deterministic_bootstrap():
    rng = np.random.default_rng(1)
    noisy = -EFFICACY_A + rng.normal(0, 0.3, size=12)
    table = correlations(_scores({"noisy": noisy}), {"a": _outcomes(EFFICACY_A)}, n_boot=500,
                         seed=3)
    row = table[table.method == "a"].iloc[0]
    assert row.spearman == pytest.approx(stats.spearmanr(noisy, -EFFICACY_A).statistic,
                                         abs=1e-12)
    assert row.kendall == pytest.approx(stats.kendalltau(noisy, -EFFICACY_A).statistic,
                                        abs=1e-12)
    assert row.spearman_low < row.spearman < row.spearman_high
    again = correlations(_scores({"noisy": noisy}), {"a": _outcomes(EFFICACY_A)}, n_boot=500,
                         seed=3)
    pd.testing.assert_frame_equal(table, again)
    other = bootstrap_spearman_interval(noisy, -EFFICACY_A, n_boot=500, seed=4)
    assert other != (row.spearman_low, row.spearman_high)


def test_bootstrap_interval_matches_a_slow_loop_over_resamples():
    x = np.array([3.0, 1.0, 2.0, 2.0, 5.0, 4.0, 0.0, 6.0])
    y = np.array([2.0, 0.0, 3.0, 1.0, 5.0, 5.0, 1.0, 4.0])
    low, high = bootstrap_spearman_interval(x, y, n_boot=200, seed=7)
    index = np.random.default_rng(7).integers(0, len(x), size=(200, len(x)))
    rhos = [stats.spearmanr(x[i], y[i]).statistic for i in index]
    rhos = np.array([r for r in rhos if np.isfinite(r)])
    assert (low, high) == pytest.approx(tuple(np.quantile(rhos, [0.025, 0.975])), abs=1e-12)


def test_quartile_auroc_counts_pairs_with_ties_as_half():
    measured = np.arange(8, dtype=float)  # quartiles: {0, 1} easiest (<= 1.75), {6, 7} hardest
    score = np.array([0.2, 0.5, 9.0, 9.0, 9.0, 9.0, 0.5, 0.9])
    # positives {0.5, 0.9} vs negatives {0.2, 0.5}: 0.5>0.2 (1), 0.5=0.5 (1/2), 0.9>0.2, 0.9>0.5
    assert quartile_auroc(score, measured) == pytest.approx(3.5 / 4)
    assert np.isnan(quartile_auroc(np.arange(8.0), np.ones(8)))


def test_measured_difficulty_rank_averages_methods_by_hand():
    frame = measured_difficulty({"a": _outcomes([0.9, 0.1, 0.5], IDS[:3]),
                                 "b": _outcomes([0.2, 0.2, 0.8], IDS[:3])})
    # difficulty a = [-0.9, -0.1, -0.5] -> ranks [1, 3, 2]; b = [-0.2, -0.2, -0.8] -> [2.5, 2.5, 1]
    assert frame["a"].tolist() == [-0.9, -0.1, -0.5]
    assert frame["mean"].tolist() == [1.75, 2.75, 1.5]
    with pytest.raises(DataError, match="reserved"):
        measured_difficulty({"mean": _outcomes([0.1, 0.2, 0.3], IDS[:3])})
    with pytest.raises(DataError, match="no held-out samples"):
        measured_difficulty({"a": _outcomes([0.1, 0.2], IDS[:2])}, exclude_ids=IDS[:2])


def test_orientation_of_a_perfect_scorer_and_its_negative():
    outcomes = {"a": _outcomes(EFFICACY_A), "b": _outcomes(EFFICACY_B)}
    measured = measured_difficulty(outcomes)["mean"].to_numpy()
    table = correlations(_scores({"perfect": measured, "reversed": -measured}), outcomes,
                         n_boot=100)
    mean = table[table.method == "mean"].set_index("scorer")
    assert mean.loc["perfect", "spearman"] == pytest.approx(1.0)
    assert mean.loc["perfect", "kendall"] == pytest.approx(1.0)
    assert mean.loc["perfect", "auroc"] == pytest.approx(1.0)
    assert mean.loc["reversed", "spearman"] == pytest.approx(-1.0)
    assert mean.loc["reversed", "auroc"] == pytest.approx(0.0)
    assert table["method"].tolist() == ["a", "b", "mean"] * 2
    assert tuple(table.columns) == CORRELATION_COLUMNS


def test_a_constant_scorer_gets_no_correlation_and_no_warning():
    outcomes = {"a": _outcomes(EFFICACY_A)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = correlations(_scores({"flat": np.ones(12), "live": EFFICACY_A}), outcomes,
                             n_boot=50)
    flat = table[table.scorer == "flat"].iloc[0]
    assert np.isnan(flat.spearman) and np.isnan(flat.kendall) and np.isnan(flat.spearman_low)
    assert flat.n == 12
    assert not np.isnan(table[table.scorer == "live"].iloc[0].spearman)


def test_fit_ids_are_excluded_from_every_statistic():
    outcomes = {"a": _outcomes(EFFICACY_A)}
    noisy = -EFFICACY_A + np.linspace(-0.3, 0.3, 12) ** 2
    excluded = {"s0", "s3", "s7"}
    table = correlations(_scores({"noisy": noisy}), outcomes, exclude_ids=excluded, n_boot=100)
    keep = [i for i, sid in enumerate(IDS) if sid not in excluded]
    row = table.iloc[0]
    assert row.n == 9
    assert row.spearman == pytest.approx(stats.spearmanr(noisy[keep], -EFFICACY_A[keep])
                                         .statistic)
    kept = [IDS[i] for i in keep]
    subset = correlations(_scores({"noisy": noisy[keep]}, kept),
                          {"a": _outcomes(EFFICACY_A[keep], kept)}, n_boot=100)
    pd.testing.assert_frame_equal(table, subset)
    matrix = scorer_correlations(_scores({"x": noisy, "y": EFFICACY_A}), excluded)
    assert matrix.loc["x", "y"] == pytest.approx(stats.spearmanr(noisy[keep], EFFICACY_A[keep])
                                                 .statistic)


def test_cud_stability_pairs_only_cud_scorers():
    rng = np.random.default_rng(0)
    base = rng.normal(size=12)
    scores = _scores({"cud:npo": base, "cud:graddiff": base + rng.normal(0, 0.5, 12),
                      "loss": rng.normal(size=12)})
    table = cud_stability(scores)
    assert table[["scorer_a", "scorer_b"]].values.tolist() == [["cud:npo", "cud:graddiff"]]
    assert table.spearman.iloc[0] == pytest.approx(
        stats.spearmanr(base, scores[scores.scorer == "cud:graddiff"].difficulty).statistic)
    assert cud_stability(_scores({"cud": base, "loss": base})).empty


def _write_run(root, with_anchors=True):
    rng = np.random.default_rng(2)
    (root / "unlearn" / "npo").mkdir(parents=True)
    (root / "unlearn" / "graddiff").mkdir(parents=True)
    _outcomes(EFFICACY_A).to_parquet(root / "unlearn" / "npo" / "outcomes.parquet")
    _outcomes(EFFICACY_B).to_parquet(root / "unlearn" / "graddiff" / "outcomes.parquet")
    _scores({"mrd": rng.normal(size=12), "cud:npo": -EFFICACY_A,
             "cud:graddiff": -EFFICACY_B}).to_parquet(root / "scores.parquet")
    if with_anchors:
        (root / "anchors").mkdir()
        (root / "anchors" / "anchors.json").write_text(json.dumps(
            {"easy": ["s6"], "hard": ["s7"], "fit_ids": ["s6", "s7"]}))
        # the anchor-based variants record which samples their anchors were fitted on
        (root / "scorers.json").write_text(json.dumps(
            {name: {"name": "cud", "anchor_fit_ids": ["s6", "s7"]}
             for name in ("cud:npo", "cud:graddiff")}))


def test_cli_on_a_run_folder(tmp_path, capsys):
    _write_run(tmp_path)
    configs = (tmp_path / "scorers.json").read_text()
    (tmp_path / "scorers.json").unlink()
    # `cud:npo` is a CUD variant: without a record of its anchors' fit samples it is refused
    assert main(["validate", "--run", str(tmp_path), "--n-boot", "200"]) == 2
    assert "scorer 'cud:npo': no config recorded" in capsys.readouterr().err
    (tmp_path / "scorers.json").write_text(configs)
    assert main(["validate", "--run", str(tmp_path), "--n-boot", "200"]) == 0
    printed = capsys.readouterr().out
    assert "cud:npo" in printed and "mrd" in printed
    folder = tmp_path / "validation"
    table = pd.read_csv(folder / "correlations.csv")
    assert tuple(table.columns) == CORRELATION_COLUMNS
    assert set(table.method) == {"npo", "graddiff", "mean"}
    assert (table.n == 10).all()  # the two fit ids are held out
    row = table[(table.scorer == "cud:npo") & (table.method == "npo")].iloc[0]
    assert row.spearman == pytest.approx(1.0) and row.auroc == pytest.approx(1.0)
    matrix = pd.read_csv(folder / "scorer_correlations.csv", index_col=0)
    assert list(matrix.index) == list(matrix.columns) == ["mrd", "cud:npo", "cud:graddiff"]
    assert (folder / "correlations.md").read_text().startswith("| scorer | method |")
    assert (folder / "cud_stability.csv").is_file() and (folder / "config.json").is_file()


def test_cli_with_explicit_files_and_errors(tmp_path, capsys):
    _write_run(tmp_path, with_anchors=False)
    out = tmp_path / "out"
    files = [str(tmp_path / "unlearn" / m / "outcomes.parquet") for m in ("npo", "graddiff")]
    args = ["validate", "correlations", "--scores", str(tmp_path / "scores.parquet"),
            "--outcomes", *files, "--methods", "x", "y", "--out", str(out), "--n-boot", "50"]
    # the cud:<variant> scorers record no anchors: refused unless accepted, then flagged
    assert main(args) == 2
    assert "scorer 'cud:npo': no config recorded" in capsys.readouterr().err
    assert main([*args, "--allow-unverified-holdout"]) == 0
    table = pd.read_csv(out / "validation" / "correlations.csv")
    assert set(table.method) == {"x", "y", "mean"} and (table.n == 12).all()
    flagged = table.set_index("scorer")["unverified_holdout"].astype(str)
    assert flagged.loc["cud:npo"].str.contains("cud:npo").all()

    assert main([*args[:-7], "--methods", "x", "--out", str(out)]) == 2
    assert "2 outcomes paths" in capsys.readouterr().err
    pd.DataFrame({"sample_id": IDS}).to_parquet(tmp_path / "bad.parquet")
    assert main(["validate", "--scores", str(tmp_path / "scores.parquet"), "--outcomes",
                 str(tmp_path / "bad.parquet"), "--out", str(out)]) == 2
    assert "field 'efficacy'" in capsys.readouterr().err


def _anchor_run(root, fit_ids=("s6", "s7")):
    """A score table with `mrd` and `cud` (a perfect predictor of npo's difficulty) and the
    anchors file the cud scorer was fitted with."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "unlearn" / "npo").mkdir(parents=True)
    _outcomes(EFFICACY_A).to_parquet(root / "unlearn" / "npo" / "outcomes.parquet")
    rng = np.random.default_rng(2)
    _scores({"mrd": rng.normal(size=12), "cud": -EFFICACY_A}).to_parquet(root / "scores.parquet")
    anchors = {"method": "vote", "k": 1, "easy": ["s6"], "hard": ["s7"],
               "fit_ids": list(fit_ids), "held_out_ids": [i for i in IDS if i not in fit_ids]}
    (root / "anchors.json").write_text(json.dumps(anchors))
    return anchors


def _validate_files(root, *extra):
    return main(["validate", "--scores", str(root / "scores.parquet"), "--outcomes",
                 str(root / "unlearn" / "npo" / "outcomes.parquet"), "--out",
                 str(root / "out"), "--n-boot", "50", *extra])


@pytest.mark.parametrize("record", ["scorers.json", "config.json", "anchors path"])
def test_anchor_fit_samples_are_left_out_without_exclude_ids(tmp_path, record):
    """The fit ids of an anchor-based scorer come from the configs beside the score table:
    `anchor_fit_ids` (scorers.json or `unlearnscope score`'s config.json) or the anchors file
    a config names."""
    root = tmp_path / "run"
    anchors = _anchor_run(root)
    config = {"name": "cud", "uses_anchors": True, "anchor_fit_ids": anchors["fit_ids"]}
    if record == "scorers.json":
        (root / "scorers.json").write_text(json.dumps({"cud": config, "mrd": {"name": "mrd"}}))
    elif record == "config.json":
        (root / "config.json").write_text(json.dumps(
            {"command": "score", "options": {"scorer_configs": [config]}}))
    else:
        (root / "scorers.json").write_text(json.dumps({"cud": {
            "name": "cud", "uses_anchors": True, "anchors": str(root / "anchors.json"),
            "anchor_method": "combined",
            "anchor_sets": {"combined": {"easy": ["s6"], "hard": ["s7"]}}}}))
    assert _validate_files(root) == 0
    table = pd.read_csv(root / "out" / "validation" / "correlations.csv")
    assert (table.n == 10).all()
    assert "unverified_holdout" not in table.columns
    recorded = json.loads((root / "out" / "validation" / "config.json").read_text())["options"]
    assert recorded["n_excluded"] == 2 and recorded["unverified_holdout"] == []
    assert "cud" in recorded["anchor_fit_ids_from"]


def test_an_anchor_scorer_without_its_fit_ids_is_refused_unless_accepted(tmp_path, capsys,
                                                                          monkeypatch):
    from unlearnscope.scoring.cud import CUD

    monkeypatch.setattr(CUD, "uses_anchors", True, raising=False)  # contract 1
    root = tmp_path / "run"
    _anchor_run(root)
    assert _validate_files(root) == 2
    err = capsys.readouterr().err
    assert "scorer 'cud'" in err and "--allow-unverified-holdout" in err
    assert not (root / "out" / "validation" / "correlations.csv").exists()

    assert _validate_files(root, "--allow-unverified-holdout") == 0
    folder = root / "out" / "validation"
    csvs = sorted(folder.glob("*.csv"))
    assert {p.name for p in csvs} >= {"correlations.csv", "reliability.csv",
                                      "scorer_correlations.csv"}
    for path in csvs:
        assert (pd.read_csv(path)["unverified_holdout"] == "cud").all(), path.name
    for path in folder.glob("*.md"):
        assert path.read_text().startswith("Unverified holdout: the anchor-fit samples of cud"), \
            path.name
    assert (pd.read_csv(folder / "correlations.csv").n == 12).all()
    recorded = json.loads((folder / "config.json").read_text())["options"]
    assert recorded["unverified_holdout"] == ["cud"]


def test_an_anchors_file_changed_since_scoring_proves_nothing(tmp_path, capsys):
    root = tmp_path / "run"
    _anchor_run(root)
    (root / "scorers.json").write_text(json.dumps({"cud": {
        "name": "cud", "uses_anchors": True, "anchors": str(root / "anchors.json"),
        "anchor_method": "combined",
        "anchor_sets": {"combined": {"easy": ["s1"], "hard": ["s7"]}}}}))
    assert _validate_files(root) == 2
    assert "no longer holds the anchor sets" in capsys.readouterr().err
    (root / "scorers.json").write_text(json.dumps({"cud": {"uses_anchors": True}}))
    assert _validate_files(root) == 2
    assert "neither anchor_fit_ids nor an anchors file" in capsys.readouterr().err


def _seed_run(root):
    """npo under seeds 0, 1 and 2 (unlearn/npo/seed<s>/), graddiff once with seed 3."""
    rng = np.random.default_rng(4)
    for seed in range(3):
        folder = root / "unlearn" / "npo" / f"seed{seed}"
        folder.mkdir(parents=True)
        noisy = np.clip(EFFICACY_A + rng.normal(0, 0.1, 12), 0, 1)
        _outcomes(noisy).to_parquet(folder / "outcomes.parquet")
    (root / "unlearn" / "graddiff").mkdir(parents=True)
    _outcomes(EFFICACY_B).to_parquet(root / "unlearn" / "graddiff" / "outcomes.parquet")
    (root / "unlearn" / "graddiff" / "summary.json").write_text(
        json.dumps({"settings": {"seed": 3}}))
    _scores({"mrd": rng.normal(size=12), "loss": -EFFICACY_A}).to_parquet(root / "scores.parquet")


def test_read_method_outcomes_reads_both_layouts(tmp_path):
    _seed_run(tmp_path)
    found = read_method_outcomes(tmp_path)
    assert {m: sorted(s) for m, s in found.items()} == {"graddiff": [3], "npo": [0, 1, 2]}
    assert found["graddiff"][3].efficacy.tolist() == pytest.approx(EFFICACY_B.tolist())
    _outcomes(EFFICACY_A).to_parquet(tmp_path / "unlearn" / "npo" / "outcomes.parquet")
    with pytest.raises(DataError, match=r"both outcomes\.parquet and seed"):
        read_method_outcomes(tmp_path)


def test_cli_writes_the_reliability_table_of_a_seeded_run(tmp_path, capsys):
    _seed_run(tmp_path)
    assert main(["validate", "--run", str(tmp_path), "--n-boot", "100"]) == 0
    folder = tmp_path / "validation"
    table = pd.read_csv(folder / "reliability.csv")
    npo = table[(table.method == "npo") & (table.kind == "ceiling")].iloc[0]
    per_seed = seed_difficulty(read_method_outcomes(tmp_path)["npo"]).to_numpy()
    r = np.mean([stats.spearmanr(per_seed[:, a], per_seed[:, b]).statistic
                 for a, b in [(0, 1), (0, 2), (1, 2)]])
    assert npo.n_seeds == 3 and npo.reliability == pytest.approx(3 * r / (1 + 2 * r))
    assert npo.ceiling == pytest.approx(np.sqrt(3 * r / (1 + 2 * r)))
    assert npo.ceiling_low < npo.ceiling < npo.ceiling_high
    assert sorted(table[(table.method == "npo") & (table.kind == "seed_pair")]["item"]) == [
        "0-1", "0-2", "1-2"]
    graddiff = table[(table.method == "graddiff") & (table.kind == "ceiling")].iloc[0]
    assert np.isnan(graddiff.ceiling) and "one seed (3)" in graddiff.note
    assert "ceiling are unknown" in (folder / "reliability.md").read_text()
    correlations = pd.read_csv(folder / "correlations.csv").set_index(["scorer", "method"])
    assert correlations.loc[("loss", "npo"), "ceiling"] == pytest.approx(npo.ceiling)
    assert np.isnan(correlations.loc[("loss", "graddiff"), "ceiling"])

    out = tmp_path / "files"
    seeds = [str(tmp_path / "unlearn" / "npo" / f"seed{s}" / "outcomes.parquet") for s in (0, 2)]
    assert main(["validate", "--scores", str(tmp_path / "scores.parquet"), "--outcomes",
                 *seeds, str(tmp_path / "unlearn" / "graddiff"), "--out", str(out),
                 "--n-boot", "50"]) == 0
    by_files = pd.read_csv(out / "validation" / "reliability.csv")
    assert set(by_files[by_files.kind == "seed_pair"]["item"]) == {"0-2"}
    assert json.loads((out / "validation" / "config.json").read_text())["options"][
        "methods"] == {"npo": [0, 2], "graddiff": [3]}
    capsys.readouterr()
    assert main(["validate", "--scores", str(tmp_path / "scores.parquet"), "--outcomes",
                 seeds[0], seeds[0], "--out", str(out)]) == 2
    assert "seed 0 given twice" in capsys.readouterr().err

"""The learned difficulty predictor: recovery, no leakage from held-out rows, the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn.pipeline import Pipeline

from unlearnscope.anchors import AnchorSets, write_anchors
from unlearnscope.circuits.analysis import circuit_statistics
from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.store import CircuitStore, ShardWriter, write_header, write_index
from unlearnscope.cli import main
from unlearnscope.errors import DataError
from unlearnscope.evaluation.prediction import (
    PREDICTION_COLUMNS,
    RankTransformer,
    circuit_features,
    feature_table,
    predict_difficulty,
    prediction_markdown,
    prediction_summary,
    run_outcomes,
)
from unlearnscope.scoring import SCORERS
from unlearnscope.scoring.base import Scorer

N = 120
IDS = [f"s{i:03d}" for i in range(N)]
FIT = IDS[::2]
HELD = [i for i in IDS if i not in FIT]


def _world(seed=0, n=N):
    """Two informative features (difficulty = x1 + tanh(2 x2)), three noise features."""
    rng = np.random.default_rng(seed)
    features = {name: rng.normal(size=n) for name in ("x1", "x2", "noise0", "noise1", "noise2")}
    difficulty = features["x1"] + np.tanh(2 * features["x2"])
    return features, difficulty


def _scores(features, ids=IDS):
    return pd.DataFrame([(i, name, float(v), float(v)) for name, values in features.items()
                         for i, v in zip(ids, values, strict=True)],
                        columns=["sample_id", "scorer", "value", "difficulty"])


def _outcomes(difficulty, ids=IDS):
    return pd.DataFrame({"sample_id": ids, "efficacy": -np.asarray(difficulty)})


def test_rank_transformer_gives_mid_ranks_of_the_fitted_rows():
    fitted = np.array([[3.0], [1.0], [2.0], [2.0]])
    transform = RankTransformer().fit(fitted)
    # average ranks 4, 1, 2.5, 2.5 -> (rank - 1/2) / 4
    assert transform.transform(fitted)[:, 0].tolist() == [0.875, 0.125, 0.5, 0.5]
    assert transform.transform(np.array([[0.0], [1.5], [9.0]]))[:, 0].tolist() == \
        [0.0, 0.25, 1.0]


def test_recovers_a_ranking_of_two_features_on_held_out_samples():
    features, difficulty = _world()
    result = predict_difficulty(_scores(features), {"npo": _outcomes(difficulty)}, FIT,
                                methods=["npo"], n_boot=200, n_repeats=3)
    row = result.table[result.table.scorer == "predicted:npo"].iloc[0]
    assert row.kind == "predictor" and row.n == len(HELD)
    assert row.spearman > 0.9
    assert row.spearman_low < row.spearman < row.spearman_high
    singles = result.table[result.table.kind == "scorer"].set_index("scorer")
    assert row.spearman > singles.spearman.max() + 0.1  # better than either feature alone
    fit = np.isin(IDS, FIT)
    assert singles.loc["x1", "fit_spearman"] == pytest.approx(
        stats.spearmanr(features["x1"][fit], difficulty[fit]).statistic, abs=1e-12)
    assert singles.loc["x1", "spearman"] == pytest.approx(
        stats.spearmanr(features["x1"][~fit], difficulty[~fit]).statistic, abs=1e-12)
    summary = prediction_summary(result.table).iloc[0]
    assert summary.best_scorer == summary.fit_best_scorer == "x1"
    assert summary.predictor_spearman.startswith(f"{row.spearman:.3f} [")
    assert summary.best_control == ""
    top = result.importance.sort_values("importance_mean", ascending=False).feature
    assert set(top[:2]) == {"x1", "x2"}
    assert list(result.table.columns) == PREDICTION_COLUMNS
    assert set(result.selection.family) == {"ridge", "gbm"}
    assert result.selection.chosen.sum() == 1
    predicted = result.predicted
    assert sorted(predicted.sample_id) == IDS and set(predicted.scorer) == {"predicted:npo"}
    assert (predicted.value == predicted.difficulty).all()


def test_poisoned_held_out_outcomes_change_no_prediction():
    features, difficulty = _world()
    poisoned = difficulty.copy()
    held = np.isin(IDS, HELD)
    poisoned[held] = np.random.default_rng(9).permutation(poisoned[held]) * -3 + 7
    runs = [predict_difficulty(_scores(features), {"npo": _outcomes(d)}, FIT, methods=["npo"],
                               n_boot=50, n_repeats=2) for d in (difficulty, poisoned)]
    pd.testing.assert_frame_equal(runs[0].predicted, runs[1].predicted, check_exact=True)
    pd.testing.assert_frame_equal(runs[0].selection, runs[1].selection, check_exact=True)
    assert runs[0].table.spearman.iloc[0] != runs[1].table.spearman.iloc[0]


def test_cross_validation_never_sees_held_out_rows(monkeypatch):
    features, difficulty = _world()
    scores = _scores(features)
    seen = []
    original = Pipeline.fit

    def spy(self, X, y=None, **kwargs):
        seen.append(np.asarray(X).copy())
        return original(self, X, y, **kwargs)

    monkeypatch.setattr(Pipeline, "fit", spy)
    result = predict_difficulty(scores, {"npo": _outcomes(difficulty)}, FIT, methods=["npo"],
                                n_boot=20, n_repeats=2)
    fit_rows = {tuple(r) for r in feature_table(scores, FIT)[0].loc[FIT].to_numpy()}
    assert seen and all(tuple(r) in fit_rows for X in seen for r in X)
    # changing held-out features changes neither the selection nor the fit half's values
    moved = {k: np.where(np.isin(IDS, HELD), v * 5 + 1, v) for k, v in features.items()}
    again = predict_difficulty(_scores(moved), {"npo": _outcomes(difficulty)}, FIT,
                               methods=["npo"], n_boot=20, n_repeats=2)
    pd.testing.assert_frame_equal(result.selection, again.selection, check_exact=True)
    on_fit = [p[p.sample_id.isin(FIT)].reset_index(drop=True)
              for p in (result.predicted, again.predicted)]
    pd.testing.assert_frame_equal(*on_fit, check_exact=True)


class _AnchorScorer(Scorer):
    name = "fake_cud"
    higher_is_harder = True
    uses_anchors = True

    def score(self, model, tokenizer, samples, encoded, *, batch_size):
        raise NotImplementedError


def test_anchor_scorers_only_with_anchors_from_the_fit_half(monkeypatch):
    monkeypatch.setitem(SCORERS, "fake_cud", _AnchorScorer)
    features, difficulty = _world()
    features = {**features, "fake_cud": difficulty, "fake_cud:npo": difficulty,
                "predicted:npo": difficulty}
    scores = _scores(features)
    kept, dropped = feature_table(scores, FIT, anchor_fit_ids=FIT[:10])
    assert {"fake_cud", "fake_cud:npo"} <= set(kept.columns)
    assert set(dropped) == {"predicted:npo"}
    for anchors, reason in ((FIT[:10] + HELD[:1], "outside the fit half"),
                            (None, "no anchors file")):
        kept, dropped = feature_table(scores, FIT, anchor_fit_ids=anchors)
        assert "fake_cud" not in kept.columns and reason in dropped["fake_cud"]
        assert reason in dropped["fake_cud:npo"]
    result = predict_difficulty(scores, {"npo": _outcomes(difficulty)}, FIT, methods=["npo"],
                                anchor_fit_ids=IDS, n_boot=20, n_repeats=2)
    assert "fake_cud" in result.dropped and "fake_cud" not in result.features
    inside = predict_difficulty(scores, {"npo": _outcomes(difficulty)}, FIT, methods=["npo"],
                                anchor_fit_ids=FIT, n_boot=20, n_repeats=2)
    assert "fake_cud" in inside.features
    row = inside.table.set_index("scorer").loc["fake_cud"]
    assert row.spearman == pytest.approx(1.0) and np.isnan(row.fit_spearman)  # in-sample
    kept, dropped = feature_table(scores, FIT, anchor_fit_ids=FIT, use_anchor_scorers=False)
    assert "fake_cud" not in kept.columns and "on request" in dropped["fake_cud"]
    assert "fake_cud" not in set(result.table.scorer)  # its figure would not be held out
    assert "x1" in set(result.table.scorer)
    assert "fake_cud" in prediction_markdown(result)


def test_features_constant_or_absent_on_the_fit_half_are_dropped():
    features, _ = _world()
    const = np.where(np.isin(IDS, FIT), 1.0, np.arange(N))
    scores = _scores({**features, "const": const})
    scores = pd.concat([scores, _scores({"held_only": np.ones(len(HELD))}, HELD)])
    kept, dropped = feature_table(scores, FIT)
    assert dropped == {"const": "constant on the fit half",
                       "held_only": "no value on the fit half"}
    assert list(kept.columns) == ["x1", "x2", "noise0", "noise1", "noise2"]


def test_only_measured_samples_predictions_without_evaluation():
    features, difficulty = _world()
    measured = IDS[:24]  # the story: 20% measured, rank the other 80%
    outcomes = {"npo": _outcomes(difficulty[:24], measured),
                "grad_diff": _outcomes(difficulty[:24] * 2, measured)}
    result = predict_difficulty(_scores(features), outcomes, measured, n_boot=20)
    assert result.table.empty and result.cross_method.empty and result.importance.empty
    assert set(result.predicted.scorer) == {"predicted:npo", "predicted:grad_diff",
                                            "predicted:mean"}
    assert len(result.predicted) == 3 * N
    held = result.predicted[~result.predicted.sample_id.isin(measured)]
    truth = pd.Series(difficulty, index=IDS)
    npo = held[held.scorer == "predicted:npo"].set_index("sample_id").value
    assert np.corrcoef(npo.rank(), truth[npo.index].rank())[0, 1] > 0.7
    assert "predictions only" in prediction_markdown(result)
    with pytest.raises(DataError, match="at least 6"):
        predict_difficulty(_scores(features), outcomes, measured[:5], n_boot=20)
    with pytest.raises(DataError, match="lack an outcome"):
        predict_difficulty(_scores(features), outcomes, IDS[20:30], n_boot=20)


def test_circuit_features_are_the_circuit_statistics(tmp_path):
    layout = GraphLayout(2, 2)
    write_header(tmp_path, {"model": "tiny", "n_layers": 2, "n_heads": 2, "d_model": 8,
                            "method": "EAP-IG-inputs", "ig_steps": 2, "baseline": "zero",
                            "rule": "left", "metric": "answer_logprob"})
    scores = torch.randn(3, layout.n_forward, layout.n_backward,
                         generator=torch.Generator().manual_seed(0)) * layout.real_edge_mask
    writer = ShardWriter(tmp_path, layout)
    writer.add(["a", "b", "c"], scores)
    writer.close()
    write_index(tmp_path)
    table = circuit_features(tmp_path, ["c", "missing", "a"], top_n=6)
    store = CircuitStore.open(tmp_path)
    expected = circuit_statistics(store.circuits(["c", "a"], "topn", n=6), layout, ["c", "a"])
    assert list(table.index) == ["c", "missing", "a"]
    assert table.columns[0] == "circuit:n_edges"
    np.testing.assert_array_equal(table.loc[["c", "a"]].to_numpy(),
                                  expected.drop(columns="sample_id").to_numpy())
    assert table.loc["missing"].isna().all()


def _run_folder(folder, ids, features, difficulty, fit, held):
    """scores.parquet, unlearn/{npo,grad_diff}/outcomes.parquet, anchors/anchors.json."""
    folder.mkdir(parents=True)
    _scores(features, ids).to_parquet(folder / "scores.parquet", index=False)
    for method, scale in (("npo", 1.0), ("grad_diff", 0.5)):
        path = folder / "unlearn" / method / "outcomes.parquet"
        path.parent.mkdir(parents=True)
        _outcomes(difficulty * scale, ids).to_parquet(path, index=False)
    write_anchors(folder / "anchors", AnchorSets(method="vote", k=2, easy=fit[:2],
                                                 hard=fit[2:4], fit_ids=fit, held_out_ids=held))


def test_cli_writes_tables_and_predicted_scores(tmp_path, capsys):
    features, difficulty = _world(n=40)
    features["answer_length"] = np.arange(40.0) % 7
    ids = IDS[:40]
    fit, held = ids[::2], ids[1::2]
    run = tmp_path / "run"
    _run_folder(run, ids, features, difficulty, fit, held)
    n_scores = len(pd.read_parquet(run / "scores.parquet"))
    assert main(["predict", "--run", str(run), "--n-boot", "50", "--n-repeats", "2",
                 "--merge"]) == 0
    table = pd.read_csv(run / "validation" / "prediction.csv")
    assert set(table.method) == {"npo", "grad_diff", "mean"}
    assert (table[table.kind == "predictor"].n == len(held)).all()
    kinds = table.drop_duplicates("scorer").set_index("scorer").kind
    assert kinds["answer_length"] == "control" and kinds["x1"] == "scorer"
    summary = pd.read_csv(run / "validation" / "prediction_summary.csv")
    assert set(summary.best_control) == {"answer_length"} and len(summary) == 3
    assert "## Cross-method" in (run / "validation" / "prediction.md").read_text()
    cross = pd.read_csv(run / "validation" / "prediction_cross_method.csv")
    assert len(cross) == 9
    predicted = pd.read_parquet(run / "predicted.parquet")
    assert set(predicted.scorer) == {"predicted:npo", "predicted:grad_diff", "predicted:mean"}
    merged = pd.read_parquet(run / "scores.parquet")
    assert len(merged) == n_scores + len(predicted)
    assert json.loads((run / "validation" / "prediction" / "config.json").read_text())[
        "command"] == "predict"
    # again: earlier predictions are replaced, not used as features
    assert main(["predict", "--run", str(run), "--n-boot", "20", "--n-repeats", "1",
                 "--merge", "--no-circuits", "--methods", "npo"]) == 0
    again = pd.read_parquet(run / "scores.parquet")
    assert len(again) == n_scores + len(predicted) // 3
    assert set(again.scorer) == {*features, "predicted:npo"}
    # fitting on ids validation holds out: merging is refused, writing elsewhere is not
    (tmp_path / "ids.txt").write_text("\n".join(held[:10]) + "\n")
    capsys.readouterr()
    assert main(["predict", "--run", str(run), "--fit-ids", str(tmp_path / "ids.txt"),
                 "--n-boot", "20", "--n-repeats", "1", "--merge", "--methods", "npo"]) == 2
    assert "held out by validation" in capsys.readouterr().err
    assert set(pd.read_csv(run / "validation" / "prediction.csv").method) == {"npo"}
    assert pd.read_csv(run / "validation" / "prediction.csv").n.max() == len(held)
    assert main(["predict", "--run", str(run), "--fit-ids", str(tmp_path / "ids.txt"),
                 "--n-boot", "20", "--n-repeats", "1", "--out", str(tmp_path / "other"),
                 "--methods", "npo"]) == 0
    other = pd.read_csv(tmp_path / "other" / "validation" / "prediction.csv")
    assert (other[other.kind == "predictor"].n == 30).all()


def test_cli_fit_measured_ranks_the_unmeasured(tmp_path):
    features, difficulty = _world(n=40)
    ids = IDS[:40]
    run = tmp_path / "run"
    run.mkdir()
    _scores(features, ids).to_parquet(run / "scores.parquet", index=False)
    path = run / "unlearn" / "npo" / "outcomes.parquet"
    path.parent.mkdir(parents=True)
    _outcomes(difficulty[:10], ids[:10]).to_parquet(path, index=False)
    assert main(["predict", "--run", str(run), "--fit-measured", "--n-boot", "20"]) == 0
    predicted = pd.read_parquet(run / "predicted.parquet")
    assert len(predicted[predicted.scorer == "predicted:npo"]) == 40
    assert pd.read_csv(run / "validation" / "prediction.csv").empty


def test_a_method_run_under_several_seeds_is_read_as_its_seed_mean(tmp_path):
    _, difficulty = _world(n=12)
    ids = IDS[:12]
    for seed, shift in ((0, 0.0), (1, 0.2)):
        path = tmp_path / "unlearn" / "npo" / f"seed{seed}" / "outcomes.parquet"
        path.parent.mkdir(parents=True)
        _outcomes(difficulty + shift, ids).to_parquet(path, index=False)
    path = tmp_path / "unlearn" / "rmu" / "outcomes.parquet"
    path.parent.mkdir(parents=True)
    _outcomes(difficulty, ids).to_parquet(path, index=False)
    found = run_outcomes(tmp_path)
    assert set(found) == {"npo", "rmu"}
    seeds = [pd.read_parquet(tmp_path / "unlearn" / "npo" / f"seed{s}" / "outcomes.parquet")
             for s in (0, 1)]
    np.testing.assert_allclose(found["npo"]["efficacy"].to_numpy(),
                               (seeds[0].efficacy.to_numpy() + seeds[1].efficacy.to_numpy()) / 2)
    assert list(found["npo"]["sample_id"]) == ids

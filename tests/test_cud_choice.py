"""Choosing a CUD configuration on the fit half only, reported on the held-out half."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from cud_runs import LAYOUT, outcome, write_run, write_store
from unlearnscope.anchors.vote import vote_anchors
from unlearnscope.circuits.store import CircuitStore
from unlearnscope.cli import main
from unlearnscope.errors import DataError
from unlearnscope.evaluation.anchored_cud import Halves, StoreCud, seed_mean, vote_sets
from unlearnscope.evaluation.cud_choice import (
    SCORES_SOURCE,
    CudConfig,
    ScoredCandidate,
    candidate_grid,
    choose_cud,
    criterion_check,
    fit_folds,
    fold_k,
    scored_candidates,
    write_cud_choice,
)
from unlearnscope.evaluation.validation import bootstrap_spearman_interval, measured_difficulty
from unlearnscope.runs import read_json, write_json, write_parquet
from unlearnscope.scoring.cud import anchor_aggregate, cud_from_aggregates

N_BOOT = 200
METHODS = ("grad_diff", "npo", "rmu")


def setup(tmp_path: Path, n: int = 30):
    rng = np.random.default_rng(11)
    ids = [f"s{i:02d}" for i in range(n)]
    latent = rng.normal(size=n)
    scores = torch.tensor(rng.normal(size=(n, LAYOUT.n_edges)), dtype=torch.float32)
    scores[:, :8] += torch.tensor(latent, dtype=torch.float32)[:, None] * torch.linspace(
        0.2, 2.0, 8)
    store = write_store(tmp_path / "store", ids, scores)
    outcomes = {m: {s: outcome(ids, 1 / (1 + np.exp(latent + rng.normal(0, 1, n))),
                               rng.normal(size=n)) for s in (0, 1)} for m in METHODS}
    halves = Halves(ids[: n // 2], ids[n // 2:], 3, "test")
    return store, outcomes, halves


def grid() -> list[CudConfig]:
    return candidate_grid((12, 24, 0.5), anchor_methods=("combined", "mean", "npo"))


def test_held_out_outcomes_never_change_the_choice(tmp_path):
    store, outcomes, halves = setup(tmp_path)
    cud = StoreCud(store, halves.fit_ids + halves.held_out_ids)
    candidates = grid()
    clean = choose_cud(outcomes, cud, halves, candidates, n_boot=N_BOOT).table
    # poison: every held-out outcome set so that a candidate far down on the fit half (its
    # CUD distinct on every held-out sample) is perfect on the held-out half, which a choice
    # that peeked would pick
    held = halves.held_out_ids
    tables = {m: seed_mean(s) for m, s in outcomes.items()}
    for index in np.argsort(clean["fit_cv_spearman"].to_numpy(), kind="stable"):
        planted_config = candidates[index]
        planted = cud.values(vote_sets(tables, halves.fit_ids, halves.k,
                                       planted_config.anchor_method), held,
                             top_n=planted_config.top_n, vector=planted_config.vector,
                             similarity=planted_config.similarity)
        if len(set(planted)) == len(held):
            break
    assert clean.loc[index, "fit_cv_spearman"] < clean["fit_cv_spearman"].max()
    rng = np.random.default_rng(0)
    poisoned = {}
    for method, seeds in outcomes.items():
        poisoned[method] = {}
        for seed, table in seeds.items():
            table = table.set_index("sample_id")
            table.loc[held, "efficacy"] = 1 - planted
            table.loc[held, "delta_loss"] = rng.normal(size=len(held))
            poisoned[method][seed] = table.reset_index()
    truth = measured_difficulty({m: seed_mean(s) for m, s in poisoned.items()},
                                exclude_ids=halves.fit_ids)["mean"]
    assert stats.spearmanr(planted, truth.loc[held]).statistic == pytest.approx(1.0)
    dirty = choose_cud(poisoned, cud, halves, candidates, n_boot=N_BOOT).table
    assert dirty.loc[index, "held_out_spearman"] == pytest.approx(1.0)
    for column in ("fit_cv_spearman", "fit_in_sample_spearman", "fit_n", "fit_cv_folds"):
        pd.testing.assert_series_equal(clean[column], dirty[column])
    chosen = clean["chosen"].to_numpy()
    assert dirty["chosen"].tolist() == chosen.tolist()
    assert clean.loc[chosen, "held_out_spearman"].item() != \
        dirty.loc[chosen, "held_out_spearman"].item()


def test_choice_is_the_best_cross_fitted_score_and_matches_a_direct_computation(tmp_path):
    store, outcomes, halves = setup(tmp_path)
    cud = StoreCud(store, halves.fit_ids + halves.held_out_ids)
    candidates = grid()
    choice = choose_cud(outcomes, cud, halves, candidates, n_boot=N_BOOT, seed=3, fold_seed=4)
    table = choice.table
    assert len(table) == len(candidates) == 3 * 2 * 3 * 3
    tables = {m: seed_mean(seeds) for m, seeds in outcomes.items()}
    everything = set(halves.fit_ids + halves.held_out_ids)
    # 15 fit samples: 5 folds of 3; each fold's anchors voted on the other 12 with
    # k = round(3 * 12 / 15) = 2
    folds = choice.folds
    assert folds == fit_folds(halves.fit_ids, 5, 4) and [len(f) for f in folds] == [3] * 5
    assert choice.fold_k == 2

    def lists(vote) -> dict[str, list[dict]]:
        return {"combined": [{"easy": vote.easy, "hard": vote.hard}],
                "mean": list(vote.per_method.values()), "npo": [vote.per_method["npo"]]}

    stored = dict(zip(store.sample_ids, store.edge_scores(store.sample_ids), strict=True))

    def edges(ids: list[str]) -> torch.Tensor:
        return torch.stack([stored[i] for i in ids])

    def values(sets: list[dict], config: CudConfig, ids: list[str]) -> np.ndarray:
        easy = anchor_aggregate([edges(s["easy"]) for s in sets])
        hard = anchor_aggregate([edges(s["hard"]) for s in sets])
        return cud_from_aggregates(edges(ids), easy, hard, top_n=config.top_n,
                                   similarity=config.similarity, vector=config.vector,
                                   layout=store.layout).numpy()

    @functools.cache
    def ranked(ids: tuple[str, ...]) -> pd.Series:
        return measured_difficulty(tables, exclude_ids=everything - set(ids))["mean"].loc[
            list(ids)]

    def difficulty(ids: list[str]) -> pd.Series:
        return ranked(tuple(ids))

    fold_lists = [lists(vote_anchors(tables, 2, sample_ids=[i for i in halves.fit_ids
                                                             if i not in fold]))
                  for fold in folds]
    whole = lists(vote_anchors(tables, halves.k, sample_ids=halves.fit_ids))
    cross_fitted, in_sample = [], []
    for config in candidates:
        rhos = []
        for fold, by_method in zip(folds, fold_lists, strict=True):
            x = values(by_method[config.anchor_method], config, fold)
            rhos.append(stats.spearmanr(x, difficulty(fold)).statistic if np.ptp(x) > 0
                        else 0.0)
        cross_fitted.append(np.mean(rhos))
        x = values(whole[config.anchor_method], config, halves.fit_ids)
        in_sample.append(stats.spearmanr(x, difficulty(halves.fit_ids)).statistic
                         if np.ptp(x) > 0 else np.nan)
    np.testing.assert_allclose(table["fit_cv_spearman"], cross_fitted, rtol=0, atol=1e-12)
    np.testing.assert_allclose(table["fit_in_sample_spearman"], in_sample, rtol=0, atol=1e-12)
    assert (table["fit_cv_folds"] == 5).all() and (table["fit_n"] == 15).all()
    best = int(np.argmax(cross_fitted))
    assert table["chosen"].tolist() == [i == best for i in range(len(candidates))]
    held = []
    for config in candidates:
        x = values(whole[config.anchor_method], config, halves.held_out_ids)
        held.append(stats.spearmanr(x, difficulty(halves.held_out_ids)).statistic
                    if np.ptp(x) > 0 else np.nan)
    np.testing.assert_allclose(table["held_out_spearman"], held, rtol=0, atol=1e-12)
    assert (table["held_out_n"] == 15).all()
    x = values(whole[candidates[best].anchor_method], candidates[best], halves.held_out_ids)
    row = table.loc[best]
    assert (row["held_out_low"], row["held_out_high"]) == pytest.approx(
        bootstrap_spearman_interval(x, difficulty(halves.held_out_ids).to_numpy(),
                                    n_boot=N_BOOT, seed=3))
    assert table.loc[table.index != best, ["held_out_low", "held_out_high"]].isna().all().all()


def test_folds_partition_the_fit_half_by_seed_whatever_its_order():
    ids = [f"s{i:02d}" for i in range(17)]
    folds = fit_folds(ids, 5, seed=7)
    assert sorted(len(f) for f in folds) == [3, 3, 3, 4, 4]
    assert sorted(i for f in folds for i in f) == ids
    assert all(f == [i for i in ids if i in f] for f in folds)
    shuffled = list(reversed(ids))
    again = fit_folds(shuffled, 5, seed=7)
    assert [sorted(f) for f in again] == [sorted(f) for f in folds]
    assert fit_folds(ids, 5, seed=8) != folds
    # the folds are consecutive parts of the seeded permutation of the sorted ids
    order = np.random.default_rng(7).permutation(17)
    assert sorted(folds[0]) == sorted(ids[j] for j in order[:4])
    assert [len(f) for f in fit_folds(ids[:8], 5)] == [4, 4]  # K lowered to 8 // 3 = 2
    with pytest.raises(DataError, match="2 folds of at least 3"):
        fit_folds(ids[:5], 5)
    with pytest.raises(DataError, match="at least 2 folds"):
        fit_folds(ids, 1)
    assert [fold_k(4, 16, 20), fold_k(3, 12, 15), fold_k(5, 10, 20), fold_k(1, 2, 20)] == \
        [3, 2, 3, 1]  # 3.2, 2.4, 2.5 (halves up), 0.1 (at least 1)


class MemorizingCud:
    """CUD without circuits for two configurations: `top_n=1` only memorizes its anchors
    (0 for every easy anchor, 1 for every hard one, a fixed value in (0.4, 0.6) for any other
    sample); `top_n=2` is `informative`, the same for any anchors."""

    def __init__(self, ids: list[str], informative: np.ndarray, seed: int) -> None:
        self.position = {i: n for n, i in enumerate(ids)}
        self.informative = informative
        self.middle = np.random.default_rng(seed).uniform(0.4, 0.6, len(ids))

    def values(self, anchor_sets, ids, *, top_n, vector, similarity) -> np.ndarray:
        rows = [self.position[i] for i in ids]
        if top_n == 2:
            return self.informative[rows]
        easy = {i for lists in anchor_sets.values() for i in lists["easy"]}
        hard = {i for lists in anchor_sets.values() for i in lists["hard"]}
        return np.array([0.0 if i in easy else 1.0 if i in hard else self.middle[r]
                         for i, r in zip(ids, rows, strict=True)])


def test_a_configuration_that_memorizes_its_anchors_wins_in_sample_but_not_cross_fitted():
    rng = np.random.default_rng(5)
    n = 120
    ids = [f"s{i:03d}" for i in range(n)]
    latent = rng.normal(size=n)
    outcomes = {m: {0: outcome(ids, 1 / (1 + np.exp(latent + rng.normal(0, 0.3, n))),
                               rng.normal(size=n))} for m in ("npo", "rmu")}
    halves = Halves(ids[::2], ids[1::2], 12, "test")
    cud = MemorizingCud(ids, latent + rng.normal(0, 1.0, n), seed=6)
    memorizer, informative = (CudConfig(1, "binary", "cosine", "combined"),
                              CudConfig(2, "binary", "cosine", "combined"))
    table = choose_cud(outcomes, cud, halves, [memorizer, informative], n_boot=N_BOOT).table
    mem, info = table.iloc[0], table.iloc[1]
    # in sample, the memorizer's anchors (a fifth of the fit half at each end) are placed
    # right, and that beats a configuration that ranks every sample moderately well
    assert mem["fit_in_sample_spearman"] > info["fit_in_sample_spearman"] + 0.1
    # cross-fitted, no fold sample is an anchor of its fold's vote: the memorizer ranks noise
    assert abs(mem["fit_cv_spearman"]) < 0.25 < 0.45 < info["fit_cv_spearman"]
    assert table["chosen"].tolist() == [False, True]
    assert abs(mem["held_out_spearman"]) < 0.25 < 0.45 < info["held_out_spearman"]
    check = criterion_check(table)
    assert check["n"] == check["n_in_sample"] == 2


def test_criterion_check_is_a_spearman_over_candidates():
    table = pd.DataFrame({"fit_cv_spearman": [0.1, 0.5, 0.3, np.nan, 0.2],
                          "fit_in_sample_spearman": [0.9, 0.2, 0.4, 0.8, np.nan],
                          "held_out_spearman": [0.0, 0.4, 0.3, 0.1, np.nan]})
    check = criterion_check(table)
    # cross-fitted vs held-out on rows 0-2: ranks (1, 3, 2) and (1, 3, 2)
    assert check["n"] == 3 and check["cv_vs_held_out"] == pytest.approx(1.0)
    # in-sample vs held-out on rows 0-3: ranks (4, 1, 2, 3) and (1, 4, 3, 2)
    assert check["n_in_sample"] == 4
    assert check["in_sample_vs_held_out"] == pytest.approx(
        1 - 6 * (9 + 9 + 1 + 1) / (4 * 15))


def test_scored_candidates_are_scored_on_the_fit_samples_outside_their_anchors(tmp_path):
    store, outcomes, halves = setup(tmp_path)
    cud = StoreCud(store, halves.fit_ids + halves.held_out_ids)
    tables = {m: seed_mean(seeds) for m, seeds in outcomes.items()}
    truth = measured_difficulty(tables)["npo"]  # one method: ranks need no re-ranking
    anchored = halves.fit_ids[:10]
    # right on its anchors' fit samples and the held-out half, reversed on the 5 others
    paper = truth.copy()
    paper.loc[halves.fit_ids[10:]] *= -1
    scored = [ScoredCandidate("cud_paper", paper, anchored, {"top_n": 75}),
              ScoredCandidate("cud_perfect", truth, anchored, {}),
              ScoredCandidate("cud_whole", truth, halves.fit_ids, {}),
              ScoredCandidate("cud_leaky", truth, halves.fit_ids + halves.held_out_ids[:1], {}),
              ScoredCandidate("cud_unknown", truth, None, {})]
    table = choose_cud(outcomes, cud, halves, grid()[:4], scored=scored, target="npo",
                       n_boot=N_BOOT).table
    rows = table.set_index("candidate")
    assert rows.loc["cud_paper", "fit_cv_spearman"] == pytest.approx(-1.0)
    assert rows.loc["cud_paper", "fit_n"] == 5 and rows.loc["cud_paper", "fit_cv_folds"] == 0
    assert rows.loc["cud_paper", "fit_in_sample_spearman"] == pytest.approx(stats.spearmanr(
        paper.loc[halves.fit_ids], truth.loc[halves.fit_ids]).statistic)
    assert "scored on the 5 other fit samples" in rows.loc["cud_paper", "note"]
    assert rows.loc["cud_paper", "top_n"] == 75 and rows.loc["cud_paper", "source"] == \
        SCORES_SOURCE
    assert bool(rows.loc["cud_perfect", "chosen"]) and table["chosen"].sum() == 1
    assert rows.loc["cud_perfect", "fit_cv_spearman"] == pytest.approx(1.0)
    assert rows.loc["cud_perfect", "held_out_spearman"] == pytest.approx(1.0)
    assert rows.loc["cud_perfect", "held_out_n"] == 15
    # anchors voted on the whole fit half: in sample only, never chosen; held out is clean
    assert "0 fit sample(s) outside its anchors' fit samples" in rows.loc["cud_whole", "note"]
    assert np.isnan(rows.loc["cud_whole", "fit_cv_spearman"])
    assert rows.loc["cud_whole", "fit_in_sample_spearman"] == pytest.approx(1.0)
    assert rows.loc["cud_whole", "held_out_spearman"] == pytest.approx(1.0)
    assert "1 sample(s) outside the fit half" in rows.loc["cud_leaky", "note"]
    assert "unknown" in rows.loc["cud_unknown", "note"]
    never = rows.loc[["cud_leaky", "cud_unknown"]]
    assert never[["fit_cv_spearman", "fit_in_sample_spearman", "held_out_spearman"]] \
        .isna().all().all()
    assert not rows.loc[["cud_whole", "cud_leaky", "cud_unknown"], "chosen"].any()


def test_constant_outcomes_on_the_fit_half_are_refused(tmp_path):
    store, outcomes, halves = setup(tmp_path)
    flat = {m: {s: t.assign(efficacy=0.5, delta_loss=0.0) for s, t in seeds.items()}
            for m, seeds in outcomes.items()}
    with pytest.raises(DataError, match="no candidate"):
        choose_cud(flat, StoreCud(store, halves.fit_ids + halves.held_out_ids), halves,
                   grid()[:2], n_boot=N_BOOT)
    with pytest.raises(DataError, match="2 folds of at least 3"):
        choose_cud(outcomes, StoreCud(store, halves.fit_ids + halves.held_out_ids),
                   Halves(halves.fit_ids[:5], halves.held_out_ids, 1, "test"), grid()[:2],
                   n_boot=N_BOOT)


def test_run_folder_with_scorer_configs_and_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    ids = [f"s{i:02d}" for i in range(20)]
    scores = torch.tensor(rng.normal(size=(20, LAYOUT.n_edges)), dtype=torch.float32)
    outcomes = {m: {0: outcome(ids, rng.uniform(size=20))} for m in ("npo", "rmu", "simnpo")}
    root = write_run(tmp_path / "run", scores, ids, outcomes, per_seed=set(), fit=ids[:10],
                     held=ids[10:], k=2)
    write_json(root / "anchors" / "anchors.json", {
        **read_json(root / "anchors" / "anchors.json"),
        "options": {"methods": ["npo", "rmu"]}})
    score_rows = [{"sample_id": i, "scorer": name, "value": v, "difficulty": v}
                  for name in ("loss", "cud", "cud_paper")
                  for i, v in zip(ids, rng.normal(size=20), strict=True)]
    write_parquet(root / "scores.parquet", pd.DataFrame(score_rows))
    write_json(root / "scorers.json", {
        "cud": {"name": "cud", "anchors": str(root / "anchors" / "anchors.json"),
                "top_n": 0.05},
        "cud_paper": {"name": "cud_paper", "anchor_fit_ids": ids[5:15]}})
    found = scored_candidates(root)
    assert [c.name for c in found] == ["cud", "cud_paper"]
    assert found[0].fit_ids == ids[:10] and found[1].fit_ids == ids[5:15]

    table = write_cud_choice(root, top_n=(4, 8), n_boot=N_BOOT)
    store_rows = table[table["source"] != SCORES_SOURCE]
    assert len(store_rows) == 2 * 2 * 3 * 4  # anchors: combined, mean, npo, rmu (the voters)
    assert set(store_rows["anchor_method"]) == {"combined", "mean", "npo", "rmu"}
    rows = table.set_index("candidate")
    assert np.isfinite(rows.loc["cud", "fit_in_sample_spearman"])
    assert np.isnan(rows.loc["cud", "fit_cv_spearman"])  # its anchors: the whole fit half
    assert "outside the fit half" in rows.loc["cud_paper", "note"]
    assert (store_rows["fit_cv_folds"] == 3).all()  # 10 fit samples: K = 10 // 3
    markdown = (root / "validation" / "cud_choice.md").read_text()
    assert ("Chosen on the fit half only (the 10 fit samples of anchors/anchors.json), by a "
            "cross-fitted score: 3 folds of 3-4 samples (seed 0)") in markdown
    assert "anchors (k=1, k=2 scaled to the other folds' samples) voted on the other folds " \
        "from npo, rmu" in markdown  # round(2 * 6 / 10)
    assert markdown.count("Chosen: ") == 1
    check = criterion_check(table)
    assert f"over {check['n']} candidates, Spearman(cross-fitted fit score, held-out " \
        f"Spearman) = {check['cv_vs_held_out']:.3f}" in markdown
    config = read_json(root / "validation" / "cud_choice" / "config.json")["options"]
    assert config["fold_k"] == 1 and config["folds"] == 5
    assert sorted(i for f in config["fold_ids"] for i in f) == sorted(ids[:10])
    on_disk = pd.read_csv(root / "validation" / "cud_choice.csv")
    assert on_disk["chosen"].sum() == 1
    assert on_disk.loc[on_disk["chosen"], "candidate"].item() == \
        table.loc[table["chosen"], "candidate"].item()

    out = tmp_path / "cli"
    assert main(["validate", "cud-choice", "--run", str(root), "--cud-top-n", "4,8",
                 "--cud-similarity", "cosine", "--cud-anchor-method", "combined,npo",
                 "--cud-folds", "2", "--seed", "3", "--n-boot", str(N_BOOT), "--out",
                 str(out)]) == 0
    assert "Chosen: " in capsys.readouterr().out
    cli = pd.read_csv(out / "validation" / "cud_choice.csv")
    assert len(cli[cli["source"] != SCORES_SOURCE]) == 2 * 2 * 1 * 2
    assert (cli.loc[cli["source"] != SCORES_SOURCE, "fit_cv_folds"] == 2).all()
    options = read_json(out / "validation" / "cud_choice" / "config.json")["options"]
    assert options["fold_ids"] == fit_folds(ids[:10], 2, seed=3) and options["fold_seed"] == 3
    assert CircuitStore.open(root / "circuits").sample_ids == ids

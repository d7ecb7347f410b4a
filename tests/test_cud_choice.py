"""Choosing a CUD configuration on the fit half only, reported on the held-out half."""

from __future__ import annotations

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
    clean = choose_cud(outcomes, cud, halves, candidates, n_boot=N_BOOT)
    # poison: every held-out outcome set so that a candidate far down on the fit half (its
    # CUD distinct on every held-out sample) is perfect on the held-out half, which a choice
    # that peeked would pick
    held = halves.held_out_ids
    tables = {m: seed_mean(s) for m, s in outcomes.items()}
    for index in np.argsort(clean["fit_spearman"].to_numpy(), kind="stable"):
        planted_config = candidates[index]
        planted = cud.values(vote_sets(tables, halves.fit_ids, halves.k,
                                       planted_config.anchor_method), held,
                             top_n=planted_config.top_n, vector=planted_config.vector,
                             similarity=planted_config.similarity)
        if len(set(planted)) == len(held):
            break
    assert clean.loc[index, "fit_spearman"] < clean["fit_spearman"].max()
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
    dirty = choose_cud(poisoned, cud, halves, candidates, n_boot=N_BOOT)
    pd.testing.assert_series_equal(clean["fit_spearman"], dirty["fit_spearman"])
    chosen = clean["chosen"].to_numpy()
    assert dirty["chosen"].tolist() == chosen.tolist()
    assert clean.loc[chosen, "held_out_spearman"].item() != \
        dirty.loc[chosen, "held_out_spearman"].item()


def test_choice_is_the_best_fit_score_and_matches_a_direct_computation(tmp_path):
    store, outcomes, halves = setup(tmp_path)
    cud = StoreCud(store, halves.fit_ids + halves.held_out_ids)
    candidates = grid()
    table = choose_cud(outcomes, cud, halves, candidates, n_boot=N_BOOT, seed=3)
    assert len(table) == len(candidates) == 3 * 2 * 3 * 3
    tables = {m: seed_mean(seeds) for m, seeds in outcomes.items()}
    for part in (tables.values()):
        assert len(part) == 30
    fit_truth = measured_difficulty(tables, exclude_ids=halves.held_out_ids)["mean"]
    held_truth = measured_difficulty(tables, exclude_ids=halves.fit_ids)["mean"]
    vote = vote_anchors(tables, halves.k, sample_ids=halves.fit_ids)
    lists = {"combined": [{"easy": vote.easy, "hard": vote.hard}],
             "mean": list(vote.per_method.values()), "npo": [vote.per_method["npo"]]}

    def values(config: CudConfig, ids: list[str]) -> np.ndarray:
        sets = lists[config.anchor_method]
        easy = anchor_aggregate([store.edge_scores(s["easy"]) for s in sets])
        hard = anchor_aggregate([store.edge_scores(s["hard"]) for s in sets])
        return cud_from_aggregates(store.edge_scores(ids), easy, hard, top_n=config.top_n,
                                   similarity=config.similarity, vector=config.vector,
                                   layout=store.layout).numpy()

    def spearman(x: np.ndarray, y) -> float:
        return stats.spearmanr(x, y).statistic if np.ptp(x) > 0 else np.nan

    fit = [spearman(values(c, halves.fit_ids), fit_truth.loc[halves.fit_ids])
           for c in candidates]
    np.testing.assert_allclose(table["fit_spearman"], fit, rtol=0, atol=1e-12)
    best = int(np.nanargmax(fit))
    assert table["chosen"].tolist() == [i == best for i in range(len(candidates))]
    x = values(candidates[best], halves.held_out_ids)
    y = held_truth.loc[halves.held_out_ids].to_numpy()
    row = table.loc[best]
    assert row["held_out_spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert (row["held_out_low"], row["held_out_high"]) == pytest.approx(
        bootstrap_spearman_interval(x, y, n_boot=N_BOOT, seed=3))
    assert row["held_out_n"] == 15 and row["fit_n"] == 15
    assert table.loc[table.index != best, "held_out_spearman"].isna().all()


def test_scored_candidates_enter_only_with_anchors_fitted_inside_the_fit_half(tmp_path):
    store, outcomes, halves = setup(tmp_path)
    cud = StoreCud(store, halves.fit_ids + halves.held_out_ids)
    tables = {m: seed_mean(seeds) for m, seeds in outcomes.items()}
    # the measured difficulty of each half, ranked within that half
    perfect = pd.concat([measured_difficulty(tables, exclude_ids=halves.held_out_ids)["mean"],
                         measured_difficulty(tables, exclude_ids=halves.fit_ids)["mean"]])
    scored = [ScoredCandidate("cud_paper", perfect, halves.fit_ids[:10], {"top_n": 75}),
              ScoredCandidate("cud_leaky", perfect, halves.fit_ids + halves.held_out_ids[:1],
                              {}),
              ScoredCandidate("cud_unknown", perfect, None, {})]
    table = choose_cud(outcomes, cud, halves, grid()[:4], scored=scored, n_boot=N_BOOT)
    rows = table.set_index("candidate")
    assert bool(rows.loc["cud_paper", "chosen"])
    assert rows.loc["cud_paper", "fit_spearman"] == pytest.approx(1.0)
    assert rows.loc["cud_paper", "top_n"] == 75 and rows.loc["cud_paper", "source"] == \
        SCORES_SOURCE
    assert rows.loc["cud_paper", "held_out_spearman"] == pytest.approx(1.0)
    assert rows.loc["cud_paper", "held_out_n"] == 15
    assert "1 sample(s) outside the fit half" in rows.loc["cud_leaky", "note"]
    assert "unknown" in rows.loc["cud_unknown", "note"]
    assert rows.loc[["cud_leaky", "cud_unknown"], "fit_spearman"].isna().all()
    assert not rows.loc[["cud_leaky", "cud_unknown"], "chosen"].any()


def test_constant_outcomes_on_the_fit_half_are_refused(tmp_path):
    store, outcomes, halves = setup(tmp_path)
    flat = {m: {s: t.assign(efficacy=0.5, delta_loss=0.0) for s, t in seeds.items()}
            for m, seeds in outcomes.items()}
    with pytest.raises(DataError, match="no candidate"):
        choose_cud(flat, StoreCud(store, halves.fit_ids + halves.held_out_ids), halves,
                   grid()[:2], n_boot=N_BOOT)


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
    assert np.isfinite(rows.loc["cud", "fit_spearman"])
    assert "outside the fit half" in rows.loc["cud_paper", "note"]
    markdown = (root / "validation" / "cud_choice.md").read_text()
    assert "Chosen on the fit half only: the 10 fit samples of anchors/anchors.json" in markdown
    assert "voted there from npo, rmu" in markdown
    assert markdown.count("Chosen: ") == 1
    on_disk = pd.read_csv(root / "validation" / "cud_choice.csv")
    assert on_disk["chosen"].sum() == 1
    assert on_disk.loc[on_disk["chosen"], "candidate"].item() == \
        table.loc[table["chosen"], "candidate"].item()

    out = tmp_path / "cli"
    assert main(["validate", "cud-choice", "--run", str(root), "--cud-top-n", "4,8",
                 "--cud-similarity", "cosine", "--cud-anchor-method", "combined,npo",
                 "--n-boot", str(N_BOOT), "--out", str(out)]) == 0
    assert "Chosen: " in capsys.readouterr().out
    cli = pd.read_csv(out / "validation" / "cud_choice.csv")
    assert len(cli[cli["source"] != SCORES_SOURCE]) == 2 * 2 * 1 * 2
    assert CircuitStore.open(root / "circuits").sample_ids == ids

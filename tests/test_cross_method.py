"""Cross-method generalization of CUD: anchors from one method's outcomes, validated on another's
held-out outcomes, recomputed from a circuit store."""

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
from unlearnscope.evaluation.anchored_cud import (
    Halves,
    StoreCud,
    read_run_outcomes,
    seed_mean,
)
from unlearnscope.evaluation.cross_method import (
    DIFFERENT_SEEDS,
    LEAVE_ONE_OUT,
    PAIR,
    SAME_RUN,
    SAME_SEED,
    bootstrap_mean_spearman_interval,
    cross_method_matrix,
    cross_method_table,
    write_cross_method,
)
from unlearnscope.evaluation.validation import bootstrap_spearman_interval
from unlearnscope.runs import write_parquet
from unlearnscope.scoring.cud import anchor_aggregate, cud_from_aggregates

N_BOOT = 300


def latent_setup(tmp_path: Path):
    """Samples on a line between an 'easy' and a 'hard' edge pattern: circuit scores
    (1 - d) a + d b with a, b on disjoint edges. The fit half spans d in [0, 1]; the held-out
    samples lie strictly between the anchors' means, where cosine CUD of weighted vectors over
    all edges rises with d. Method A and B measure d exactly (monotone), C at random."""
    n_edges = LAYOUT.n_edges
    generator = torch.Generator().manual_seed(0)
    a = torch.zeros(n_edges)
    b = torch.zeros(n_edges)
    a[: n_edges // 2] = torch.rand(n_edges // 2, generator=generator) + 0.5
    b[n_edges // 2:] = torch.rand(n_edges - n_edges // 2, generator=generator) + 0.5
    d_fit = np.linspace(0.0, 1.0, 10)
    d_held = np.random.default_rng(1).permutation(np.linspace(0.25, 0.75, 8))
    fit = [f"f{i}" for i in range(10)]
    held = [f"h{i}" for i in range(8)]
    ids, d = fit + held, np.concatenate([d_fit, d_held])
    scores = torch.stack([(1 - float(x)) * a + float(x) * b for x in d])
    store = write_store(tmp_path / "store", ids, scores)
    rng = np.random.default_rng(2)
    outcomes = {"A": {0: outcome(ids, 1 - d)}, "B": {0: outcome(ids, 0.9 - 0.5 * d)},
                "C": {0: outcome(ids, rng.uniform(0, 1, len(ids)))}}
    return store, outcomes, Halves(fit, held, 2, "test")


def test_anchors_of_a_method_that_measures_the_latent_difficulty_predict_another_perfectly(
        tmp_path):
    store, outcomes, halves = latent_setup(tmp_path)
    cud = StoreCud(store, halves.fit_ids + halves.held_out_ids)
    table = cross_method_table(outcomes, cud, halves, top_n=LAYOUT.n_edges, vector="weighted",
                               n_boot=N_BOOT)
    rows = table.set_index(["kind", "anchors", "target"])
    for anchors, target in (("A", "B"), ("B", "A"), ("A", "A"), ("B", "B")):
        assert rows.loc[(PAIR, anchors, target), "spearman"] == pytest.approx(1.0)
    assert rows.loc[(PAIR, "A", "C"), "spearman"] < 0.9
    assert (table["n"] == 8).all()
    assert set(table["pairing"]) == {SAME_SEED, SAME_RUN}
    assert (table.loc[table["anchors"] == table["target"], "pairing"] == SAME_RUN).all()
    matrix = cross_method_matrix(table)
    assert list(matrix.index) == list(matrix.columns) == ["A", "B", "C"]
    assert matrix.loc["A", "B"] == pytest.approx(1.0)


def slow_row(store: CircuitStore, tables: dict[str, pd.DataFrame], target: pd.DataFrame,
             halves: Halves, *, anchor_method: str, top_n, vector, similarity) -> tuple:
    """CUD of the held-out samples by the scorer's own formula from freshly voted anchors, and
    its Spearman with the target's -efficacy."""
    vote = vote_anchors(tables, halves.k, sample_ids=halves.fit_ids)
    sets = (list(vote.per_method.values()) if anchor_method == "mean"
            else [{"easy": vote.easy, "hard": vote.hard}])
    easy = anchor_aggregate([store.edge_scores(s["easy"]) for s in sets])
    hard = anchor_aggregate([store.edge_scores(s["hard"]) for s in sets])
    x = cud_from_aggregates(store.edge_scores(halves.held_out_ids), easy, hard, top_n=top_n,
                            similarity=similarity, vector=vector, layout=store.layout).numpy()
    y = -target.set_index("sample_id").loc[halves.held_out_ids, "efficacy"].to_numpy()
    return x, y


def random_setup(tmp_path: Path, seeds: dict[str, list[int]]):
    rng = np.random.default_rng(5)
    ids = [f"s{i:02d}" for i in range(24)]
    latent = rng.normal(size=len(ids))
    scores = torch.tensor(rng.normal(size=(len(ids), LAYOUT.n_edges)), dtype=torch.float32)
    scores[:, :6] += torch.tensor(latent, dtype=torch.float32)[:, None]
    store = write_store(tmp_path / "store", ids, scores)
    outcomes = {m: {s: outcome(ids, 1 / (1 + np.exp(latent + rng.normal(0, 1, len(ids)))),
                               rng.normal(size=len(ids)))
                    for s in method_seeds} for m, method_seeds in seeds.items()}
    return store, outcomes, Halves(ids[::2], ids[1::2], 3, "test")


@pytest.mark.parametrize("anchor_method, vector, similarity",
                         [("mean", "binary", "cosine"), ("combined", "weighted", "jaccard"),
                          ("mean", "binary", "hamming")])
def test_single_seed_table_matches_a_direct_computation(tmp_path, anchor_method, vector,
                                                        similarity):
    store, outcomes, halves = random_setup(tmp_path, {"npo": [0], "rmu": [0], "undial": [0]})
    cud = StoreCud(store, halves.fit_ids + halves.held_out_ids)
    table = cross_method_table(outcomes, cud, halves, top_n=12, vector=vector,
                               similarity=similarity, anchor_method=anchor_method,
                               n_boot=N_BOOT, seed=4)
    assert len(table) == 9 + 3
    assert list(table["kind"]) == [PAIR] * 9 + [LEAVE_ONE_OUT] * 3
    for row in table.to_dict(orient="records"):
        voters = row["anchors"].split("+")
        assert row["target"] not in voters or row["kind"] == PAIR
        x, y = slow_row(store, {m: outcomes[m][0] for m in voters}, outcomes[row["target"]][0],
                        halves, anchor_method=anchor_method, top_n=12, vector=vector,
                        similarity=similarity)
        assert row["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        low, high = bootstrap_spearman_interval(x, y, n_boot=N_BOOT, seed=4)
        assert (row["spearman_low"], row["spearman_high"]) == pytest.approx((low, high))
        assert row["n"] == len(halves.held_out_ids)
        assert row["target_seeds"] == "0" and row["anchor_seeds"] == "0: 0"


def test_different_seeds_are_paired_and_the_rhos_averaged(tmp_path):
    store, outcomes, halves = random_setup(tmp_path, {"A": [0, 1], "B": [0, 1], "C": [0]})
    cud = StoreCud(store, halves.fit_ids + halves.held_out_ids)
    settings = {"top_n": 10, "vector": "binary", "similarity": "cosine"}
    table = cross_method_table(outcomes, cud, halves, n_boot=N_BOOT, seed=1, **settings)
    rows = table.set_index(["kind", "anchors", "target"])

    def expected(plan: dict[int, dict[str, list[int]]], target: str) -> tuple:
        xs, ys = [], []
        for t, by_method in plan.items():
            tables = {m: seed_mean(outcomes[m], seeds) for m, seeds in by_method.items()}
            x, y = slow_row(store, tables, outcomes[target][t], halves, anchor_method="mean",
                            **settings)
            xs.append(x)
            ys.append(y)
        rho = np.mean([stats.spearmanr(x, y).statistic for x, y in zip(xs, ys, strict=True)])
        return rho, bootstrap_mean_spearman_interval(np.stack(xs), np.stack(ys), n_boot=N_BOOT,
                                                     seed=1)

    cases = {
        (PAIR, "A", "B"): ({0: {"A": [1]}, 1: {"A": [0]}}, DIFFERENT_SEEDS, "0,1"),
        (PAIR, "A", "A"): ({0: {"A": [1]}, 1: {"A": [0]}}, DIFFERENT_SEEDS, "0,1"),
        # C has seed 0 only: target seed 0 of A has no different C seed and is left out
        (PAIR, "C", "A"): ({1: {"C": [0]}}, DIFFERENT_SEEDS, "1"),
        (PAIR, "A", "C"): ({0: {"A": [1]}}, DIFFERENT_SEEDS, "0"),
        (PAIR, "C", "C"): ({0: {"C": [0]}}, SAME_RUN, "0"),
        (LEAVE_ONE_OUT, "A+B", "C"): ({0: {"A": [1], "B": [1]}}, DIFFERENT_SEEDS, "0"),
        (LEAVE_ONE_OUT, "B+C", "A"): ({1: {"B": [0], "C": [0]}}, DIFFERENT_SEEDS, "1"),
    }
    for key, (plan, pairing, target_seeds) in cases.items():
        row = rows.loc[key]
        assert row["pairing"] == pairing and row["target_seeds"] == target_seeds
        rho, (low, high) = expected(plan, key[2])
        assert row["spearman"] == pytest.approx(rho, abs=1e-12)
        assert (row["spearman_low"], row["spearman_high"]) == pytest.approx((low, high))
    assert "left out: 0" in rows.loc[(PAIR, "C", "A"), "note"]
    assert rows.loc[(PAIR, "A", "B"), "anchor_seeds"] == "0: 1; 1: 0"


def test_leave_one_out_never_reads_the_left_out_methods_outcomes(tmp_path):
    store, outcomes, halves = random_setup(tmp_path, {"A": [0], "B": [0], "C": [0]})
    cud = StoreCud(store, halves.fit_ids + halves.held_out_ids)
    clean = cross_method_table(outcomes, cud, halves, top_n=10, n_boot=N_BOOT)
    poisoned = {m: dict(seeds) for m, seeds in outcomes.items()}
    table = outcomes["B"][0].set_index("sample_id")
    # B's fit-half outcomes (what a vote would read) replaced by their reverse
    table.loc[halves.fit_ids, "efficacy"] = 1 - table.loc[halves.fit_ids, "efficacy"]
    table.loc[halves.fit_ids, "delta_loss"] = -table.loc[halves.fit_ids, "delta_loss"]
    poisoned["B"] = {0: table.reset_index()}
    dirty = cross_method_table(poisoned, cud, halves, top_n=10, n_boot=N_BOOT)
    left_out_b = (clean["kind"] == LEAVE_ONE_OUT) & (clean["target"] == "B")
    columns = ["spearman", "spearman_low", "spearman_high"]
    pd.testing.assert_frame_equal(clean.loc[left_out_b, columns], dirty.loc[left_out_b, columns])
    # the poison matters wherever B votes
    votes_b = clean["anchors"].str.split("+").map(lambda voters: "B" in voters)
    assert (clean.loc[votes_b, "spearman"] != dirty.loc[votes_b, "spearman"]).all()


def test_bootstrap_of_a_mean_spearman_matches_scipy_over_the_same_resamples():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(3, 15)), rng.normal(size=(3, 15))
    y[0] += x[0]
    one = bootstrap_mean_spearman_interval(x[:1], y[:1], n_boot=200, seed=7)
    assert one == pytest.approx(bootstrap_spearman_interval(x[0], y[0], n_boot=200, seed=7))
    index = np.random.default_rng(7).integers(0, 15, size=(200, 15))
    means = [np.mean([stats.spearmanr(xt[i], yt[i]).statistic for xt, yt in zip(x, y,
                                                                                  strict=True)])
             for i in index]
    means = np.asarray(means)[np.isfinite(means)]
    expected = np.quantile(means, [0.025, 0.975])
    assert bootstrap_mean_spearman_interval(x, y, n_boot=200, seed=7) == pytest.approx(
        tuple(expected))


def test_run_folder_in_both_layouts_and_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    ids = [f"s{i:02d}" for i in range(16)]
    scores = torch.tensor(rng.normal(size=(len(ids), LAYOUT.n_edges)), dtype=torch.float32)
    outcomes = {"npo": {0: outcome(ids, rng.uniform(size=16)),
                        1: outcome(ids, rng.uniform(size=16))},
                "rmu": {3: outcome(ids, rng.uniform(size=16))}}
    root = write_run(tmp_path / "run", scores, ids, outcomes, per_seed={"npo"}, fit=ids[:8],
                     held=ids[8:], k=2)
    read = read_run_outcomes(root)
    assert {m: sorted(s) for m, s in read.items()} == {"npo": [0, 1], "rmu": [3]}
    table = write_cross_method(root, top_n=20, n_boot=N_BOOT)
    assert table["spearman"].notna().all()
    on_disk = pd.read_csv(root / "validation" / "cross_method.csv")
    np.testing.assert_allclose(on_disk["spearman"], table["spearman"])
    direct = cross_method_table(read, StoreCud(CircuitStore.open(root / "circuits"), ids),
                                Halves(ids[:8], ids[8:], 2, "x"), top_n=20, n_boot=N_BOOT)
    np.testing.assert_allclose(direct["spearman"], table["spearman"], rtol=0, atol=1e-12)
    single = (table["anchors"] == "rmu") & (table["target"] == "rmu")
    assert (table.loc[single, "pairing"] == SAME_RUN).all()
    assert (table.loc[~single, "pairing"] == DIFFERENT_SEEDS).all()
    markdown = (root / "validation" / "cross_method.md").read_text()
    assert "on the 8 fit samples of anchors/anchors.json" in markdown
    assert "| anchors \\ target | npo | rmu |" in markdown
    assert (root / "validation" / "cross_method" / "config.json").is_file()

    out = tmp_path / "elsewhere"
    assert main(["validate", "cross-method", "--run", str(root), "--cud-top-n", "20",
                 "--n-boot", str(N_BOOT), "--out", str(out)]) == 0
    assert "Leave one method out" in capsys.readouterr().out
    cli = pd.read_csv(out / "validation" / "cross_method.csv")
    np.testing.assert_allclose(cli["spearman"], table["spearman"])
    assert main(["validate", "cross-method", "--run", str(root), "--cud-top-n", "8,9"]) == 2
    assert "takes one value" in capsys.readouterr().err


def test_a_run_without_anchors_needs_k_and_folders_with_both_layouts_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(10)]
    scores = torch.tensor(rng.normal(size=(10, LAYOUT.n_edges)), dtype=torch.float32)
    root = tmp_path / "run"
    write_store(root / "circuits", ids, scores)
    write_parquet(root / "unlearn" / "npo" / "outcomes.parquet",
                  outcome(ids, rng.uniform(size=10)))
    with pytest.raises(DataError, match="anchor set size k"):
        write_cross_method(root)
    table = write_cross_method(root, k=2, fit_fraction=0.5, n_boot=50, top_n=5)
    assert table["n"].tolist() == [5]
    assert "split_fit(fraction=0.5, seed=0)" in (root / "validation" /
                                                 "cross_method.md").read_text()
    write_parquet(root / "unlearn" / "npo" / "seed1" / "outcomes.parquet",
                  outcome(ids, rng.uniform(size=10)))
    with pytest.raises(DataError, match=r"both outcomes\.parquet and seed"):
        read_run_outcomes(root)

"""Edge-depth ablation of CUD and the tests of the CUD paper's circuit claims."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from cud_runs import LAYOUT, cud_scores, outcome, write_run
from unlearnscope.circuits.analysis import (
    circuit_statistics,
    compare_frequency_distributions,
    head_share,
)
from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.selection import edge_names
from unlearnscope.circuits.store import CircuitStore
from unlearnscope.evaluation.depth_ablation import DEPTH_COLUMNS, reader_bands, write_depth_ablation
from unlearnscope.report.signatures import CLAIM_COLUMNS, compare_easy_hard, write_claims


def test_reader_bands_follow_the_reader_names():
    layout = GraphLayout(6, 2)
    bands = reader_bands(layout)
    for name, first, middle, last in zip(edge_names(layout), bands["first"], bands["middle"],
                                         bands["last"], strict=True):
        reader = name.split("->")[1]
        layer = 6 if reader == "logits" else int(reader[1:].split(".")[0].split("<")[0])
        expected = "first" if layer < 2 else "middle" if layer < 4 else "last"
        assert (bool(first), bool(middle), bool(last)) == tuple(
            band == expected for band in ("first", "middle", "last")), name
    assert bool(bands["all"].all())


def _run(tmp_path):
    """Edge scores whose last band (readers: the logits) moves from an easy pattern to a hard
    one with the difficulty d; the other bands are noise."""
    bands = reader_bands(LAYOUT)
    generator = torch.Generator().manual_seed(0)
    last = bands["last"]
    a, b = torch.zeros(LAYOUT.n_edges), torch.zeros(LAYOUT.n_edges)
    positions = last.nonzero().flatten()
    half = len(positions) // 2
    a[positions[:half]] = 1.0 + torch.rand(half, generator=generator)
    b[positions[half:]] = 1.0 + torch.rand(len(positions) - half, generator=generator)
    fit = [f"f{i}" for i in range(8)]
    held = [f"h{i}" for i in range(10)]
    ids = fit + held
    d = np.concatenate([np.linspace(0, 1, 8),
                        np.random.default_rng(1).permutation(np.linspace(0.1, 0.9, 10))])
    noise = torch.randn(len(ids), LAYOUT.n_edges, generator=generator) * 0.5
    scores = torch.stack([(1 - float(x)) * a + float(x) * b for x in d])
    scores = torch.where(last, scores, noise)
    outcomes = {"npo": {0: outcome(ids, 1 - d)}}
    root = write_run(tmp_path / "run", scores, ids, outcomes, per_seed=set(), fit=fit,
                     held=held, k=2)
    return root, scores, ids, d


def test_depth_ablation_finds_the_band_that_carries_difficulty(tmp_path):
    root, scores, ids, d = _run(tmp_path)
    table = write_depth_ablation(root, top_n=0.5, vector="weighted", n_boot=200)
    assert list(table.columns) == DEPTH_COLUMNS
    rows = table.set_index("band")
    assert list(rows.index) == ["all", "first", "middle", "last"]
    assert rows.loc["last", "spearman"] > 0.9 and rows.loc["last", "n"] == 10
    assert rows.loc["last", "reader_layers"] == "none+logits"
    assert rows.loc[["first", "middle", "last"], "n_edges"].sum() == LAYOUT.n_edges
    # the `all` row is the scorer's CUD without a layout (top-n by |score|, unpruned)
    held = ids[8:]
    position = {i: n for n, i in enumerate(ids)}
    direct = cud_scores(scores[[position[i] for i in held]], scores[[0, 1]], scores[[6, 7]],
                        top_n=0.5, vector="weighted").numpy()
    assert rows.loc["all", "spearman"] == pytest.approx(
        stats.spearmanr(direct, -(1 - d[8:])).statistic)
    assert (root / "validation" / "depth_ablation.md").is_file()


def test_head_share_and_identical_sets_by_hand():
    assert head_share(np.array([5, 3, 1, 1]), 1) == pytest.approx(0.5)
    assert head_share(np.array([[5, 3, 1, 1], [2, 2, 0, 0]]), 2).tolist() == [0.8, 1.0]
    masks = torch.zeros((4, LAYOUT.n_forward, LAYOUT.n_backward), dtype=torch.bool)
    masks[:, 0, LAYOUT.logits_backward_index] = True
    masks[:2, LAYOUT.mlp_forward_index(1), LAYOUT.logits_backward_index] = True
    same = compare_frequency_distributions(masks, masks.clone(), LAYOUT, n_resamples=50)
    assert same["ks_statistic"] == 0.0 and same["head_share_p"] == 1.0
    # set a: input->logits in all 4, m1->logits in 2 (head k = 1: 4/6); set b: only m1->logits
    # in 2 of 4 -> its head holds every occurrence
    other = torch.zeros_like(masks)
    other[:2, LAYOUT.mlp_forward_index(1), LAYOUT.logits_backward_index] = True
    tests = compare_frequency_distributions(masks, other, LAYOUT, n_resamples=50)
    assert tests["head_share_a"] == pytest.approx(4 / 6) and tests["head_share_b"] == 1.0


def test_claims_table_orients_effects_to_the_claim(tmp_path):
    root, *_ = _run(tmp_path)
    table = write_claims(root, top_n=0.3, quantile=0.25, n_resamples=200)
    assert list(table.columns) == CLAIM_COLUMNS and len(table) == 6
    measured = pd.Series(np.asarray(pd.read_parquet(root / "unlearn" / "npo" /
                                                    "outcomes.parquet").efficacy),
                         index=pd.read_parquet(root / "unlearn" / "npo" /
                                               "outcomes.parquet").sample_id)
    order = measured.sort_values(ascending=False, kind="mergesort").index.tolist()
    signatures = compare_easy_hard(root / "circuits", order[:4], order[-4:], top_n=0.3,
                                   n_resamples=200)
    compared = signatures.statistics.set_index("statistic").loc["n_nodes"]
    row = table.set_index("statistic").loc["n_nodes"]
    assert row["effect"] == pytest.approx(-compared["rank_biserial"])
    # rank-biserial by hand: P(hard > easy) - P(hard < easy) over all pairs
    store = CircuitStore.open(root / "circuits")
    nodes = {side: circuit_statistics(store.circuits(ids, "topn", n=signatures.n_edges_selected),
                                      LAYOUT, ids).n_nodes.to_numpy()
             for side, ids in (("easy", order[:4]), ("hard", order[-4:]))}
    pairs = np.sign(nodes["hard"][:, None] - nodes["easy"][None, :])
    assert row["effect"] == pytest.approx(pairs.mean())
    assert table.holds.dtype == bool
    assert (root / "validation" / "claims.md").is_file()

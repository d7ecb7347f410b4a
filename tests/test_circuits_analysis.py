"""Circuit statistics on hand-built circuits, set comparisons against scipy, plots."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from unlearnscope.circuits.analysis import (
    SCALAR_STATISTICS,
    aggregate_statistics,
    circuit_statistics,
    compare_edge_frequencies,
    compare_groups,
    compare_statistics,
    edge_frequency,
    group_circuits,
    layer_histogram,
    longest_path,
    plot_depth_distributions,
    plot_edge_frequencies,
    plot_layer_histograms,
    save_png,
    set_summary,
)
from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.selection import edge_names
from unlearnscope.circuits.store import CircuitStore, ShardWriter, write_header, write_index
from unlearnscope.errors import DataError

LAYOUT = GraphLayout(3, 1)  # writers input, a0.h0, m0, a1.h0, m1, a2.h0, m2


def mask_of(pairs: list[tuple[str, str]], layout: GraphLayout = LAYOUT) -> torch.Tensor:
    mask = torch.zeros((layout.n_forward, layout.n_backward), dtype=torch.bool)
    for writer, reader in pairs:
        mask[layout.forward_names.index(writer), layout.backward_names.index(reader)] = True
    return mask


# input -> a0 -> m0 -> a2 -> logits, plus input -> logits
HAND = mask_of([("input", "a0.h0<q>"), ("a0.h0", "m0"), ("m0", "a2.h0<v>"),
                ("a2.h0", "logits"), ("input", "logits")])


def test_statistics_of_a_hand_built_circuit() -> None:
    row = circuit_statistics(HAND, LAYOUT).iloc[0]
    assert row["n_edges"] == 5
    assert (row["n_nodes"], row["n_attention_nodes"], row["n_mlp_nodes"]) == (3, 2, 1)
    assert row["attention_fraction"] == pytest.approx(2 / 3)
    # spans: input(-1)->a0 1, a0->m0 0, m0->a2 2, a2->logits(3) 1, input->logits 4
    assert row["mean_depth"] == pytest.approx((1 + 0 + 2 + 1 + 4) / 5)
    assert row["max_edge_span"] == 4
    assert row["max_depth"] == 3  # a0, m0, a2 on the longest path
    # last third of 3 layers: layer 2 and the logits -> m0->a2, a2->logits, input->logits
    assert row["last_third_fraction"] == pytest.approx(3 / 5)
    assert layer_histogram(HAND, LAYOUT).tolist() == [[2, 0, 1, 2]]


def test_longest_path_ignores_parts_not_reached_from_the_input() -> None:
    # a1 -> m1 -> logits is not fed by the input: only input -> logits counts
    mask = mask_of([("a1.h0", "m1"), ("m1", "logits"), ("input", "logits")])
    assert longest_path(mask, LAYOUT).tolist() == [0.0]
    direct = mask_of([("input", "a1.h0<k>"), ("a1.h0", "m1"), ("m1", "logits"),
                      ("a1.h0", "logits")])
    assert longest_path(torch.stack([direct, HAND]), LAYOUT).tolist() == [2.0, 3.0]


def test_empty_circuit_has_undefined_depth() -> None:
    row = circuit_statistics(torch.zeros_like(HAND), LAYOUT).iloc[0]
    assert row["n_edges"] == 0
    assert math.isnan(row["mean_depth"]) and math.isnan(row["max_depth"])
    assert math.isnan(row["attention_fraction"])


def test_last_third_boundary_for_four_layers() -> None:
    layout = GraphLayout(4, 1)
    # ceil(8/3) = 3: only layer 3 and the logits count
    mask = mask_of([("input", "m2"), ("input", "m3"), ("m2", "logits"), ("m3", "logits")],
                   layout)
    assert circuit_statistics(mask, layout)["last_third_fraction"].item() == pytest.approx(3 / 4)


def test_edge_frequency_and_set_summary() -> None:
    other = mask_of([("input", "logits"), ("input", "m1"), ("m1", "logits")])
    masks = torch.stack([HAND, other, other])
    freq = edge_frequency(masks, LAYOUT)
    names = edge_names(LAYOUT)
    assert freq[names.index("input->logits")] == 1.0
    assert freq[names.index("m1->logits")] == pytest.approx(2 / 3)
    assert freq[names.index("a0.h0->m0")] == pytest.approx(1 / 3)
    summary = set_summary(masks, LAYOUT)
    assert summary["n_circuits"] == 3
    assert summary["n_edges_in_any"] == 7
    assert summary["top_edges"][0] == {"edge": "input->logits", "frequency": 1.0}
    assert summary["statistics"]["n_edges"]["mean"] == pytest.approx((5 + 3 + 3) / 3)
    # layer fractions: HAND [2,0,1,2]/5, other [0,1,0,2]/3
    expected = (np.array([2, 0, 1, 2]) / 5 + 2 * np.array([0, 1, 0, 2]) / 3) / 3
    assert summary["layer_histogram_fraction"] == pytest.approx(expected.tolist())


def stats_table(values: dict[str, list[float]]) -> pd.DataFrame:
    n = len(next(iter(values.values())))
    table = circuit_statistics(torch.zeros((n, LAYOUT.n_forward, LAYOUT.n_backward),
                                           dtype=torch.bool), LAYOUT)
    for name, column in values.items():
        table[name] = column
    return table


def test_scalar_comparison_matches_scipy_and_exact_enumeration() -> None:
    a = [1.0, 2.5, 3.0, 4.2]
    b = [2.0, 5.0, 6.1, 7.3]
    result = compare_statistics(stats_table({"mean_depth": a}), stats_table({"mean_depth": b}))
    row = result.set_index("statistic").loc["mean_depth"]
    reference = stats.mannwhitneyu(a, b, alternative="two-sided")
    assert row["mannwhitney_u"] == reference.statistic
    assert row["mannwhitney_p"] == reference.pvalue
    # exact permutation p-value by enumerating the 70 splits; equal sizes make the
    # distribution of the mean difference symmetric, so two-sided = P(|T| >= |t|)
    pooled = np.array(a + b)
    observed = abs(np.mean(a) - np.mean(b))
    extreme = 0
    for chosen in combinations(range(8), 4):
        rest = [i for i in range(8) if i not in chosen]
        extreme += abs(pooled[list(chosen)].mean() - pooled[rest].mean()) >= observed - 1e-12
    assert row["permutation_p"] == pytest.approx(extreme / 70)
    assert row["mean_a"] == pytest.approx(np.mean(a)) and row["median_b"] == np.median(b)


def test_scalar_comparison_drops_nans() -> None:
    a = [1.0, float("nan"), 3.0]
    b = [2.0, 4.0, 8.0]
    row = compare_statistics(stats_table({"max_depth": a}), stats_table({"max_depth": b})
                             ).set_index("statistic").loc["max_depth"]
    assert row["n_a"] == 2
    assert row["mannwhitney_p"] == stats.mannwhitneyu([1.0, 3.0], b).pvalue
    single = compare_statistics(stats_table({"max_depth": [1.0, np.nan, np.nan]}),
                                stats_table({"max_depth": b})).set_index("statistic")
    assert single.loc["max_depth", "mannwhitney_p"] == stats.mannwhitneyu([1.0], b).pvalue
    assert math.isnan(single.loc["max_depth", "permutation_p"])


def test_edge_frequency_comparison_counts_and_fisher() -> None:
    a_only = mask_of([("input", "a0.h0<q>"), ("a0.h0", "logits")])
    shared = mask_of([("input", "logits")])
    group_a = torch.stack([a_only | shared] * 5 + [shared])
    group_b = torch.stack([shared] * 4)
    frame, summary = compare_edge_frequencies(group_a, group_b, LAYOUT)
    assert frame["edge"].tolist()[-1] == "input->logits"  # zero difference sorts last
    row = frame.set_index("edge").loc["a0.h0->logits"]
    assert (row["count_a"], row["count_b"]) == (5, 0)
    assert row["frequency_a"] == pytest.approx(5 / 6) and row["difference"] == pytest.approx(5 / 6)
    assert row["p_value"] == stats.fisher_exact([[5, 1], [0, 4]]).pvalue
    assert frame.set_index("edge").loc["input->logits", "p_value"] == 1.0
    assert frame["q_value"].tolist() == pytest.approx(
        stats.false_discovery_control(frame["p_value"].to_numpy()).tolist())
    assert summary["n_edges_in_any"] == 3
    assert summary["n_edges_only_a"] == 2 and summary["n_edges_only_b"] == 0
    assert summary["consensus_jaccard"] == pytest.approx(1 / 3)


def statistics_by_hand(mask: torch.Tensor, layout: GraphLayout) -> dict[str, float]:
    """The module docstring's statistics of one circuit `[n_forward, n_backward]`, read off
    its edge names (`a1.h0` -> `m1<...>`) with plain Python, no tensor code of the module."""

    def layer(name: str) -> int:
        if name == "input":
            return -1
        if name == "logits":
            return layout.n_layers
        return int(name[1:].split(".")[0].split("<")[0])

    def owner(reader: str) -> str:
        return reader.split("<")[0]

    edges = [(layout.forward_names[u], layout.backward_names[v])
             for u, v in mask.nonzero().tolist()]
    writers = {w for w, _ in edges}
    fed = {owner(r) for _, r in edges}
    nodes = {w for w in writers if w != "input" and w in fed}
    mlp = {n for n in nodes if n.startswith("m")}
    spans = [layer(r) - layer(w) for w, r in edges]
    successors = {w: {owner(r) for u, r in edges if u == w} for w in writers}

    def components_to_logits(node: str) -> float:
        best = -math.inf
        for nxt in successors.get(node, ()):
            best = max(best, 0.0 if nxt == "logits" else 1.0 + components_to_logits(nxt))
        return best

    depth = components_to_logits("input")
    last_third = math.ceil(2 * layout.n_layers / 3)
    n = len(edges)
    return {
        "n_edges": n, "n_nodes": len(nodes), "n_attention_nodes": len(nodes - mlp),
        "n_mlp_nodes": len(mlp),
        "attention_fraction": len(nodes - mlp) / len(nodes) if nodes else math.nan,
        "mean_depth": sum(spans) / n if n else math.nan,
        "max_edge_span": max(spans) if n else math.nan,
        "max_depth": depth if math.isfinite(depth) else math.nan,
        "last_third_fraction": sum(layer(r) >= last_third for _, r in edges) / n if n else math.nan,
    }


def exact_permutation_p(a: list[float], b: list[float]) -> float:
    """Two-sided permutation p-value of mean(a) - mean(b) over every split of the pooled values
    into groups of the two sizes: twice the smaller tail, at most 1 (scipy's definition)."""
    pooled = a + b
    observed = np.mean(a) - np.mean(b)
    differences = []
    for chosen in combinations(range(len(pooled)), len(a)):
        rest = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        differences.append(np.mean([pooled[i] for i in chosen]) - np.mean(rest))
    differences = np.array(differences)
    tolerance = 1e-12 * max(1.0, abs(observed))
    upper = np.mean(differences >= observed - tolerance)
    lower = np.mean(differences <= observed + tolerance)
    return min(1.0, 2 * min(upper, lower))


def test_compare_groups_and_plots(tmp_path) -> None:
    torch.manual_seed(0)
    layout = GraphLayout(3, 2)
    masks = {"easy": torch.rand(5, layout.n_forward, layout.n_backward) < 0.3,
             "hard": torch.rand(4, layout.n_forward, layout.n_backward) < 0.3}
    masks = {k: v & layout.real_edge_mask for k, v in masks.items()}
    # 126 splits of 5 + 4 circuits <= n_resamples: the permutation test is exact
    result = compare_groups(masks, layout, n_resamples=999)
    assert list(result) == ["easy_vs_hard"]
    comparison = result["easy_vs_hard"]
    assert (comparison["a"], comparison["b"]) == ("easy", "hard")
    by_stat = {r["statistic"]: r for r in comparison["statistics"]}
    assert sorted(by_stat) == sorted(SCALAR_STATISTICS)
    hand = {group: [statistics_by_hand(m, layout) for m in group_masks]
            for group, group_masks in masks.items()}
    assert hand["easy"][0]["max_depth"] > 0  # paths through components, not only input->logits
    for name, row in by_stat.items():
        a = [s[name] for s in hand["easy"] if not math.isnan(s[name])]
        b = [s[name] for s in hand["hard"] if not math.isnan(s[name])]
        assert (row["n_a"], row["n_b"]) == (len(a), len(b)), name
        assert row["mean_a"] == pytest.approx(sum(a) / len(a)), name
        assert row["mean_b"] == pytest.approx(sum(b) / len(b)), name
        assert row["median_a"] == pytest.approx(np.median(a)), name
        assert row["median_b"] == pytest.approx(np.median(b)), name
        test = stats.mannwhitneyu(a, b, alternative="two-sided")
        assert row["mannwhitney_u"] == pytest.approx(test.statistic), name
        assert row["mannwhitney_p"] == pytest.approx(test.pvalue, nan_ok=True), name
        assert row["rank_biserial"] == pytest.approx(2 * test.statistic / (len(a) * len(b)) - 1)
        assert row["permutation_p"] == pytest.approx(exact_permutation_p(a, b)), name
    assert by_stat["n_edges"]["mean_a"] != pytest.approx(by_stat["n_edges"]["mean_b"])

    # edge frequencies, counted by name
    counts = {group: {} for group in masks}
    for group, group_masks in masks.items():
        for m in group_masks:
            for u, v in m.nonzero().tolist():
                edge = f"{layout.forward_names[u]}->{layout.backward_names[v]}"
                counts[group][edge] = counts[group].get(edge, 0) + 1
    easy, hard = counts["easy"], counts["hard"]
    summary = comparison["edges"]
    assert summary["n_edges_in_any"] == len(easy.keys() | hard.keys())
    assert summary["n_edges_only_a"] == len(easy.keys() - hard.keys())
    assert summary["n_edges_only_b"] == len(hard.keys() - easy.keys())
    consensus_a = {e for e, c in easy.items() if c / 5 >= 0.5}
    consensus_b = {e for e, c in hard.items() if c / 4 >= 0.5}
    assert summary["consensus_jaccard"] == pytest.approx(
        len(consensus_a & consensus_b) / len(consensus_a | consensus_b))
    differences = []
    for row in comparison["top_edges"]:
        count_a, count_b = easy.get(row["edge"], 0), hard.get(row["edge"], 0)
        assert (row["count_a"], row["count_b"]) == (count_a, count_b), row["edge"]
        assert row["difference"] == pytest.approx(count_a / 5 - count_b / 4)
        assert row["p_value"] == pytest.approx(
            stats.fisher_exact([[count_a, 5 - count_a], [count_b, 4 - count_b]]).pvalue)
        differences.append(abs(row["difference"]))
    assert len(differences) == 20 and differences == sorted(differences, reverse=True)
    largest = max(abs(easy.get(e, 0) / 5 - hard.get(e, 0) / 4) for e in easy.keys() | hard.keys())
    assert differences[0] == pytest.approx(largest)

    tables = {k: circuit_statistics(v, layout) for k, v in masks.items()}
    layers = plot_layer_histograms(masks, layout)
    bars = layers.axes[0].patches
    n_labels = layout.n_layers + 1  # the reader layers, then the logits
    assert len(bars) == len(masks) * n_labels
    for index, group in enumerate(sorted(masks)):  # one run of bars per group, in name order
        fractions = []
        for m in masks[group]:
            per_layer = np.zeros(n_labels)
            for _, v in m.nonzero().tolist():
                name = layout.backward_names[v]
                per_layer[layout.n_layers if name == "logits" else int(name[1])] += 1
            fractions.append(per_layer / max(per_layer.sum(), 1))
        heights = [bar.get_height() for bar in bars[index * n_labels:(index + 1) * n_labels]]
        assert heights == pytest.approx(np.mean(fractions, axis=0))
    depth = plot_depth_distributions(tables)
    for ax, column in zip(depth.axes, ("mean_depth", "max_depth"), strict=True):
        patches = ax.patches
        for index, group in enumerate(sorted(tables)):  # 20 bins a group: every circuit counted
            counted = sum(bar.get_height() for bar in patches[20 * index:20 * (index + 1)])
            assert counted == tables[group][column].notna().sum(), (column, group)
    frequencies = plot_edge_frequencies(masks, layout)
    used = counts["easy"].keys() | counts["hard"].keys()
    assert len(frequencies.axes) == 2
    assert len(frequencies.axes[1].collections[0].get_offsets()) == len(used)
    paths = [save_png(layers, tmp_path / "layers.png"), save_png(depth, tmp_path / "depth.png"),
             save_png(frequencies, tmp_path / "edges.png")]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth.png", "edges.png",
                                                          "layers.png"]


def _store(directory, layout: GraphLayout, ids: list[str], scores: torch.Tensor) -> CircuitStore:
    write_header(directory, {"model": "tiny", "n_layers": layout.n_layers,
                             "n_heads": layout.n_heads, "d_model": 16,
                             "method": "EAP-IG-inputs", "ig_steps": 5, "baseline": "zero",
                             "rule": "left", "metric": "answer_logprob"})
    writer = ShardWriter(directory, layout, shard_size=2)
    writer.add(ids, scores)
    writer.close()
    write_index(directory)
    return CircuitStore.open(directory)


def test_group_circuits_keep_stored_samples_in_order_and_name_empty_groups(tmp_path) -> None:
    layout = GraphLayout(2, 2)
    scores = torch.randn(5, layout.n_forward, layout.n_backward,
                         generator=torch.Generator().manual_seed(3)) * layout.real_edge_mask
    store = _store(tmp_path, layout, [f"s{i}" for i in range(5)], scores)
    circuits = group_circuits(store, {"b": ["s3", "nope", "s1"], "a": ["s0"]}, "topn", n=4)
    assert circuits.ids == {"b": ["s3", "s1"], "a": ["s0"]}
    assert circuits.not_stored == {"b": ["nope"], "a": []}
    for mask, sample in zip(circuits.masks["b"], store.scores(["s3", "s1"]), strict=True):
        # each stored sample's own circuit: its kept edges among its 4 largest |score|
        top4 = set(torch.topk(sample[layout.real_edge_mask].abs(), 4).indices.tolist())
        assert set(torch.nonzero(mask[layout.real_edge_mask]).flatten().tolist()) <= top4
    assert circuits.masks["b"].any() and circuits.masks["b"].sum() <= 8
    assert circuits.tables["b"]["sample_id"].tolist() == ["s3", "s1"]
    assert circuits.tables["b"]["n_edges"].tolist() == circuits.masks["b"].sum(
        dim=(1, 2)).tolist()
    assert set(circuits.figures()) == {"layer_histogram", "depth", "edge_frequency"}
    with pytest.raises(DataError, match=r"group\(s\) c, d") as error:
        group_circuits(store, {"a": ["s0"], "c": ["x"], "d": []}, "topn", n=4,
                       source="groups.csv")
    assert "groups.csv" in str(error.value)


def test_aggregate_circuit_selects_from_the_mean_scores(tmp_path) -> None:
    layout = GraphLayout(2, 2)
    path = [("input", "a0.h0<q>"), ("a0.h0", "logits")]
    both = mask_of(path, layout).float()
    other = mask_of([("input", "m1")], layout).float()
    # each sample alone puts input -> m1 first; in the mean it cancels and the path remains
    scores = torch.stack([both + 1.5 * other, both - 1.5 * other])
    store = _store(tmp_path, layout, ["s0", "s1"], scores)
    aggregate = aggregate_statistics(store, ["s0", "s1"], "topn", n=2)
    # input (layer -1) -> a0 (0) spans 1 layer, a0 -> logits (layer 2) spans 2
    assert (aggregate["n_edges"], aggregate["max_depth"]) == (2, 1)
    assert aggregate["mean_depth"] == pytest.approx(1.5)
    alone = circuit_statistics(store.circuits(["s0"], "topn", n=2), layout).iloc[0]
    assert alone["n_edges"] != 2 or alone["mean_depth"] != pytest.approx(1.5)

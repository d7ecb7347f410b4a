"""Statistics of circuits and of sets of circuits, comparison of two sets, plots.

Circuits are bool masks `in_graph` `[n_circuits, n_forward, n_backward]` (see `selection`).
Layers: the input writes at layer -1, the heads and MLP of block l at layer l, the logits read
at layer `n_layers`. Per circuit:

- `n_edges`; `n_nodes`, `n_attention_nodes`, `n_mlp_nodes` (writers with an incoming and an
  outgoing edge, as the reference's `nodes_in_graph`, the input excluded) and
  `attention_fraction` = attention / (attention + MLP) nodes;
- layer histogram: edges counted by the layer of their reader, `n_layers + 1` bins, the last
  one the logits;
- `mean_depth`: mean layer span of the edges (reader layer - writer layer), `max_edge_span`;
- `max_depth`: the longest input -> logits path through the circuit, counted in components
  (heads and MLPs) on the path (0 when only direct input -> logits edges exist);
- `last_third_fraction`: fraction of edges whose reader is in the last third of the blocks
  (layer >= ceil(2L/3)) or is the logits.

Values that do not exist for an empty circuit (means, depth) are NaN and are left out of the
set statistics and tests.

Named groups of samples (`group_circuits`: their stored circuits, selected alike) are what
`unlearnscope circuits analyze` (`write_group_analysis`) and the report's easy vs hard
comparison analyze. The plots are `matplotlib.figure.Figure`s, built without pyplot (no global
backend or figure registry is touched); `save_png` writes one, the report embeds them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from scipy import stats

from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.selection import (
    circuit_nodes,
    edge_index,
    edge_names,
    edge_vector,
    node_adjacency,
    select,
)
from unlearnscope.circuits.store import CircuitStore
from unlearnscope.errors import DataError
from unlearnscope.layout import SUMMARY_FILE
from unlearnscope.runs import atomic_write, write_json, write_parquet

SCALAR_STATISTICS = ("n_edges", "n_nodes", "n_attention_nodes", "n_mlp_nodes",
                     "attention_fraction", "mean_depth", "max_edge_span", "max_depth",
                     "last_third_fraction")
PNG_DPI = 100  # resolution of the circuit plots, as files and in the report


def _batched(in_graph: torch.Tensor) -> torch.Tensor:
    """Circuits as `[n, n_forward, n_backward]` on the CPU (analysis ends in numpy anyway)."""
    in_graph = in_graph.cpu()
    return in_graph.unsqueeze(0) if in_graph.dim() == 2 else in_graph


def layer_histogram(in_graph: torch.Tensor, layout: GraphLayout) -> torch.Tensor:
    """Edge counts by reader layer: `[n, n_forward, n_backward]` -> `[n, n_layers + 1]` long
    (last bin: edges into the logits)."""
    per_reader = _batched(in_graph).sum(dim=-2)
    hist = torch.zeros((per_reader.shape[0], layout.n_layers + 1), dtype=torch.long)
    return hist.index_add_(1, layout.backward_layer, per_reader.long())


def longest_path(in_graph: torch.Tensor, layout: GraphLayout) -> torch.Tensor:
    """Components on the longest input -> logits path, `[n]` float (NaN when the circuit has no
    such path). Dynamic programming over the node graph layer by layer, batched over
    circuits."""
    feeds = node_adjacency(_batched(in_graph), layout)  # [n, n_forward, n_forward + 1]
    depth = torch.full(feeds.shape[:-1], -torch.inf)
    depth[:, 0] = 0.0

    def deepest_input(nodes: slice) -> torch.Tensor:
        """`[n, n_nodes]`: depth of the deepest writer feeding each node inside the circuit."""
        return torch.where(feeds[:, :, nodes], depth[:, :, None], -torch.inf).amax(dim=1)

    for layer in range(layout.n_layers):
        heads = slice(layout.head_forward_index(layer, 0),
                      layout.head_forward_index(layer, 0) + layout.n_heads)
        depth[:, heads] = deepest_input(heads) + 1
        mlp = layout.mlp_forward_index(layer)
        depth[:, mlp] = deepest_input(slice(mlp, mlp + 1))[:, 0] + 1
    to_logits = deepest_input(slice(layout.n_forward, layout.n_forward + 1))[:, 0]
    return torch.where(torch.isfinite(to_logits), to_logits, torch.nan)


def circuit_statistics(in_graph: torch.Tensor, layout: GraphLayout,
                       sample_ids: list[str] | None = None) -> pd.DataFrame:
    """One row of scalar statistics (`SCALAR_STATISTICS`, see the module docstring) per circuit
    of `in_graph` `[n, n_forward, n_backward]`, plus `sample_id` when given."""
    masks = _batched(in_graph)
    n_edges = masks.sum(dim=(-2, -1)).double()
    nodes = circuit_nodes(masks, layout) & (layout.forward_layer >= 0)
    n_mlp = (nodes & layout.forward_is_mlp).sum(dim=-1).double()
    n_nodes = nodes.sum(dim=-1).double()
    writers, readers = edge_index(layout)
    span = (layout.backward_layer[readers] - layout.forward_layer[writers]).double()
    edges = edge_vector(masks, layout).double()
    # empty circuits: 0 / 0 gives the documented NaN
    mean_depth = (edges @ span) / n_edges
    max_span = torch.where(edges > 0, span, -torch.inf).amax(dim=-1)
    last_third_start = math.ceil(2 * layout.n_layers / 3)
    last_third = layer_histogram(masks, layout)[:, last_third_start:].sum(dim=-1) / n_edges
    attention_fraction = (n_nodes - n_mlp) / n_nodes
    frame = pd.DataFrame({
        "n_edges": n_edges.numpy(),
        "n_nodes": n_nodes.numpy(),
        "n_attention_nodes": (n_nodes - n_mlp).numpy(),
        "n_mlp_nodes": n_mlp.numpy(),
        "attention_fraction": attention_fraction.numpy(),
        "mean_depth": mean_depth.numpy(),
        "max_edge_span": torch.where(torch.isfinite(max_span), max_span, torch.nan).numpy(),
        "max_depth": longest_path(masks, layout).double().numpy(),
        "last_third_fraction": last_third.numpy(),
    })
    if sample_ids is not None:
        frame.insert(0, "sample_id", list(sample_ids))
    return frame


def edge_frequency(in_graph: torch.Tensor, layout: GraphLayout) -> torch.Tensor:
    """Fraction of the circuits that contain each real edge, `[n_edges]` float64."""
    return edge_vector(_batched(in_graph), layout).double().mean(dim=0)


def set_summary(in_graph: torch.Tensor, layout: GraphLayout, *, top_edges: int = 20
                ) -> dict[str, Any]:
    """Summary of a set of circuits `[n, n_forward, n_backward]`: per statistic mean, median,
    std and min/max; mean layer histogram as fractions of each circuit's edges; most frequent
    edges."""
    masks = _batched(in_graph)
    table = circuit_statistics(masks, layout)
    hist = layer_histogram(masks, layout).double()
    fractions = hist / hist.sum(dim=-1, keepdim=True).clamp(min=1)
    freq = edge_frequency(masks, layout)
    names = edge_names(layout)
    order = torch.argsort(freq, descending=True, stable=True)[:top_edges].tolist()
    return {
        "n_circuits": len(masks),
        "statistics": {name: _describe(table[name].to_numpy()) for name in SCALAR_STATISTICS},
        "layer_histogram_fraction": fractions.mean(dim=0).tolist(),
        "layer_labels": [str(layer) for layer in range(layout.n_layers)] + ["logits"],
        "top_edges": [{"edge": names[i], "frequency": float(freq[i])} for i in order
                      if freq[i] > 0],
        "n_edges_in_any": int((freq > 0).sum()),
    }


def _describe(values: np.ndarray) -> dict[str, float | int]:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return {"n": 0}
    return {"n": len(values), "mean": float(values.mean()), "median": float(np.median(values)),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(values.min()), "max": float(values.max())}


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def compare_statistics(table_a: pd.DataFrame, table_b: pd.DataFrame, *,
                       n_resamples: int = 9999, seed: int = 0) -> pd.DataFrame:
    """Two-sided tests of every scalar statistic between two sets of circuits.

    `table_a`, `table_b`: `circuit_statistics` frames. One row per statistic: sizes, means,
    medians, the Mann-Whitney U statistic (of a) and p-value, its effect size `rank_biserial`
    = 2 U / (n_a n_b) - 1 = P(a > b) - P(a < b) in [-1, 1] (positive: a larger), and the
    p-value of a permutation test on the difference of means (exact when the number of
    distinct splits is at most `n_resamples`). NaNs are dropped first; the Mann-Whitney
    p-value and the effect size are NaN when a side is empty, the permutation p-value when a
    side has fewer than two values.
    """
    rows = []
    for name in SCALAR_STATISTICS:
        a = table_a[name].to_numpy(dtype=float)
        b = table_b[name].to_numpy(dtype=float)
        a, b = a[~np.isnan(a)], b[~np.isnan(b)]
        row: dict[str, Any] = {"statistic": name, "n_a": len(a), "n_b": len(b),
                               "mean_a": a.mean() if len(a) else np.nan,
                               "mean_b": b.mean() if len(b) else np.nan,
                               "median_a": np.median(a) if len(a) else np.nan,
                               "median_b": np.median(b) if len(b) else np.nan,
                               "mannwhitney_u": np.nan, "mannwhitney_p": np.nan,
                               "rank_biserial": np.nan, "permutation_p": np.nan}
        if len(a) and len(b):
            test = stats.mannwhitneyu(a, b, alternative="two-sided")
            row.update(mannwhitney_u=float(test.statistic), mannwhitney_p=float(test.pvalue),
                       rank_biserial=2.0 * float(test.statistic) / (len(a) * len(b)) - 1.0)
        if len(a) >= 2 and len(b) >= 2:  # scipy's permutation test needs two values a side
            perm = stats.permutation_test((a, b), _mean_difference, vectorized=True,
                                          n_resamples=n_resamples, alternative="two-sided",
                                          rng=np.random.default_rng(seed))
            row["permutation_p"] = float(perm.pvalue)
        rows.append(row)
    return pd.DataFrame(rows)


def compare_edge_frequencies(in_graph_a: torch.Tensor, in_graph_b: torch.Tensor,
                             layout: GraphLayout) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-edge comparison of two sets of circuits `[n_a | n_b, n_forward, n_backward]`.

    Returns a frame with one row per edge present in any circuit (`edge`, `count_a`, `count_b`,
    `frequency_a`, `frequency_b`, `difference` = a - b, two-sided Fisher exact `p_value`,
    Benjamini-Hochberg `q_value`), sorted by |difference|, and a summary: edges in either set,
    Pearson correlation of the frequencies, Jaccard overlap of the consensus circuits (edges in
    at least half of a set's circuits), edges with q < 0.05.
    """
    counts_a = edge_vector(_batched(in_graph_a), layout).long().sum(dim=0).numpy()
    counts_b = edge_vector(_batched(in_graph_b), layout).long().sum(dim=0).numpy()
    n_a, n_b = len(_batched(in_graph_a)), len(_batched(in_graph_b))
    present = np.flatnonzero((counts_a + counts_b) > 0)
    ca, cb = counts_a[present], counts_b[present]
    # Fisher's test depends only on (count_a, count_b): one call per distinct pair.
    pairs, inverse = np.unique(np.stack([ca, cb], axis=1), axis=0, return_inverse=True)
    pair_p = np.array([stats.fisher_exact([[a, n_a - a], [b, n_b - b]]).pvalue
                       for a, b in pairs])
    p_values = pair_p[inverse.reshape(-1)] if len(present) else np.array([])
    names = edge_names(layout)
    frame = pd.DataFrame({
        "edge": [names[i] for i in present],
        "count_a": ca, "count_b": cb,
        "frequency_a": ca / n_a, "frequency_b": cb / n_b,
    })
    frame["difference"] = frame["frequency_a"] - frame["frequency_b"]
    frame["p_value"] = p_values
    frame["q_value"] = stats.false_discovery_control(p_values) if len(present) else p_values
    frame = frame.reindex(frame["difference"].abs().sort_values(ascending=False,
                                                                kind="stable").index)
    consensus_a, consensus_b = counts_a / n_a >= 0.5, counts_b / n_b >= 0.5
    union = int((consensus_a | consensus_b).sum())
    summary = {
        "n_edges_in_any": len(present),
        "n_edges_only_a": int(((ca > 0) & (cb == 0)).sum()),
        "n_edges_only_b": int(((cb > 0) & (ca == 0)).sum()),
        "frequency_correlation": _pearson(counts_a / n_a, counts_b / n_b),
        "consensus_jaccard": (int((consensus_a & consensus_b).sum()) / union) if union else None,
        "n_significant_q05": int((frame["q_value"] < 0.05).sum()),
    }
    return frame.reset_index(drop=True), summary


def head_share(counts: np.ndarray, k: int) -> np.ndarray:
    """Share of a set's edge occurrences in its `k` most frequent edges: `counts` `[..., E]`
    (per-edge circuit counts) -> `[...]` (NaN for a set without edges)."""
    counts = np.asarray(counts, dtype=np.float64)
    top = -np.sort(-counts, axis=-1)[..., :k].sum(axis=-1)
    total = counts.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, top / total, np.nan)


def compare_frequency_distributions(in_graph_a: torch.Tensor, in_graph_b: torch.Tensor,
                                    layout: GraphLayout, *, head_fraction: float = 0.1,
                                    n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Do two sets' edge-frequency distributions differ, and which has the heavier head?

    Over the edges present in either set (`[n_a | n_b, n_forward, n_backward]` circuits):
    `ks_statistic`, `ks_p` (two-sample Kolmogorov-Smirnov on the per-edge frequencies of the
    two sets), and `head_share_a`, `head_share_b` (`head_share` of the `k = ceil(head_fraction
    * n_present)` most frequent edges of each set), with `head_share_p`, a two-sided
    permutation p-value of their difference (circuits relabelled between the sets,
    `n_resamples` seeded draws, p = (1 + #) / (1 + n_resamples)).
    """
    vectors_a = edge_vector(_batched(in_graph_a), layout).numpy()
    vectors_b = edge_vector(_batched(in_graph_b), layout).numpy()
    present = np.flatnonzero(vectors_a.any(axis=0) | vectors_b.any(axis=0))
    pooled = np.concatenate([vectors_a[:, present], vectors_b[:, present]]).astype(np.float64)
    n_a = len(vectors_a)
    result: dict[str, Any] = {"n_edges_present": len(present), "head_fraction": head_fraction,
                              "ks_statistic": np.nan, "ks_p": np.nan, "head_share_a": np.nan,
                              "head_share_b": np.nan, "head_share_p": np.nan}
    if not len(present):
        return result
    k = math.ceil(head_fraction * len(present))
    freq_a, freq_b = pooled[:n_a].mean(axis=0), pooled[n_a:].mean(axis=0)
    ks = stats.ks_2samp(freq_a, freq_b)
    share_a, share_b = head_share(pooled[:n_a].sum(axis=0), k), head_share(
        pooled[n_a:].sum(axis=0), k)
    observed = abs(share_a - share_b)
    rng = np.random.default_rng(seed)
    extreme = 0
    for _ in range(n_resamples):
        order = rng.permutation(len(pooled))
        diff = head_share(pooled[order[:n_a]].sum(axis=0), k) - head_share(
            pooled[order[n_a:]].sum(axis=0), k)
        extreme += int(abs(diff) >= observed - 1e-12)
    result.update(ks_statistic=float(ks.statistic), ks_p=float(ks.pvalue),
                  head_share_a=float(share_a), head_share_b=float(share_b),
                  head_share_p=(1 + extreme) / (1 + n_resamples), head_k=k)
    return result


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def compare_groups(masks: dict[str, torch.Tensor], layout: GraphLayout, *,
                   n_resamples: int = 9999, seed: int = 0, top_edges: int = 20
                   ) -> dict[str, Any]:
    """Every pair of groups (`name -> [n, n_forward, n_backward]` masks): scalar tests and the
    edge-frequency summary with its `top_edges` most different edges."""
    tables = {name: circuit_statistics(m, layout) for name, m in masks.items()}
    result = {}
    for a, b in combinations(sorted(masks), 2):
        tests = compare_statistics(tables[a], tables[b], n_resamples=n_resamples, seed=seed)
        edges, summary = compare_edge_frequencies(masks[a], masks[b], layout)
        result[f"{a}_vs_{b}"] = {
            "a": a, "b": b,
            "statistics": tests.to_dict(orient="records"),
            "edges": summary,
            "top_edges": edges.head(top_edges).to_dict(orient="records"),
        }
    return result


def plot_layer_histograms(masks: dict[str, torch.Tensor], layout: GraphLayout) -> Figure:
    """Grouped bars: mean fraction of a circuit's edges per reader layer, one colour a group."""
    labels = [str(layer) for layer in range(layout.n_layers)] + ["logits"]
    x = np.arange(len(labels))
    width = 0.8 / max(len(masks), 1)
    fig = Figure(figsize=(max(6, 0.4 * len(labels)), 4))
    ax = fig.subplots()
    for i, (name, m) in enumerate(sorted(masks.items())):
        hist = layer_histogram(m, layout).double()
        fractions = (hist / hist.sum(dim=-1, keepdim=True).clamp(min=1)).mean(dim=0)
        ax.bar(x + (i - (len(masks) - 1) / 2) * width, fractions.numpy(), width, label=name)
    ax.set(xticks=x, xlabel="reader layer", ylabel="mean fraction of edges",
           title="Edges by layer")
    ax.set_xticklabels(labels)
    ax.legend()
    return fig


def plot_depth_distributions(tables: dict[str, pd.DataFrame]) -> Figure:
    """Histograms of `mean_depth` and `max_depth` per group."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, column in zip(axes, ("mean_depth", "max_depth"), strict=True):
        values = {name: table[column].dropna().to_numpy() for name, table in sorted(tables.items())}
        pooled = np.concatenate([*values.values(), np.zeros(0)])
        bins = np.histogram_bin_edges(pooled, bins=20) if len(pooled) else 20  # shared by groups
        for name, group_values in values.items():
            if len(group_values):
                ax.hist(group_values, bins=bins, alpha=0.5, label=name)
        ax.set(xlabel=column, ylabel="circuits")
        if ax.get_legend_handles_labels()[1]:
            ax.legend()
    axes[0].set_title("mean layer span of edges")
    axes[1].set_title("longest path (components)")
    return fig


def plot_edge_frequencies(masks: dict[str, torch.Tensor], layout: GraphLayout) -> Figure:
    """Histogram of the frequencies of the edges used by a group; with two groups also a
    scatter of one group's edge frequency against the other's."""
    freqs = {name: edge_frequency(m, layout).numpy() for name, m in sorted(masks.items())}
    pairwise = len(freqs) == 2
    fig = Figure(figsize=(10 if pairwise else 5, 4))
    axes = fig.subplots(1, 2 if pairwise else 1, squeeze=False)
    for name, freq in freqs.items():
        axes[0, 0].hist(freq[freq > 0], bins=20, range=(0, 1), alpha=0.5, label=name)
    axes[0, 0].set(xlabel="edge frequency in the group's circuits", ylabel="edges")
    axes[0, 0].legend()
    if pairwise:
        (a, fa), (b, fb) = freqs.items()
        used = (fa > 0) | (fb > 0)
        axes[0, 1].scatter(fa[used], fb[used], s=6, alpha=0.5)
        axes[0, 1].plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        axes[0, 1].set(xlabel=f"frequency in {a}", ylabel=f"frequency in {b}")
    return fig


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write the figure (laid out tight) as a `PNG_DPI` PNG atomically (temporary file, then
    rename); returns `path`."""
    path = Path(path)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=PNG_DPI, format="png"))
    return path


@dataclass
class GroupCircuits:
    """The stored circuits of named groups of samples, all selected alike. Per group: `ids`,
    its samples with a stored circuit (in the group's order); `not_stored`, those without;
    `masks` `[n_ids, n_forward, n_backward]`; `tables`, their `circuit_statistics` (one row
    per id, with `sample_id`)."""

    layout: GraphLayout
    ids: dict[str, list[str]]
    not_stored: dict[str, list[str]]
    masks: dict[str, torch.Tensor]
    tables: dict[str, pd.DataFrame]

    def figures(self) -> dict[str, Figure]:
        """The layer-histogram, depth and edge-frequency plots of the groups, by name."""
        return {"layer_histogram": plot_layer_histograms(self.masks, self.layout),
                "depth": plot_depth_distributions(self.tables),
                "edge_frequency": plot_edge_frequencies(self.masks, self.layout)}


def group_circuits(store: CircuitStore, groups: Mapping[str, Sequence[str]],
                   selection: str = "topn", *, n: int | None = None,
                   threshold: float | None = None, source: str | None = None
                   ) -> GroupCircuits:
    """Each group's stored circuits by `selection` (`n` edges, or `threshold`; then pruning).
    A group none of whose samples has a stored circuit is a `DataError` naming it, with
    `source` (the file that named the groups; default the store)."""
    ids = {name: [i for i in group if i in store] for name, group in groups.items()}
    not_stored = {name: [i for i in group if i not in store] for name, group in groups.items()}
    empty = [name for name, group in ids.items() if not group]
    if empty:
        raise DataError(f"no stored circuit for any sample of group(s) {', '.join(empty)}",
                        source=source or str(store.directory))
    layout = store.layout
    masks = {name: store.circuits(group, selection, n=n, threshold=threshold)
             for name, group in ids.items()}
    tables = {name: circuit_statistics(masks[name], layout, group) for name, group in ids.items()}
    return GroupCircuits(layout, ids, not_stored, masks, tables)


def aggregate_statistics(store: CircuitStore, sample_ids: Sequence[str], selection: str, *,
                         n: int | None = None, threshold: float | None = None
                         ) -> dict[str, float]:
    """Statistics of a set's aggregate circuit (mean scores over the set, then selection)."""
    layout = store.layout
    mask = select(store.mean_scores(sample_ids), layout, selection, n=n, threshold=threshold)
    return circuit_statistics(mask, layout).iloc[0].to_dict()


def write_group_analysis(store: CircuitStore, circuits: GroupCircuits, out_dir: str | Path, *,
                         selection: str, n: int | None, threshold: float | None,
                         n_resamples: int = 9999, seed: int = 0) -> dict[str, Any]:
    """`unlearnscope circuits analyze`'s products in `out_dir`: `circuit_statistics.parquet`
    (the groups' `tables` with a `group` column), `summary.json` (the store, the selection, per
    group `set_summary`, its aggregate circuit's statistics and the samples without a stored
    circuit; `compare_groups` of every pair; the plot files; NaN written as null) and the three
    PNG plots. Returns the summary."""
    out = Path(out_dir)
    layout = circuits.layout
    tables = []
    for name, table in circuits.tables.items():
        table = table.copy()
        table.insert(1, "group", name)
        tables.append(table)
    write_parquet(out / "circuit_statistics.parquet", pd.concat(tables))
    figures = circuits.figures()
    summary = {
        "store": str(store.directory), "header": store.header,
        "selection": {"method": selection, "n": n, "threshold": threshold},
        "n_edges_in_graph": layout.n_edges,
        "groups": {name: {**set_summary(circuits.masks[name], layout),
                          "aggregate_circuit": aggregate_statistics(
                              store, ids, selection, n=n, threshold=threshold),
                          "missing_samples": circuits.not_stored[name]}
                   for name, ids in circuits.ids.items()},
        "comparisons": compare_groups(circuits.masks, layout, n_resamples=n_resamples,
                                      seed=seed) if len(circuits.ids) > 1 else {},
        "plots": [p.name for p in (
            save_png(figures["layer_histogram"], out / "layer_histogram.png"),
            save_png(figures["depth"], out / "depth.png"),
            save_png(figures["edge_frequency"], out / "edge_frequency.png"))],
    }
    write_json(out / SUMMARY_FILE, _strict_json(summary))
    return summary


def _strict_json(value):
    """NaN (undefined statistics, untestable groups) as null, so any JSON reader accepts it."""
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value

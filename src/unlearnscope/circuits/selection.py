"""Circuit selection from edge scores, batched over samples.

A circuit is a bool mask `in_graph` `[..., n_forward, n_backward]` over the reference layout
(`GraphLayout`); leading dimensions are samples. Selection follows the reference EAP-IG library
(Hanna et al. 2024, `Graph.apply_topn`, `apply_threshold`, `apply_greedy`, `prune`):

- `topn`: the n real edges of largest |score|.
- `threshold`: every real edge with |score| >= threshold.
- `greedy`: start from the logits and repeatedly add the highest-scoring edge whose reader
  belongs to a node already in the circuit; an edge's writer joins the circuit with it, which
  makes that writer's own input edges candidates.
- `prune`: repeatedly drop nodes that lack an incoming edge (the input always has one) or an
  outgoing edge, then the edges whose writer or reader node was dropped, until nothing changes.
  What remains is exactly the set of selected edges on some input -> logits path. (The reference
  stops as soon as its node set is unchanged after one round, which after `apply_topn` is always
  the first round and can leave dangling nodes; we run to the fixed point its docstring states.)

Circuit vectors flatten a `[n_forward, n_backward]` matrix over the real edges in
`real_edge_mask.nonzero()` order (writer-major), see `edge_index`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.errors import DataError, UnknownNameError


@lru_cache(maxsize=16)
def edge_index(layout: GraphLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """`(writer, reader)` long tensors `[n_edges]` of the real edges in `nonzero()` order."""
    pairs = layout.real_edge_mask.nonzero()
    return pairs[:, 0], pairs[:, 1]


def edge_names(layout: GraphLayout) -> list[str]:
    """Reference edge names (`input->a0.h0<q>`, `a0.h1->m0`, `m1->logits`) in vector order."""
    writers, readers = edge_index(layout)
    fwd, bwd = layout.forward_names, layout.backward_names
    return [f"{fwd[w]}->{bwd[r]}" for w, r in zip(writers.tolist(), readers.tolist(), strict=True)]


def edge_vector(matrix: torch.Tensor, layout: GraphLayout) -> torch.Tensor:
    """Real edges of `matrix` `[..., n_forward, n_backward]` as `[..., n_edges]`."""
    writers, readers = edge_index(layout)
    return matrix[..., writers.to(matrix.device), readers.to(matrix.device)]


def edge_matrix(vector: torch.Tensor, layout: GraphLayout) -> torch.Tensor:
    """Inverse of `edge_vector`: `[..., n_edges]` -> `[..., n_forward, n_backward]`, zero (or
    False) off the real edges."""
    writers, readers = edge_index(layout)
    out = vector.new_zeros((*vector.shape[:-1], layout.n_forward, layout.n_backward))
    out[..., writers.to(vector.device), readers.to(vector.device)] = vector
    return out


@lru_cache(maxsize=16)
def reader_owner(layout: GraphLayout) -> torch.Tensor:
    """Forward index of the node each reader belongs to, `[n_backward]` long; the logits reader
    gets `n_forward` (the reference gives the logits node that forward index too)."""
    owner = torch.empty(layout.n_backward, dtype=torch.long)
    for layer in range(layout.n_layers):
        for head in range(layout.n_heads):
            for qkv in "qkv":
                owner[layout.qkv_backward_index(layer, head, qkv)] = layout.head_forward_index(
                    layer, head)
        owner[layout.mlp_backward_index(layer)] = layout.mlp_forward_index(layer)
    owner[layout.logits_backward_index] = layout.n_forward
    return owner


def _per_node(per_reader: torch.Tensor, layout: GraphLayout) -> torch.Tensor:
    """Sum `[..., n_backward]` over each node's readers -> `[..., n_forward + 1]` (logits last).
    A scatter-add: a one-hot matrix product would cost n_forward times more."""
    out = per_reader.new_zeros((*per_reader.shape[:-1], layout.n_forward + 1))
    return out.index_add_(-1, reader_owner(layout).to(per_reader.device), per_reader)


def node_adjacency(in_graph: torch.Tensor, layout: GraphLayout) -> torch.Tensor:
    """Which writer feeds which node through a selected edge: `[..., n_forward, n_forward + 1]`
    bool from `in_graph` `[..., n_forward, n_backward]` (node index = the node's writer index,
    the logits last; a head's q, k and v readers all belong to the head)."""
    return _per_node(in_graph.float(), layout) > 0


def circuit_nodes(in_graph: torch.Tensor, layout: GraphLayout) -> torch.Tensor:
    """Writers with an outgoing and an incoming edge (the input counts as having one), as the
    reference's `nodes_in_graph`: `[..., n_forward]` bool from `in_graph`
    `[..., n_forward, n_backward]`."""
    has_out = in_graph.any(dim=-1)
    reader_has_in = in_graph.any(dim=-2).float()
    has_in = _per_node(reader_has_in, layout)[..., : layout.n_forward] > 0
    has_in[..., 0] = True
    return has_out & has_in


def _closure(nodes: torch.Tensor, step: Callable[[torch.Tensor], torch.Tensor]
             ) -> torch.Tensor:
    """Grow a 0/1 node set `[..., n_nodes]` by `step` (one hop) until it stops changing."""
    while True:
        grown = (nodes + step(nodes)).clamp(max=1)
        if torch.equal(grown, nodes):
            return nodes
        nodes = grown


def prune(in_graph: torch.Tensor, layout: GraphLayout) -> torch.Tensor:
    """Drop dangling nodes and their edges until none is left (see the module docstring).

    `in_graph` `[..., n_forward, n_backward]` bool -> the pruned mask, same shape.

    The fixed point keeps an edge exactly when its writer is reachable from the input and its
    reader's node reaches the logits through selected edges, so it is computed on the small
    node graph (`[..., n_forward + 1, n_forward + 1]`, node = writer index, logits last) by
    two reachability sweeps, instead of repeated passes over the full edge mask.
    """
    edges = in_graph & layout.real_edge_mask.to(in_graph.device)
    n_nodes = layout.n_forward + 1
    into_node = node_adjacency(edges, layout).float()
    adjacency = torch.cat([into_node, into_node.new_zeros((*into_node.shape[:-2], 1, n_nodes))],
                          dim=-2)
    from_input = adjacency.new_zeros((*adjacency.shape[:-2], n_nodes))
    from_input[..., 0] = 1
    from_input = _closure(from_input, lambda nodes: (nodes.unsqueeze(-2) @ adjacency).squeeze(-2))
    to_logits = torch.zeros_like(from_input)
    to_logits[..., -1] = 1
    to_logits = _closure(to_logits, lambda nodes: (adjacency @ nodes.unsqueeze(-1)).squeeze(-1))
    writer_alive = from_input[..., : layout.n_forward].bool()
    reader_alive = to_logits.bool()[..., reader_owner(layout).to(in_graph.device)]
    return edges & writer_alive[..., :, None] & reader_alive[..., None, :]


def _ranked(scores: torch.Tensor, layout: GraphLayout, absolute: bool) -> torch.Tensor:
    """Scores used for ranking, `-inf` off the real edges."""
    ranked = scores.abs() if absolute else scores.clone()
    return ranked.float().masked_fill(~layout.real_edge_mask.to(scores.device), -torch.inf)


def _check_n(n: int, layout: GraphLayout) -> None:
    if not 0 <= n <= layout.n_edges:
        raise DataError(f"cannot select {n} edges from a graph of {layout.n_edges} edges",
                        field="top_n")


def select_topn(scores: torch.Tensor, layout: GraphLayout, n: int, *, absolute: bool = True,
                prune_nodes: bool = True) -> torch.Tensor:
    """The `n` real edges of largest |score| (or score when `absolute=False`) per sample.

    `scores` `[..., n_forward, n_backward]` -> bool mask of the same shape.
    """
    _check_n(n, layout)
    ranked = _ranked(scores, layout, absolute).flatten(-2)
    top = ranked.topk(n, dim=-1).indices
    mask = torch.zeros_like(ranked, dtype=torch.bool).scatter_(-1, top, True)
    mask = mask.view(scores.shape)
    return prune(mask, layout) if prune_nodes else mask


def select_threshold(scores: torch.Tensor, layout: GraphLayout, threshold: float, *,
                     absolute: bool = True, prune_nodes: bool = True) -> torch.Tensor:
    """Every real edge with |score| (or score) >= `threshold`, `[..., n_forward, n_backward]`."""
    mask = _ranked(scores, layout, absolute) >= threshold
    return prune(mask, layout) if prune_nodes else mask


def _greedy_one(values: np.ndarray, order: np.ndarray, n_real: list[int], n_forward: int,
                n: int) -> list[tuple[int, int]]:
    """Greedy growth for one sample: the `(node row, rank)` of each chosen edge, in order.

    Row c of `values` `[n_nodes, k]` holds node c's input edge scores sorted in decreasing
    order (row `n_nodes - 1` is the logits node; node c + 1 is writer c + 1), `order` their
    flat `(reader slot, writer)` positions and `n_real[c]` how many of them are real edges. The
    frontier of candidate edges is the union of the unused tails of the rows of nodes in the
    circuit, so its best edge is the best row head: a heap over nodes (at most `n_nodes`)
    instead of one over all edges.
    """
    logits_row = len(values) - 1
    position = [0] * len(values)
    heap = [(-float(values[logits_row, 0]), logits_row)]
    writer_in = [False] * n_forward
    chosen = []
    for _ in range(n):
        _, row = heapq.heappop(heap)
        k = position[row]
        chosen.append((row, k))
        position[row] = k + 1
        if k + 1 < n_real[row]:
            heapq.heappush(heap, (-float(values[row, k + 1]), row))
        writer = int(order[row, k]) % n_forward
        if not writer_in[writer]:
            writer_in[writer] = True
            if writer > 0:  # the input has no inputs
                heapq.heappush(heap, (-float(values[writer - 1, 0]), writer - 1))
    return chosen


@lru_cache(maxsize=16)
def _node_input_edges(layout: GraphLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Per receiving node (heads and MLPs in forward order, then logits): its readers, `[n_nodes,
    3]` padded with the logits reader, and a `[n_nodes, 3 * n_forward]` bool of which
    (reader slot, writer) pairs are real edges."""
    owner = reader_owner(layout)
    n_nodes = layout.n_forward  # every writer but the input, plus the logits
    readers = torch.full((n_nodes, 3), layout.logits_backward_index, dtype=torch.long)
    real = torch.zeros((n_nodes, 3, layout.n_forward), dtype=torch.bool)
    for node in range(n_nodes):
        node_readers = (owner == node + 1).nonzero().flatten()
        readers[node, : len(node_readers)] = node_readers
        real[node, : len(node_readers)] = layout.real_edge_mask[:, node_readers].T
    return readers, real.flatten(1)


def select_greedy(scores: torch.Tensor, layout: GraphLayout, n: int, *, absolute: bool = True,
                  prune_nodes: bool = True) -> torch.Tensor:
    """The reference's greedy search from the logits, `n` edges per sample, then pruning.

    `scores` `[..., n_forward, n_backward]` -> bool mask of the same shape. Each node's input
    edges are ranked in one batched top-k; only the `n` heap steps per sample run in Python
    (on the CPU; the mask is returned on the scores' device).
    """
    _check_n(n, layout)
    readers, real = _node_input_edges(layout)
    batch = scores.detach().reshape(-1, layout.n_forward, layout.n_backward).cpu()
    if n == 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    ranked = _ranked(batch, layout, absolute)
    # [batch, n_nodes, 3 (reader slot), n_forward (writer)] -> each node's inputs, best first
    per_node = ranked[:, :, readers].permute(0, 2, 3, 1).flatten(2)
    per_node = per_node.masked_fill(~real, -torch.inf)
    values, order = per_node.topk(min(n, per_node.shape[-1]), dim=-1)
    n_real = real.sum(dim=-1).clamp(max=values.shape[-1]).tolist()
    mask = torch.zeros_like(batch, dtype=torch.bool)
    for i in range(len(batch)):
        chosen = torch.tensor(_greedy_one(values[i].numpy(), order[i].numpy(), n_real,
                                          layout.n_forward, n)).view(-1, 2)
        flat = order[i, chosen[:, 0], chosen[:, 1]]
        mask[i, flat % layout.n_forward, readers[chosen[:, 0], flat // layout.n_forward]] = True
    mask = mask.view(scores.shape).to(scores.device)
    return prune(mask, layout) if prune_nodes else mask


SELECTORS: dict[str, Callable[..., torch.Tensor]] = {
    "topn": select_topn,
    "greedy": select_greedy,
    "threshold": select_threshold,
}


def select(scores: torch.Tensor, layout: GraphLayout, method: str = "topn", *,
           n: int | None = None, threshold: float | None = None, absolute: bool = True,
           prune_nodes: bool = True) -> torch.Tensor:
    """Dispatch to a selector by name: `topn` and `greedy` take `n`, `threshold` takes
    `threshold`. `scores` `[..., n_forward, n_backward]` -> bool mask of the same shape."""
    if method not in SELECTORS:
        raise UnknownNameError("circuit selection", method, list(SELECTORS))
    if method == "threshold":
        if threshold is None:
            raise DataError("selection 'threshold' needs a threshold", field="threshold")
        return select_threshold(scores, layout, threshold, absolute=absolute,
                                prune_nodes=prune_nodes)
    if n is None:
        raise DataError(f"selection '{method}' needs a number of edges", field="top_n")
    return SELECTORS[method](scores, layout, n, absolute=absolute, prune_nodes=prune_nodes)


def edge_count(top_n: float | str, n_edges: int) -> int:
    """A circuit's number of edges from a count, or from a fraction (below 1) of the graph's
    `n_edges` real edges (rounded, at least 1)."""
    try:
        number = float(top_n)
    except ValueError:
        raise DataError(f"not a number: {top_n!r}", field="top_n") from None
    if 0 < number < 1:
        n = max(1, round(number * n_edges))
    elif number >= 1 and number.is_integer():
        n = int(number)
    else:
        n = 0
    if not 1 <= n <= n_edges:
        raise DataError(f"top-n {top_n} must be a count in 1..{n_edges} or a fraction "
                        "in (0, 1)", field="top_n")
    return n


def circuit_vector(in_graph: torch.Tensor, layout: GraphLayout,
                   scores: torch.Tensor | None = None) -> torch.Tensor:
    """Circuit vector over the real edges, `[..., n_edges]` float32: the binary in-circuit
    mask, or mask * score when `scores` `[..., n_forward, n_backward]` is given."""
    vector = edge_vector(in_graph, layout).float()
    if scores is not None:
        vector = vector * edge_vector(scores, layout).float()
    return vector


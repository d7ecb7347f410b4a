"""Circuit selection: top-n, threshold, the reference's greedy search, pruning, vectors."""

from __future__ import annotations

import pytest
import torch

from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.selection import (
    circuit_nodes,
    circuit_vector,
    edge_count,
    edge_matrix,
    edge_names,
    edge_vector,
    prune,
    reader_owner,
    select,
    select_greedy,
    select_threshold,
    select_topn,
)
from unlearnscope.errors import DataError, UnknownNameError

# Two layers, one head: writers input, a0.h0, m0, a1.h0, m1; readers a0.h0<q|k|v>, m0,
# a1.h0<q|k|v>, m1, logits.
SMALL = GraphLayout(2, 1)


def edge(layout: GraphLayout, writer: str, reader: str) -> tuple[int, int]:
    return layout.forward_names.index(writer), layout.backward_names.index(reader)


def mask_of(layout: GraphLayout, pairs: list[tuple[str, str]]) -> torch.Tensor:
    mask = torch.zeros((layout.n_forward, layout.n_backward), dtype=torch.bool)
    for writer, reader in pairs:
        mask[edge(layout, writer, reader)] = True
    return mask


def scores_of(layout: GraphLayout, values: dict[tuple[str, str], float]) -> torch.Tensor:
    scores = torch.zeros((layout.n_forward, layout.n_backward))
    for (writer, reader), value in values.items():
        scores[edge(layout, writer, reader)] = value
    return scores


def test_reader_owner_maps_readers_to_their_nodes() -> None:
    owner = reader_owner(SMALL)
    names = SMALL.forward_names
    assert [names[i] if i < SMALL.n_forward else "logits" for i in owner.tolist()] == [
        "a0.h0", "a0.h0", "a0.h0", "m0", "a1.h0", "a1.h0", "a1.h0", "m1", "logits"]


def test_topn_picks_largest_absolute_real_edges() -> None:
    scores = scores_of(SMALL, {("input", "a0.h0<q>"): -9.0, ("m0", "logits"): 5.0,
                               ("a0.h0", "m0"): 4.0, ("input", "logits"): 0.5,
                               ("a1.h0", "m1"): 3.0})
    scores[edge(SMALL, "m1", "m0")] = 100.0  # not a real edge: must never be picked
    picked = select_topn(scores, SMALL, 3, prune_nodes=False)
    assert torch.equal(picked, mask_of(SMALL, [("input", "a0.h0<q>"), ("m0", "logits"),
                                               ("a0.h0", "m0")]))
    signed = select_topn(scores, SMALL, 3, absolute=False, prune_nodes=False)
    assert torch.equal(signed, mask_of(SMALL, [("m0", "logits"), ("a0.h0", "m0"),
                                               ("a1.h0", "m1")]))


def test_topn_is_batched_per_sample() -> None:
    torch.manual_seed(0)
    layout = GraphLayout(3, 2)
    scores = torch.randn(4, layout.n_forward, layout.n_backward)
    batched = select_topn(scores, layout, 7)
    for i in range(4):
        assert torch.equal(batched[i], select_topn(scores[i], layout, 7))
    assert (select_topn(scores, layout, 7, prune_nodes=False).sum(dim=(1, 2)) == 7).all()


def test_edge_counts_at_the_limits() -> None:
    scores = torch.randn(2, SMALL.n_forward, SMALL.n_backward)
    with pytest.raises(DataError, match="top_n"):
        select_topn(scores, SMALL, SMALL.n_edges + 1)
    with pytest.raises(DataError, match="top_n"):
        select_greedy(scores, SMALL, SMALL.n_edges + 1)
    for selector in (select_topn, select_greedy):
        assert not selector(scores, SMALL, 0).any()
        everything = selector(scores, SMALL, SMALL.n_edges, prune_nodes=False)
        assert (everything == SMALL.real_edge_mask).all()


def test_threshold_keeps_edges_at_or_above() -> None:
    scores = scores_of(SMALL, {("input", "a0.h0<q>"): -2.0, ("a0.h0", "logits"): 2.0,
                               ("input", "logits"): 1.999, ("m0", "logits"): 3.0})
    picked = select_threshold(scores, SMALL, 2.0, prune_nodes=False)
    assert torch.equal(picked, mask_of(SMALL, [("input", "a0.h0<q>"), ("a0.h0", "logits"),
                                               ("m0", "logits")]))
    # m0 has no input edge: pruning removes it and its edge to the logits
    assert torch.equal(select_threshold(scores, SMALL, 2.0),
                       mask_of(SMALL, [("input", "a0.h0<q>"), ("a0.h0", "logits")]))


def test_greedy_grows_from_the_logits() -> None:
    scores = scores_of(SMALL, {
        ("input", "a0.h0<q>"): 10.0,  # the largest, but a0.h0 is not reached in 3 steps
        ("m1", "logits"): 5.0, ("input", "logits"): 1.0,
        ("a1.h0", "m1"): 3.0, ("input", "m1"): 2.0,
        ("a0.h0", "a1.h0<v>"): 4.0, ("input", "a1.h0<q>"): 0.2,
    })
    greedy = select_greedy(scores, SMALL, 3, prune_nodes=False)
    assert torch.equal(greedy, mask_of(SMALL, [("m1", "logits"), ("a1.h0", "m1"),
                                               ("a0.h0", "a1.h0<v>")]))
    # a fourth step reaches the largest edge through a0.h0, now in the circuit
    greedy4 = select_greedy(scores, SMALL, 4, prune_nodes=False)
    assert greedy4[edge(SMALL, "input", "a0.h0<q>")]
    # with pruning the 3-edge circuit has no path from the input and is empty
    assert not select_greedy(scores, SMALL, 3).any()
    assert torch.equal(select_greedy(scores, SMALL, 4), greedy4)


def naive_greedy(scores: torch.Tensor, layout: GraphLayout, n: int) -> torch.Tensor:
    """The reference's definition, edge by edge: the best edge into a node in the circuit."""
    owner = reader_owner(layout).tolist()
    real = layout.real_edge_mask
    in_nodes = {layout.n_forward}  # the logits
    chosen = torch.zeros_like(real)
    for _ in range(n):
        best, best_value = None, -float("inf")
        for w in range(layout.n_forward):
            for r in range(layout.n_backward):
                if real[w, r] and not chosen[w, r] and owner[r] in in_nodes:
                    value = abs(float(scores[w, r]))
                    if value > best_value:
                        best, best_value = (w, r), value
        chosen[best] = True
        in_nodes.add(best[0])
    return chosen


@pytest.mark.parametrize("parallel", [False, True])
def test_greedy_matches_the_edge_by_edge_definition(parallel: bool) -> None:
    torch.manual_seed(1)
    layout = GraphLayout(3, 2, parallel)
    scores = torch.randn(3, layout.n_forward, layout.n_backward)
    batched = select_greedy(scores, layout, 25, prune_nodes=False)
    for i in range(3):
        assert torch.equal(batched[i], naive_greedy(scores[i], layout, 25))
        assert int(batched[i].sum()) == 25


def test_prune_removes_dangling_nodes_repeatedly() -> None:
    path = [("input", "a0.h0<q>"), ("a0.h0", "m1"), ("m1", "logits")]
    dangling = [
        ("a1.h0", "m1"),             # a1.h0 has no input
        ("input", "m0"),             # m0 has no output
        ("input", "a0.h0<k>"),       # kept: a0.h0 is on the path
    ]
    mask = mask_of(SMALL, path + dangling)
    expected = mask_of(SMALL, [*path, ("input", "a0.h0<k>")])
    assert torch.equal(prune(mask, SMALL), expected)
    # a chain that only becomes dangling after a first round: input -> a0 -> a1, a1 dead end
    chain = mask_of(SMALL, [("input", "a0.h0<q>"), ("a0.h0", "a1.h0<k>")])
    assert not prune(chain, SMALL).any()
    assert torch.equal(circuit_nodes(expected, SMALL),
                       torch.tensor([True, True, False, False, True]))


def on_input_logits_path(mask: torch.Tensor, layout: GraphLayout) -> torch.Tensor:
    """Independent check: edges whose writer is reachable from the input and whose reader's
    node reaches the logits, by graph search over the selected edges."""
    owner = reader_owner(layout).tolist()
    edges = [(w, owner[r]) for w, r in mask.nonzero().tolist()]
    reach_from_input, stack = {0}, [0]
    while stack:
        node = stack.pop()
        for w, v in edges:
            if w == node and v not in reach_from_input:
                reach_from_input.add(v)
                stack.append(v)
    reach_logits, stack = {layout.n_forward}, [layout.n_forward]
    while stack:
        node = stack.pop()
        for w, v in edges:
            if v == node and w not in reach_logits:
                reach_logits.add(w)
                stack.append(w)
    keep = torch.zeros_like(mask)
    for w, r in mask.nonzero().tolist():
        if w in reach_from_input and owner[r] in reach_logits:
            keep[w, r] = True
    return keep


@pytest.mark.parametrize("parallel", [False, True])
def test_prune_keeps_exactly_the_edges_on_input_to_logits_paths(parallel: bool) -> None:
    torch.manual_seed(2)
    layout = GraphLayout(4, 2, parallel)
    masks = (torch.rand(6, layout.n_forward, layout.n_backward) < 0.2) & layout.real_edge_mask
    pruned = prune(masks, layout)
    for i in range(6):
        assert torch.equal(pruned[i], on_input_logits_path(masks[i], layout))
    assert torch.equal(prune(pruned, layout), pruned)


def test_select_dispatch_and_errors() -> None:
    scores = torch.randn(SMALL.n_forward, SMALL.n_backward)
    assert torch.equal(select(scores, SMALL, "topn", n=4), select_topn(scores, SMALL, 4))
    assert torch.equal(select(scores, SMALL, "greedy", n=4), select_greedy(scores, SMALL, 4))
    assert torch.equal(select(scores, SMALL, "threshold", threshold=0.5),
                       select_threshold(scores, SMALL, 0.5))
    with pytest.raises(UnknownNameError):
        select(scores, SMALL, "random", n=3)
    with pytest.raises(DataError):
        select(scores, SMALL, "threshold")


def test_edge_vectors_round_trip_in_nonzero_order() -> None:
    layout = GraphLayout(2, 2)
    torch.manual_seed(3)
    matrix = torch.randn(2, layout.n_forward, layout.n_backward) * layout.real_edge_mask
    vector = edge_vector(matrix, layout)
    assert vector.shape == (2, layout.n_edges)
    assert torch.equal(vector[1], matrix[1][layout.real_edge_mask])  # row-major = nonzero order
    assert torch.equal(edge_matrix(vector, layout), matrix)
    names = edge_names(layout)
    assert names[0] == "input->a0.h0<q>" and names[-1] == "m1->logits"
    assert "a0.h1->m0" in names and "m1->m0" not in names


def test_circuit_vector_binary_and_weighted() -> None:
    scores = scores_of(SMALL, {("input", "a0.h0<q>"): -2.0, ("a0.h0", "logits"): 3.0,
                               ("input", "logits"): 7.0})
    mask = mask_of(SMALL, [("input", "a0.h0<q>"), ("a0.h0", "logits")])
    names = edge_names(SMALL)
    binary = circuit_vector(mask, SMALL)
    weighted = circuit_vector(mask, SMALL, scores)
    assert binary[names.index("input->a0.h0<q>")] == 1 and binary.sum() == 2
    assert weighted[names.index("input->a0.h0<q>")] == -2.0
    assert weighted[names.index("a0.h0->logits")] == 3.0
    assert weighted[names.index("input->logits")] == 0.0


def test_edge_count_counts_and_fractions() -> None:
    layout = GraphLayout(2, 4)
    assert layout.n_edges == 110
    assert edge_count("20", layout.n_edges) == 20 and edge_count(20, layout.n_edges) == 20
    assert edge_count("0.1", layout.n_edges) == 11
    assert edge_count(0.001, layout.n_edges) == 1
    for bad in ("0", "-3", "2.5", "111", "many"):
        with pytest.raises(DataError, match="top_n"):
            edge_count(bad, layout.n_edges)

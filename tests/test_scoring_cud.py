"""CUD: similarities and the formula by hand, edge cases (identical vectors, zero vectors, the
anchors themselves), monotonicity, and the `cud` scorer end to end on the tiny Llama."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from cud_runs import cud_scores
from unlearnscope.anchors import AnchorSets, write_anchors
from unlearnscope.circuits import attribute, graph_layout
from unlearnscope.circuits.compute import ATTRIBUTION_PRESETS, compute_circuits
from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.selection import edge_count, edge_matrix, edge_vector
from unlearnscope.circuits.store import CircuitStore, ShardWriter, write_header, write_index
from unlearnscope.data.tokenize import collate, encode_samples, pad_id
from unlearnscope.errors import DataError, UnknownNameError
from unlearnscope.scoring import get_scorer, read_scorer_configs, score_samples
from unlearnscope.scoring.cud import (
    PAPER_PRESET,
    anchor_aggregate,
    circuit_vectors,
    cud,
    cud_from_aggregates,
    cud_from_similarities,
    similarity,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ---- similarities and the formula --------------------------------------------------------


def test_similarities_by_hand_binary():
    v, a = t(1, 1, 0, 0, 1), t(1, 0, 1, 0, 1)
    assert float(similarity(v[None], a, "cosine")[0]) == pytest.approx(2 / 3)
    assert float(similarity(v[None], a, "jaccard")[0]) == pytest.approx(2 / 4)
    assert float(similarity(v[None], a, "hamming")[0]) == pytest.approx(1 - 2 / 5)


def test_similarities_by_hand_weighted():
    v, a = t(1, 0, -2, 0), t(1, 1, 0, 0)
    assert float(similarity(v[None], a, "cosine")[0]) == pytest.approx(1 / math.sqrt(10))
    # sum min(|v|, |a|) = 1 + 0 + 0 + 0, sum max = 1 + 1 + 2 + 0
    assert float(similarity(v[None], a, "jaccard")[0]) == pytest.approx(1 / 4)
    # masks 1010 vs 1100 differ at 2 of 4 edges
    assert float(similarity(v[None], a, "hamming")[0]) == pytest.approx(1 / 2)
    assert float(similarity(-a[None], a, "cosine")[0]) == pytest.approx(-1.0)


def test_zero_vectors():
    zero, a = t(0, 0, 0), t(0, 2, 1)
    for kind in ("cosine", "jaccard", "hamming"):
        assert float(similarity(zero[None], zero, kind)[0]) == 1.0
    assert float(similarity(zero[None], a, "cosine")[0]) == 0.0
    assert float(similarity(a[None], zero, "cosine")[0]) == 0.0
    assert float(similarity(zero[None], a, "jaccard")[0]) == 0.0
    assert float(similarity(zero[None], a, "hamming")[0]) == pytest.approx(1 / 3)
    # a zero sample circuit is equally far from two non-zero anchors under cosine
    assert float(cud(zero[None], a, t(1, 0, 0))[0]) == 0.5
    # a zero sample next to a zero easy anchor is as easy as it gets
    assert float(cud(zero[None], zero, a)[0]) == 0.0
    with pytest.raises(UnknownNameError):
        similarity(zero[None], a, "euclid")


def test_formula_by_hand():
    values = cud_from_similarities(t(1.0, 0.5, 0.2, 1.0, -1.0), t(0.0, 0.75, 0.2, 1.0, 1.0))
    torch.testing.assert_close(values, t(0.0, 0.5 / 0.75, 0.5, 0.5, 1.0))


def test_identical_vectors_give_one_half():
    vector = t(0.3, 0, 1, 1)
    for kind in ("cosine", "jaccard", "hamming"):
        assert float(cud(vector[None], vector, vector, kind)[0]) == 0.5


def test_anchors_themselves_score_zero_and_one():
    generator = torch.Generator().manual_seed(0)
    easy = torch.randn(4, 40, generator=generator)
    hard = torch.randn(5, 40, generator=generator)
    aggregates = torch.stack([easy.mean(0), hard.mean(0)])
    for kind in ("cosine", "jaccard", "hamming"):
        for vector in ("binary", "weighted"):
            values = cud_scores(aggregates, easy, hard, top_n=8, similarity=kind, vector=vector)
            torch.testing.assert_close(values, t(0.0, 1.0))


def test_moving_from_easy_to_hard_raises_cud():
    generator = torch.Generator().manual_seed(1)
    easy, hard = torch.randn(30, generator=generator), torch.randn(30, generator=generator)
    path = torch.stack([(1 - s) * easy + s * hard for s in torch.linspace(0, 1, 11)])
    values = cud(path, easy, hard, "cosine")
    assert float(values[0]) == 0.0 and float(values[-1]) == 1.0
    assert bool((values.diff() > 0).all())
    # binary circuits: swap the easy circuit's edges for the hard circuit's one at a time
    easy_mask = torch.zeros(30)
    easy_mask[:6] = 1
    hard_mask = torch.zeros(30)
    hard_mask[4:10] = 1
    steps = [easy_mask.clone()]
    for drop, add in zip([0, 1, 2, 3], [6, 7, 8, 9], strict=True):
        current = steps[-1].clone()
        current[drop], current[add] = 0, 1
        steps.append(current)
    for kind in ("cosine", "jaccard", "hamming"):
        values = cud(torch.stack(steps), easy_mask, hard_mask, kind)
        assert bool((values.diff() > 0).all()), kind
        assert float(values[0]) == 0.0 and float(values[-1]) == 1.0


# ---- circuit vectors and anchors ---------------------------------------------------------


def test_circuit_vectors_top_n_by_absolute_score():
    scores = torch.tensor([[3.0, -5.0, 1.0, 0.5], [0.1, 0.2, -0.3, 0.0]])
    binary = circuit_vectors(scores, 2)
    torch.testing.assert_close(binary, torch.tensor([[1.0, 1, 0, 0], [0, 1, 1, 0]]))
    weighted = circuit_vectors(scores, 0.5, vector="weighted")
    torch.testing.assert_close(weighted, torch.tensor([[3.0, -5, 0, 0], [0, 0.2, -0.3, 0]]))
    assert edge_count(0.05, 100) == 5 and edge_count(3, 100) == 3 and edge_count(0.001, 10) == 1
    for bad in (0, 101, 2.5):
        with pytest.raises(DataError, match="top_n"):
            edge_count(bad, 100)


def test_circuit_vectors_with_layout_select_and_prune():
    layout = GraphLayout(2, 2)
    generator = torch.Generator().manual_seed(2)
    scores = torch.randn(3, layout.n_edges, generator=generator)
    vectors = circuit_vectors(scores, 6, layout=layout)
    assert vectors.shape == (3, layout.n_edges)
    assert bool((vectors.sum(dim=1) <= 6).all())
    # pruned circuits keep only edges among the 6 largest |scores|
    plain = circuit_vectors(scores, 6)
    assert bool((vectors <= plain).all())
    # the anchors still score 0 and 1 after pruning
    easy, hard = scores[:2], scores[2:]
    values = cud_scores(torch.stack([easy.mean(0), hard.mean(0)]), easy, hard, top_n=6,
                        layout=layout)
    assert values.tolist() == [0.0, 1.0]


def test_greedy_circuits_keep_dangling_nodes_unless_pruned():
    """Greedy from the logits takes a1.h0 -> logits, then m1 -> logits (above any input of
    a1.h0): neither node has an input edge, so pruning empties the circuit."""
    layout = GraphLayout(2, 2)
    matrix = torch.full((layout.n_forward, layout.n_backward), 1e-3)
    matrix[layout.head_forward_index(1, 0), layout.logits_backward_index] = 10.0
    matrix[layout.mlp_forward_index(1), layout.logits_backward_index] = -5.0
    scores = edge_vector(matrix * layout.real_edge_mask, layout)[None]
    kept = circuit_vectors(scores, 2, layout=layout, selection="greedy", prune=False)
    assert kept.sum() == 2 and kept[0, scores[0].abs().topk(2).indices].sum() == 2
    assert circuit_vectors(scores, 2, layout=layout, selection="greedy").sum() == 0
    assert _greedy_edges(scores[0], layout, 2) == set(scores[0].abs().topk(2).indices.tolist())
    with pytest.raises(DataError, match="layout"):
        circuit_vectors(scores, 2, selection="greedy")


def test_method_averaged_anchor_weighs_methods_equally():
    a = t(0, 0, 3, 3).reshape(2, 2)  # method A's set: mean [1.5, 1.5]
    b = t(4, 0).reshape(1, 2)  # method B's set: mean [4, 0]
    torch.testing.assert_close(anchor_aggregate([a, b]), t(2.75, 0.75))
    with pytest.raises(DataError):
        anchor_aggregate([a, t().reshape(0, 2)])


# ---- the scorer on the tiny model --------------------------------------------------------

IG_STEPS = 2
TOP_N = 30


@pytest.fixture(scope="module")
def tiny_circuits(tiny_lm, small_samples):
    """Edge scores `[n, E]` of the small samples, attributed directly."""
    model, tokenizer = tiny_lm
    encoded = encode_samples(tokenizer, small_samples).samples
    result = attribute(model, collate(encoded, pad_id(tokenizer)), ig_steps=IG_STEPS)
    return edge_vector(result.scores, result.layout)


@pytest.fixture(scope="module")
def anchors_file(small_samples, tmp_path_factory):
    ids = [s.id for s in small_samples]
    sets = AnchorSets("vote", 2, easy=ids[:2], hard=ids[2:4], fit_ids=ids[:6],
                      held_out_ids=ids[6:],
                      per_method={"npo": {"easy": ids[:2], "hard": ids[2:4]},
                                  "rmu": {"easy": [ids[0], ids[4]], "hard": [ids[3], ids[5]]}})
    folder = tmp_path_factory.mktemp("anchors")
    write_anchors(folder, sets)
    return folder / "anchors.json"


def test_scorer_attributes_on_the_fly(tiny_lm, small_samples, tiny_circuits, anchors_file,
                                      tmp_path):
    model, tokenizer = tiny_lm
    layout = graph_layout(model)
    held_out = small_samples[6:]
    scorer = get_scorer("cud", anchors=str(anchors_file), top_n=TOP_N, ig_steps=IG_STEPS,
                        anchor_method="npo")
    encoded = encode_samples(tokenizer, small_samples).samples
    # anchors found among the scored samples
    values = scorer.score(model, tokenizer, small_samples, encoded, batch_size=4)
    expected = cud_scores(tiny_circuits, tiny_circuits[:2], tiny_circuits[2:4], top_n=TOP_N,
                          layout=layout)
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=0)
    assert bool(((values >= 0) & (values <= 1)).all())
    # held-out samples only: the anchor samples come from `anchor_data`
    scorer = get_scorer("cud", anchors=str(anchors_file), top_n=TOP_N, ig_steps=IG_STEPS,
                        anchor_method="npo",
                        anchor_data="synthetic:authors?n_authors=4&questions_per_author=3")
    held_values = scorer.score(model, tokenizer, held_out, encoded[6:], batch_size=4)
    torch.testing.assert_close(held_values, expected[6:], atol=1e-5, rtol=0)
    scorer = get_scorer("cud", anchors=str(anchors_file), top_n=TOP_N, ig_steps=IG_STEPS)
    with pytest.raises(DataError, match="anchor samples"):
        scorer.score(model, tokenizer, held_out, encoded[6:], batch_size=4)


def test_scorer_reads_a_circuit_store_and_averages_methods(tiny_lm, small_samples,
                                                           tiny_circuits, anchors_file,
                                                           tmp_path):
    model, tokenizer = tiny_lm
    layout = graph_layout(model)
    store_dir = tmp_path / "run" / "circuits"
    write_header(store_dir, {"n_layers": layout.n_layers, "n_heads": layout.n_heads})
    writer = ShardWriter(store_dir, layout, shard_size=5)
    writer.add([s.id for s in small_samples], edge_matrix(tiny_circuits, layout))
    writer.close()
    write_index(store_dir)
    stored = CircuitStore.open(store_dir).edge_scores([s.id for s in small_samples])
    scorer = get_scorer("cud", anchors=str(anchors_file), circuits=str(tmp_path / "run"),
                        top_n=TOP_N, similarity="jaccard", vector="weighted")
    table = score_samples(model, tokenizer, small_samples, [scorer], tmp_path / "scores",
                          chunk_size=5)
    by_id = dict(zip(table["sample_id"], table["value"], strict=True))
    easy = anchor_aggregate([stored[[0, 1]], stored[[0, 4]]])
    hard = anchor_aggregate([stored[[2, 3]], stored[[3, 5]]])
    expected = cud_from_aggregates(stored, easy, hard, top_n=TOP_N, similarity="jaccard",
                                   vector="weighted", layout=layout)
    torch.testing.assert_close(torch.tensor([by_id[s.id] for s in small_samples],
                                            dtype=torch.float64), expected)
    assert (table["difficulty"] == table["value"]).all()


def test_scorer_option_errors(anchors_file):
    with pytest.raises(DataError, match="anchors"):
        get_scorer("cud")
    with pytest.raises(UnknownNameError):
        get_scorer("cud", anchors=str(anchors_file), similarity="dice")
    with pytest.raises(DataError, match="no lists for method 'simnpo'"):
        get_scorer("cud", anchors=str(anchors_file), anchor_method="simnpo")


def test_cud_config_names_its_anchors(anchors_file, small_samples):
    config = get_scorer("cud", anchors=str(anchors_file), top_n=TOP_N).config()
    assert config["uses_anchors"] is True
    assert config["anchor_fit_ids"] == [s.id for s in small_samples[:6]]
    assert config["name"] == "cud" and config["anchors"] == str(anchors_file)


def _store(tmp_path, model, tokenizer, samples, name, **settings):
    """A circuit store of `samples` computed with `settings`, in `tmp_path/name/circuits`."""
    return compute_circuits(model, tokenizer, samples, tmp_path / name / "circuits",
                            batch_size=8, **settings)


def test_resume_recomputes_cud_with_another_top_n(tiny_lm, small_samples, anchors_file,
                                                  tmp_path):
    model, tokenizer = tiny_lm
    _store(tmp_path, model, tokenizer, small_samples, "run", ig_steps=IG_STEPS)

    def cud_table(top_n, out, resume=False):
        scorer = get_scorer("cud", anchors=str(anchors_file), circuits=str(tmp_path / "run"),
                            top_n=top_n)
        return score_samples(model, tokenizer, small_samples, [scorer], out, resume=resume)

    first = cud_table(TOP_N, tmp_path / "scores")
    resumed = cud_table(20, tmp_path / "scores", resume=True)
    pd.testing.assert_frame_equal(resumed, cud_table(20, tmp_path / "fresh"))
    assert not resumed.value.equals(first.value)


# ---- the CUD authors' preset -------------------------------------------------------------


def _greedy_edges(edge_scores: torch.Tensor, layout: GraphLayout, n: int) -> set[int]:
    """The reference's greedy search, edge by edge in plain Python: start from the logits, take
    the candidate edge of largest |score|, make its writer's input edges candidates, n times.
    Returns the chosen edges' positions in the edge vector."""
    writers, readers = layout.real_edge_mask.nonzero().T.tolist()
    forward, backward = layout.forward_names, layout.backward_names
    node_of_reader = [name.split("<")[0] for name in backward]
    inputs: dict[str, list[int]] = {}
    for edge, reader in enumerate(readers):
        inputs.setdefault(node_of_reader[reader], []).append(edge)
    scores = edge_scores.abs().tolist()
    candidates, chosen, nodes = set(inputs["logits"]), set(), {"logits"}
    for _ in range(n):
        best = max(candidates - chosen, key=lambda edge: scores[edge])
        chosen.add(best)
        writer = forward[writers[best]]
        if writer not in nodes:
            nodes.add(writer)
            candidates |= set(inputs.get(writer, []))
    return chosen


def _paper_cud_by_hand(edge_scores: torch.Tensor, easy: torch.Tensor, hard: torch.Tensor,
                       layout: GraphLayout) -> list[float]:
    """d_E / (d_E + d_H), d = 1 - cosine of binary circuits = 1 - |A & B| / sqrt(|A| |B|)."""
    def distance(a: set[int], b: set[int]) -> float:
        return 1 - len(a & b) / math.sqrt(len(a) * len(b))

    easy_edges = _greedy_edges(easy.double().mean(0), layout, 75)
    hard_edges = _greedy_edges(hard.double().mean(0), layout, 75)
    values = []
    for row in edge_scores:
        edges = _greedy_edges(row, layout, 75)
        d_easy, d_hard = distance(edges, easy_edges), distance(edges, hard_edges)
        values.append(0.5 if d_easy + d_hard == 0 else d_easy / (d_easy + d_hard))
    return values


def test_paper_preset_resolves_to_the_paper_settings(anchors_file):
    assert PAPER_PRESET == {"method": "EAP-IG-activations", "ig_steps": 5,
                            "baseline": "zero-activations", "rule": "left",
                            "metric": "paper_prob_diff", "selection": "greedy", "top_n": 75,
                            "prune": False, "vector": "binary", "similarity": "cosine"}
    config = get_scorer("cud_paper", anchors=str(anchors_file)).config()
    assert {k: config[k] for k in PAPER_PRESET} == PAPER_PRESET
    assert config["name"] == "cud_paper" and config["anchor_method"] == "combined"
    assert config["uses_anchors"] is True and config["higher_is_harder"] is True
    assert get_scorer("cud_paper", anchors=str(anchors_file), top_n=75, prune=False)
    with pytest.raises(DataError, match="fixes top_n=75"):
        get_scorer("cud_paper", anchors=str(anchors_file), top_n=50)
    with pytest.raises(DataError, match="unknown option 'steps'"):
        get_scorer("cud_paper", anchors=str(anchors_file), steps=5)


def test_cud_paper_equals_a_hand_computation_beside_cud(tiny_lm, small_samples, anchors_file,
                                                        tmp_path):
    model, tokenizer = tiny_lm
    layout = graph_layout(model)
    paper = _store(tmp_path, model, tokenizer, small_samples, "paper",
                   **ATTRIBUTION_PRESETS["paper"])
    _store(tmp_path, model, tokenizer, small_samples, "ours", ig_steps=IG_STEPS)
    scorers = [get_scorer("cud", anchors=str(anchors_file), circuits=str(tmp_path / "ours"),
                          top_n=TOP_N),
               get_scorer("cud_paper", anchors=str(anchors_file),
                          circuits=str(tmp_path / "paper"))]
    table = score_samples(model, tokenizer, small_samples, scorers, tmp_path / "scores")
    assert set(table.scorer) == {"cud", "cud_paper"}
    assert set(read_scorer_configs(tmp_path / "scores")) == {"cud", "cud_paper"}
    values = table[table.scorer == "cud_paper"].set_index("sample_id").value
    stored = paper.edge_scores([s.id for s in small_samples])
    expected = _paper_cud_by_hand(stored, stored[[0, 1]], stored[[2, 3]], layout)
    assert [values[s.id] for s in small_samples] == pytest.approx(expected, abs=1e-9)
    assert values[small_samples[0].id] < values[small_samples[2].id]
    assert len(set(expected)) > 3
    # attributed on the fly with the paper's settings: the same formula on unrounded scores
    encoded = encode_samples(tokenizer, small_samples).samples
    direct = attribute(model, collate(encoded, pad_id(tokenizer)),
                       **ATTRIBUTION_PRESETS["paper"])
    direct_scores = edge_vector(direct.scores, layout)
    on_the_fly = get_scorer("cud_paper", anchors=str(anchors_file)).score(
        model, tokenizer, small_samples, encoded, batch_size=4)
    assert on_the_fly.tolist() == pytest.approx(
        _paper_cud_by_hand(direct_scores, direct_scores[[0, 1]], direct_scores[[2, 3]], layout),
        abs=1e-6)


def test_a_store_with_other_attribution_settings_is_refused(tiny_lm, small_samples,
                                                            anchors_file, tmp_path):
    model, tokenizer = tiny_lm
    _store(tmp_path, model, tokenizer, small_samples[:6], "ours", ig_steps=IG_STEPS)
    run = str(tmp_path / "ours")
    with pytest.raises(DataError, match=r"attributed with method='EAP-IG-inputs', ig_steps=2, "
                                        r"baseline='zero', metric='answer_logprob'") as error:
        get_scorer("cud_paper", anchors=str(anchors_file), circuits=run)
    assert error.value.field == "method" and "header.json" in str(error.value)
    with pytest.raises(DataError, match="ig_steps=5"):
        get_scorer("cud", anchors=str(anchors_file), circuits=run, ig_steps=5)
    # without explicit settings the cud scorer takes the store's and reports them
    config = get_scorer("cud", anchors=str(anchors_file), circuits=run).config()
    assert (config["method"], config["ig_steps"], config["metric"]) == (
        "EAP-IG-inputs", IG_STEPS, "answer_logprob")

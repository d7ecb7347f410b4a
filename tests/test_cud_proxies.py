"""The CUD proxies against independent computations: node-level attribution = each writer's edge
scores summed; answer positions = the definition with the other positions masked; EAP-IG with
one midpoint step vs EAP by the definition; the sketch preserves inner products; the `cud`
scorer's `proxy` option end to end on the tiny Llama."""

from __future__ import annotations

import math

import pytest
import torch

from cud_runs import cud_scores
from test_circuits_attr_reference import _batch, reference_scores
from tiny_models import FAMILIES, family_model, padded_batch
from unlearnscope.anchors import AnchorSets, write_anchors
from unlearnscope.anchors.gradient_sketch import GradientSketch
from unlearnscope.circuits import attribute, graph_layout
from unlearnscope.circuits.nodes import node_scores_from_edges
from unlearnscope.circuits.selection import edge_matrix, edge_vector
from unlearnscope.circuits.store import CircuitStore, ShardWriter, write_header, write_index
from unlearnscope.data.tokenize import collate, encode_samples, pad_id
from unlearnscope.errors import DataError, UnknownNameError
from unlearnscope.scoring import get_scorer
from unlearnscope.scoring.cud import CUD_PROXIES, cud_from_aggregates


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", ["EAP", "EAP-IG-inputs"])
def test_node_scores_are_the_sum_of_each_writers_edge_scores(family, method):
    model = family_model(family)
    batch = padded_batch()
    layout = graph_layout(model)
    edges = attribute(model, batch, method=method, ig_steps=3, rule="midpoint")
    nodes = attribute(model, batch, method=method, ig_steps=3, rule="midpoint", level="nodes")
    assert nodes.scores.shape == (3, layout.n_forward)
    expected = node_scores_from_edges(edge_vector(edges.scores, layout), layout)
    largest = expected.abs().max().item()
    assert largest > 1e-3
    torch.testing.assert_close(nodes.scores, expected, atol=1e-5 * largest, rtol=1e-4)
    torch.testing.assert_close(nodes.metric_clean, edges.metric_clean)


def test_node_scores_by_hand_from_an_edge_matrix():
    layout = graph_layout(family_model("llama"))
    torch.manual_seed(0)
    matrix = torch.randn(2, layout.n_forward, layout.n_backward)
    expected = (matrix * layout.real_edge_mask).sum(dim=-1)
    found = node_scores_from_edges(edge_vector(matrix, layout), layout)
    torch.testing.assert_close(found, expected)


@pytest.mark.parametrize("kind", ["gpt2", "llama-gqa"])
@pytest.mark.parametrize("method", ["EAP", "EAP-IG-inputs"])
def test_answer_positions_are_the_definition_with_other_positions_masked(kind, method):
    model = family_model(kind)
    batch = _batch()
    answer = batch["labels"] != -100
    expected, _ = reference_scores(model, batch, method=method, steps=3, positions=answer)
    found = attribute(model, batch, method=method, ig_steps=3, positions="answer")
    largest = expected.abs().max().item()
    assert largest > 1e-3
    assert (found.scores.double() - expected).abs().max().item() <= 1e-4 * largest
    everywhere = attribute(model, batch, method=method, ig_steps=3)
    assert (everywhere.scores - found.scores).abs().max().item() > 0.1 * largest
    nodes = attribute(model, batch, method=method, ig_steps=3, positions="answer",
                      level="nodes")
    torch.testing.assert_close(nodes.scores.double(),
                               node_scores_from_edges(edge_vector(expected, found.layout),
                                                      found.layout),
                               atol=1e-4 * largest, rtol=0)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_one_midpoint_step_is_the_gradient_halfway_and_eap_the_gradient_at_clean(kind):
    """EAP-IG-inputs with 1 step: the left rule takes the gradient at the baseline, the midpoint
    rule halfway between baseline and clean; EAP at the clean input. Same activation
    difference, so the three differ only by where the gradient is taken."""
    model = family_model(kind)
    batch = _batch()
    found = {rule: attribute(model, batch, method="EAP-IG-inputs", ig_steps=1, rule=rule).scores
             for rule in ("left", "midpoint")}
    found["eap"] = attribute(model, batch, method="EAP").scores
    alphas = {"left": [0.0], "midpoint": [0.5], "eap": [1.0]}
    expected = {name: reference_scores(model, batch, method="EAP-IG-inputs", steps=1,
                                       alphas=alpha)[0] for name, alpha in alphas.items()}
    for name, scores in found.items():
        largest = expected[name].abs().max().item()
        assert largest > 1e-3
        assert (scores.double() - expected[name]).abs().max().item() <= 1e-4 * largest, name
    gap = (found["midpoint"] - found["eap"]).abs().max().item()
    assert gap > 0.05 * found["eap"].abs().max().item()


def test_sketch_preserves_inner_products_within_its_error():
    torch.manual_seed(0)
    vectors = torch.randn(6, 3000)
    vectors[1] = vectors[0] + 0.5 * torch.randn(3000)  # a correlated pair
    exact = vectors @ vectors.T
    norms = vectors.norm(dim=1)
    scale = norms[:, None] * norms[None, :]
    for dim in (1024, 8192):
        sketch = GradientSketch(dim, seed=3)
        sketched = sketch.project([vectors])
        assert sketched.shape == (6, dim)
        error = ((sketched @ sketched.T - exact) / scale).abs().max().item()
        assert error <= 5 / math.sqrt(dim), dim  # E[error] ~ 1/sqrt(dim) per pair
        torch.testing.assert_close(sketch.project([vectors]), sketched)  # seeded: same sketch


def test_sketched_cud_approaches_cud_and_needs_cosine():
    torch.manual_seed(1)
    scores = torch.randn(12, 2000)
    easy, hard = scores[:3].mean(dim=0), scores[3:6].mean(dim=0)
    options = {"top_n": 0.2, "vector": "weighted"}
    exact = cud_from_aggregates(scores, easy, hard, **options)
    sketched = cud_from_aggregates(scores, easy, hard, sketch_dim=8192, **options)
    assert exact.std() > 0.01
    assert (sketched - exact).abs().max().item() < 0.03
    coarse = cud_from_aggregates(scores, easy, hard, sketch_dim=8, **options)
    assert (coarse - exact).abs().max().item() > (sketched - exact).abs().max().item()
    with pytest.raises(DataError, match="cosine"):
        cud_from_aggregates(scores, easy, hard, sketch_dim=64, similarity="jaccard", **options)


def test_node_level_needs_the_hooks_backend_and_input_interpolation():
    model = family_model("llama")
    batch = _batch()
    with pytest.raises(DataError, match="EAP-IG-activations"):
        attribute(model, batch, method="EAP-IG-activations", ig_steps=1, level="nodes")
    with pytest.raises(DataError, match="backend"):
        attribute(model, batch, positions="answer", backend="bridge")
    with pytest.raises(UnknownNameError):
        attribute(model, batch, level="heads")
    with pytest.raises(UnknownNameError):
        attribute(model, batch, positions="prompt")


IG_STEPS = 2


@pytest.fixture(scope="module")
def anchors_file(small_samples, tmp_path_factory):
    ids = [s.id for s in small_samples]
    sets = AnchorSets("vote", 2, easy=ids[:2], hard=ids[2:4], fit_ids=ids[:6],
                      held_out_ids=ids[6:])
    folder = tmp_path_factory.mktemp("anchors")
    write_anchors(folder, sets)
    return folder / "anchors.json"


def _score(scorer, tiny_lm, samples):
    model, tokenizer = tiny_lm
    encoded = encode_samples(tokenizer, samples).samples
    return scorer.score(model, tokenizer, samples, encoded, batch_size=4)


def test_nodes_proxy_on_the_fly_and_from_a_store(tiny_lm, small_samples, anchors_file, tmp_path):
    model, tokenizer = tiny_lm
    layout = graph_layout(model)
    batch = collate(encode_samples(tokenizer, small_samples).samples, pad_id(tokenizer))
    nodes = attribute(model, batch, ig_steps=IG_STEPS, level="nodes").scores
    expected = cud_scores(nodes, nodes[:2], nodes[2:4], top_n=0.3, vector="weighted")
    scorer = get_scorer("cud", anchors=str(anchors_file), proxy="nodes", node_top_n=0.3,
                        vector="weighted", ig_steps=IG_STEPS, anchor_method="combined")
    on_the_fly = _score(scorer, tiny_lm, small_samples)
    torch.testing.assert_close(on_the_fly, expected, atol=1e-5, rtol=0)
    assert on_the_fly.std() > 0
    # from stored edge scores: each writer's edges summed (the same node scores)
    edges = edge_vector(attribute(model, batch, ig_steps=IG_STEPS).scores, layout)
    store_dir = tmp_path / "run" / "circuits"
    write_header(store_dir, {"n_layers": layout.n_layers, "n_heads": layout.n_heads,
                             "method": "EAP-IG-inputs", "ig_steps": IG_STEPS})
    writer = ShardWriter(store_dir, layout, shard_size=5)
    writer.add([s.id for s in small_samples], edge_matrix(edges, layout))
    writer.close()
    write_index(store_dir)
    stored = get_scorer("cud", anchors=str(anchors_file), circuits=str(tmp_path / "run"),
                        proxy="nodes", node_top_n=0.3, vector="weighted",
                        anchor_method="combined")
    from_store = _score(stored, tiny_lm, small_samples)
    stored_nodes = node_scores_from_edges(CircuitStore.open(store_dir).edge_scores(
        [s.id for s in small_samples]), layout)
    torch.testing.assert_close(from_store, cud_scores(stored_nodes, stored_nodes[:2],
                                                      stored_nodes[2:4], top_n=0.3,
                                                      vector="weighted"), atol=1e-6, rtol=0)
    # the store keeps float16 edge scores: the same CUD up to that rounding
    torch.testing.assert_close(from_store, expected, atol=2e-3, rtol=0)
    with pytest.raises(DataError, match="on the fly"):
        get_scorer("cud", anchors=str(anchors_file), circuits=str(tmp_path / "run"),
                   proxy="answer_positions")
    with pytest.raises(DataError, match="EAP"):  # the store holds EAP-IG circuits
        get_scorer("cud", anchors=str(anchors_file), circuits=str(tmp_path / "run"),
                   proxy="eap")


def test_proxies_set_their_options(tiny_lm, small_samples, anchors_file):
    def values(**options):
        scorer = get_scorer("cud", anchors=str(anchors_file), top_n=0.2, vector="weighted",
                            anchor_method="combined", **options)
        return _score(scorer, tiny_lm, small_samples)

    torch.testing.assert_close(values(proxy="eap"), values(method="EAP"))
    torch.testing.assert_close(values(proxy="ig2"), values(ig_steps=2))
    torch.testing.assert_close(values(proxy="answer_positions"), values(positions="answer"))
    sketched, exact = values(proxy="sketch256"), values()
    torch.testing.assert_close(sketched, values(sketch_dim=256))
    assert not torch.equal(sketched, exact)
    assert (sketched - exact).abs().max().item() < 0.5
    assert set(CUD_PROXIES) == {"eap", "ig2", "nodes", "answer_positions", "sketch256"}
    config = get_scorer("cud", anchors=str(anchors_file), proxy="eap").config()
    assert (config["proxy"], config["method"]) == ("eap", "EAP")


def test_proxy_option_errors(anchors_file):
    with pytest.raises(UnknownNameError):
        get_scorer("cud", anchors=str(anchors_file), proxy="fast")
    with pytest.raises(DataError, match="proxy 'eap' sets method"):
        get_scorer("cud", anchors=str(anchors_file), proxy="eap", method="EAP-IG-inputs")
    with pytest.raises(DataError, match="topn"):
        get_scorer("cud", anchors=str(anchors_file), proxy="nodes", selection="greedy")
    with pytest.raises(DataError, match="cosine"):
        get_scorer("cud", anchors=str(anchors_file), proxy="sketch256", similarity="jaccard")
    with pytest.raises(DataError, match="EAP-IG-activations"):
        get_scorer("cud", anchors=str(anchors_file), proxy="nodes", method="EAP-IG-activations")

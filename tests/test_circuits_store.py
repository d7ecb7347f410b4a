"""The sharded float16 score store (round trip, resume, multi-process merge) and export."""

from __future__ import annotations

import json

import pytest
import torch

from unlearnscope.circuits.export import export_from_store, reference_dict, save_circuit
from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.selection import edge_names, select_topn
from unlearnscope.circuits.store import (
    CircuitStore,
    ShardWriter,
    check_header,
    shard_files,
    write_header,
    write_index,
)
from unlearnscope.errors import DataError, NonFiniteError
from unlearnscope.layout import INDEX_FILE

LAYOUT = GraphLayout(2, 2)
HEADER = {"model": "tiny", "n_layers": 2, "n_heads": 2, "d_model": 16, "method": "EAP-IG-inputs",
          "ig_steps": 5, "baseline": "zero", "rule": "left", "metric": "answer_logprob"}


def random_scores(n: int, seed: int = 0) -> torch.Tensor:
    """Scores spanning many orders of magnitude, zero off the real edges."""
    generator = torch.Generator().manual_seed(seed)
    shape = (n, LAYOUT.n_forward, LAYOUT.n_backward)
    magnitude = 10.0 ** torch.randint(-9, 6, shape, generator=generator).float()
    return torch.randn(shape, generator=generator) * magnitude * LAYOUT.real_edge_mask


def write_all(directory, ids, scores, *, rank=0, shard_size=2) -> None:
    writer = ShardWriter(directory, LAYOUT, rank=rank, shard_size=shard_size)
    writer.add(ids, scores)
    writer.close()


def assert_float16_close(stored: torch.Tensor, exact: torch.Tensor) -> None:
    """Per sample: relative error 2^-11 plus an absolute floor of 2^-24 of the sample's
    power-of-two scale (float16 subnormals after scaling to [-1, 1])."""
    peak = exact.abs().flatten(1).amax(dim=1)
    scale = torch.exp2(torch.ceil(torch.log2(peak)))
    bound = exact.abs() * 2.0**-11 + scale.view(-1, 1, 1) * 2.0**-24
    assert ((stored - exact).abs() <= bound).all()


def test_round_trip_keeps_float16_precision_over_a_wide_range(tmp_path) -> None:
    scores = random_scores(5)
    ids = [f"s{i}" for i in range(5)]
    write_header(tmp_path, HEADER)
    write_all(tmp_path, ids, scores)
    write_index(tmp_path)
    assert len(shard_files(tmp_path)) == 3  # shard_size 2: 2 + 2 + 1
    store = CircuitStore.open(tmp_path)
    assert store.sample_ids == ids and len(store) == 5
    assert store.layout == LAYOUT and store.header["method"] == "EAP-IG-inputs"
    back = store.scores(["s3", "s0"])
    assert back.dtype == torch.float32
    assert back.shape == (2, LAYOUT.n_forward, LAYOUT.n_backward)
    assert_float16_close(back, scores[[3, 0]])
    assert scores.abs().max() > 65504  # plain float16 would overflow here
    assert torch.equal(store.edge_scores(["s1"])[0],
                       store.scores(["s1"])[0][LAYOUT.real_edge_mask])
    assert (store.scores(ids)[:, ~LAYOUT.real_edge_mask] == 0).all()
    with pytest.raises(DataError, match="nope"):
        store.scores(["nope"])


def test_shards_hold_float16_real_edges_only(tmp_path) -> None:
    from safetensors import safe_open

    write_header(tmp_path, HEADER)
    write_all(tmp_path, ["a", "b"], random_scores(2))
    (shard,) = shard_files(tmp_path)
    with safe_open(str(shard), framework="pt") as handle:
        edge_scores = handle.get_tensor("edge_scores")
        assert json.loads(handle.metadata()["sample_ids"]) == ["a", "b"]
    assert edge_scores.dtype == torch.float16 and edge_scores.shape == (2, LAYOUT.n_edges)
    assert edge_scores.abs().max() <= 1.0


def test_non_finite_scores_are_refused(tmp_path) -> None:
    scores = random_scores(2)
    scores[1, 0, 0] = torch.nan
    with pytest.raises(NonFiniteError, match="a, b"):
        ShardWriter(tmp_path, LAYOUT).add(["a", "b"], scores)


def test_resume_after_a_kill_gives_the_same_store(tmp_path) -> None:
    scores = random_scores(7, seed=1)
    ids = [f"s{i}" for i in range(7)]
    full = tmp_path / "full"
    write_header(full, HEADER)
    write_all(full, ids, scores)
    write_index(full)

    killed = tmp_path / "killed"
    write_header(killed, HEADER)
    writer = ShardWriter(killed, LAYOUT, shard_size=2)
    writer.add(ids[:5], scores[:5])  # two shards flushed, s4 still buffered: lost in the kill
    (killed / ".scores-rank000-000002.safetensors.x.tmp").write_bytes(b"half a shard")
    partial = CircuitStore.open(killed)  # no index yet: rebuilt from the finished shards
    assert partial.sample_ids == ids[:4]

    todo = [i for i in ids if i not in partial]
    resumed = ShardWriter(killed, LAYOUT, shard_size=2)
    resumed.add(todo, scores[4:])
    resumed.close()
    write_index(killed)
    assert [p.name for p in shard_files(killed)][-1] == "scores-rank000-000003.safetensors"
    done = CircuitStore.open(killed)
    assert sorted(done.sample_ids) == sorted(ids)
    assert torch.equal(done.scores(ids), CircuitStore.open(full).scores(ids))


def test_ranks_write_their_own_shards_and_the_index_merges_them(tmp_path) -> None:
    scores = random_scores(6, seed=2)
    ids = [f"s{i}" for i in range(6)]
    write_header(tmp_path, HEADER)
    write_all(tmp_path, ids[:3], scores[:3], rank=0)
    write_all(tmp_path, ids[3:], scores[3:], rank=1)
    index = write_index(tmp_path)
    assert index["s4"] == ("scores-rank001-000000.safetensors", 1)
    stored = json.loads((tmp_path / INDEX_FILE).read_text())
    assert stored["samples"]["s4"] == ["scores-rank001-000000.safetensors", 1]
    assert_float16_close(CircuitStore.open(tmp_path).scores(ids), scores)
    # a shard the index does not know (e.g. written after it) is picked up on open
    write_all(tmp_path, ["late"], random_scores(1, seed=3), rank=2)
    assert "late" in CircuitStore.open(tmp_path)
    # a damaged shard is named
    (tmp_path / "scores-rank009-000000.safetensors").write_bytes(b"not a shard")
    with pytest.raises(DataError, match="rank009"):
        CircuitStore.open(tmp_path)
    (tmp_path / "scores-rank009-000000.safetensors").unlink()
    # the same sample twice is an error
    write_all(tmp_path, ["s0"], scores[:1], rank=3)
    with pytest.raises(DataError, match="stored twice"):
        CircuitStore.open(tmp_path)


def test_header_checks(tmp_path) -> None:
    with pytest.raises(DataError, match="header"):
        CircuitStore.open(tmp_path)
    with pytest.raises(DataError, match="n_heads"):
        write_header(tmp_path, {"n_layers": 2})
    write_header(tmp_path, HEADER)
    check_header(tmp_path, HEADER)
    with pytest.raises(DataError, match="ig_steps"):
        check_header(tmp_path, {**HEADER, "ig_steps": 10})
    with pytest.raises(DataError, match="do not fit"):
        ShardWriter(tmp_path, LAYOUT).add(["a"], torch.zeros(1, 3, 3))


def test_pt_export_has_the_reference_keys_and_dtypes(tmp_path) -> None:
    scores = random_scores(1)[0] + 0.5 * ~LAYOUT.real_edge_mask  # junk off the real edges
    in_graph = select_topn(scores, LAYOUT, 10)
    path = save_circuit(tmp_path / "c.pt", scores, in_graph, LAYOUT, fmt="pt", d_model=16)
    data = torch.load(path, weights_only=True)
    assert set(data) == {"cfg", "src_nodes", "dst_nodes", "edges_scores", "edges_in_graph",
                         "nodes_in_graph"}
    assert data["cfg"] == {"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": False,
                           "d_model": 16}
    assert data["src_nodes"] == LAYOUT.forward_names and data["dst_nodes"][-1] == "logits"
    assert data["dst_nodes"] == LAYOUT.backward_names
    assert data["edges_scores"].dtype == torch.float32
    assert data["edges_scores"].shape == (LAYOUT.n_forward, LAYOUT.n_backward)
    assert data["edges_in_graph"].dtype == torch.bool
    assert data["nodes_in_graph"].dtype == torch.bool
    assert data["nodes_in_graph"].shape == (LAYOUT.n_forward,)
    assert torch.equal(data["edges_in_graph"], in_graph)
    assert torch.equal(data["edges_scores"], scores * LAYOUT.real_edge_mask)
    # every writer of an in-graph edge is an in-graph node, and nothing else but the input
    writers = in_graph.any(dim=1)
    assert torch.equal(data["nodes_in_graph"][1:], writers[1:])


def test_json_export_follows_the_reference_layout(tmp_path) -> None:
    scores = random_scores(1, seed=4)[0]
    in_graph = select_topn(scores, LAYOUT, 6)
    path = save_circuit(tmp_path / "c.json", scores, in_graph, LAYOUT, fmt="json")
    data = json.loads(path.read_text())
    assert set(data) == {"cfg", "nodes", "edges"}
    assert list(data["edges"]) == edge_names(LAYOUT) and len(data["edges"]) == LAYOUT.n_edges
    assert data["nodes"]["logits"] == {"in_graph": True}
    edge = data["edges"]["input->a1.h0<k>"]
    w, r = LAYOUT.forward_names.index("input"), LAYOUT.backward_names.index("a1.h0<k>")
    assert edge == {"score": pytest.approx(float(scores[w, r])), "in_graph": bool(in_graph[w, r])}
    assert sum(e["in_graph"] for e in data["edges"].values()) == int(in_graph.sum())
    pt = reference_dict(scores, in_graph, LAYOUT)
    assert [data["nodes"][n]["in_graph"] for n in LAYOUT.forward_names] == \
        pt["nodes_in_graph"].tolist()


def test_export_from_store_aggregates_a_set(tmp_path) -> None:
    scores = random_scores(3, seed=5) * 1e-3
    ids = ["x", "y", "z"]
    write_header(tmp_path, HEADER)
    write_all(tmp_path, ids, scores)
    store = CircuitStore.open(tmp_path)
    out = export_from_store(store, tmp_path / "set.pt", sample_ids=["x", "z"], n=5)
    data = torch.load(out, weights_only=True)
    expected = store.scores(["x", "z"]).float().mean(dim=0)
    assert torch.allclose(data["edges_scores"], expected)
    assert torch.equal(data["edges_in_graph"], select_topn(expected, LAYOUT, 5))
    assert torch.allclose(store.mean_scores(["x", "z"], chunk_size=1), expected)
    assert torch.equal(store.circuits(["z", "x"], n=5, chunk_size=1),
                       select_topn(store.scores(["z", "x"]), LAYOUT, 5))
    one = torch.load(export_from_store(store, tmp_path / "y.pt", sample_ids=["y"], n=5),
                     weights_only=True)
    assert torch.equal(one["edges_scores"], store.scores(["y"])[0])


def test_parallel_attention_layout_is_kept_and_exported(tmp_path) -> None:
    layout = GraphLayout(2, 2, parallel_attn_mlp=True)
    assert layout.n_edges < LAYOUT.n_edges  # no head -> own-layer MLP edges
    write_header(tmp_path, {**HEADER, "parallel_attn_mlp": True})
    scores = torch.randn(1, layout.n_forward, layout.n_backward) * layout.real_edge_mask
    writer = ShardWriter(tmp_path, layout)
    writer.add(["p"], scores)
    writer.close()
    store = CircuitStore.open(tmp_path)
    assert store.layout == layout
    assert_float16_close(store.scores(["p"]), scores)
    data = torch.load(export_from_store(store, tmp_path / "p.pt", n=5), weights_only=True)
    assert data["cfg"]["parallel_attn_mlp"] is True
    assert not data["edges_in_graph"][~layout.real_edge_mask].any()

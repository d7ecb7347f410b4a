"""Circuit-guided unlearning: the parameter masks of a circuit's components and the trainer's
enforcement of them."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from tiny_models import family_model, padded_batch, toy_llama, toy_tokenizer
from unlearning_support import toy_samples
from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.selection import edge_matrix
from unlearnscope.circuits.store import ShardWriter, write_header, write_index
from unlearnscope.cli import main
from unlearnscope.errors import DataError
from unlearnscope.models import load_model
from unlearnscope.models.architecture import model_parts
from unlearnscope.runs import write_json
from unlearnscope.unlearning.circuit_mask import (
    Components,
    build_circuit_mask,
    circuit_components,
    parameter_count,
    parameter_masks,
    random_components,
)
from unlearnscope.unlearning.trainer import run_unlearning

FORGET, RETAIN = toy_samples("f")[:4], toy_samples("r")[4:]


def _components(n_layers: int, n_heads: int, heads, mlps) -> Components:
    head_mask = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for layer, head in heads:
        head_mask[layer, head] = True
    mlp_mask = torch.zeros(n_layers, dtype=torch.bool)
    mlp_mask[list(mlps)] = True
    return Components(head_mask, mlp_mask)


def test_components_are_the_circuit_nodes_by_hand():
    layout = GraphLayout(2, 2)
    graph = torch.zeros(layout.n_forward, layout.n_backward, dtype=torch.bool)
    graph[0, layout.qkv_backward_index(0, 1, "k")] = True  # input -> a0.h1<k>
    graph[layout.head_forward_index(0, 1), layout.mlp_backward_index(1)] = True  # a0.h1 -> m1
    graph[layout.mlp_forward_index(1), layout.logits_backward_index] = True  # m1 -> logits
    # a dangling edge into a1.h0 (a1.h0 writes nowhere): not a node
    graph[0, layout.qkv_backward_index(1, 0, "q")] = True
    found = circuit_components(graph, layout)
    assert found.heads.tolist() == [[False, True], [False, False]]
    assert found.mlps.tolist() == [False, True]


def _out_dim(module) -> int:
    return 1 if isinstance(module, Conv1D) else 0


@pytest.mark.parametrize("family", ["llama", "llama-gqa", "qwen2-gqa", "gpt2", "neox-sequential",
                                    "phi-gqa"])
def test_masks_cover_exactly_the_components(family):
    """q/k/v features from the gradient of each selected head's attention output (an
    independent route: autograd, not the architecture's layout), o_proj columns and MLPs by
    hand, and nothing else."""
    model = family_model(family).float()
    parts = model_parts(model)
    chosen = {1: [2, 3], 0: [1]}
    components = _components(parts.n_layers, parts.n_heads,
                             [(layer, h) for layer, heads in chosen.items() for h in heads], [1])
    masks = parameter_masks(model, components)
    names = {id(p): n for n, p in model.named_parameters()}
    expected: dict[str, torch.Tensor] = {}
    batch = padded_batch()
    hd = parts.head_dim
    for layer, heads in chosen.items():
        block = parts.blocks[layer]
        captured = {}
        handle = block.o_proj.register_forward_pre_hook(
            lambda module, args, captured=captured: captured.__setitem__("z", args[0]))
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        handle.remove()
        z = captured["z"]
        torch.manual_seed(layer)
        weights = torch.randn_like(z)
        loss = sum((z[..., h * hd:(h + 1) * hd] * weights[..., h * hd:(h + 1) * hd]).sum()
                   for h in heads)
        # a bias gets its weight's features (a key bias has zero gradient under softmax)
        grads = torch.autograd.grad(loss, [m.weight for m in block.qkv_modules])
        for module, grad in zip(block.qkv_modules, grads, strict=True):
            dim = _out_dim(module)
            touched = grad.abs().amax(dim=1 - dim) > 0
            expected[names[id(module.weight)]] = (touched[None, :] if dim else touched[:, None]
                                                  ).expand(grad.shape).clone()
            if getattr(module, "bias", None) is not None:
                expected[names[id(module.bias)]] = touched.clone()
        o_weight = block.o_proj.weight
        o_mask = torch.zeros(o_weight.shape, dtype=torch.bool)
        for h in heads:
            if isinstance(block.o_proj, Conv1D):
                o_mask[h * hd:(h + 1) * hd, :] = True
            else:
                o_mask[:, h * hd:(h + 1) * hd] = True
        expected[names[id(o_weight)]] = o_mask
    for param in parts.blocks[1].mlp.parameters():
        expected[names[id(param)]] = torch.ones(param.shape, dtype=torch.bool)
    assert sorted(masks) == sorted(expected)
    for name, mask in masks.items():
        assert torch.equal(mask, expected[name]), name
    if parts.kv_groups > 1:  # head 3 and head 2 share a K/V head: its rows are updated once
        k_proj = parts.blocks[1].qkv_modules[1]
        assert int(masks[names[id(k_proj.weight)]].any(dim=1).sum()) == hd


@pytest.mark.parametrize("family", ["llama", "llama-gqa", "gpt2"])
def test_random_control_has_the_same_parameter_count(family):
    model = family_model(family)
    parts = model_parts(model)
    like = _components(parts.n_layers, parts.n_heads, [(0, 0), (0, 1), (1, 3)], [0])
    count = parameter_count(parameter_masks(model, like))
    drawn = set()
    for seed in range(6):
        control = random_components(like, parts.kv_groups, seed)
        assert (control.n_heads, control.n_mlps) == (like.n_heads, like.n_mlps)
        assert parameter_count(parameter_masks(model, control)) == count
        drawn.add((tuple(control.heads.flatten().tolist()), tuple(control.mlps.tolist())))
    assert len(drawn) > 1


def _run_folder(root, model, ids, hard, seed=0):
    """A run folder with a circuit store of random scores for `ids` and `hard` anchors."""
    parts = model_parts(model)
    layout = GraphLayout(parts.n_layers, parts.n_heads)
    write_header(root / "circuits", {"n_layers": layout.n_layers, "n_heads": layout.n_heads})
    writer = ShardWriter(root / "circuits", layout)
    scores = torch.randn(len(ids), layout.n_edges, generator=torch.Generator().manual_seed(seed))
    writer.add(ids, edge_matrix(scores, layout))
    writer.close()
    write_index(root / "circuits")
    easy = [i for i in ids if i not in hard][:1]
    write_json(root / "anchors" / "anchors.json", {
        "method": "vote", "k": len(hard), "easy": easy, "hard": hard, "fit_ids": ids,
        "held_out_ids": []})
    return root


@pytest.mark.parametrize(("kind", "method"), [("hard-anchors", "grad_diff"),
                                              ("batch", "grad_diff"), ("random", "grad_diff"),
                                              ("hard-anchors", "npo"), ("batch", "rmu")])
def test_masked_parameters_never_change(kind, method, tmp_path):
    """Several AdamW steps with weight decay: every masked entry is bit-exact unchanged, the
    updated entries moved."""
    tokenizer = toy_tokenizer()
    model = toy_llama(tokenizer)
    start = copy.deepcopy(model)
    ids = [s.id for s in FORGET]
    run = _run_folder(tmp_path / "run", model, ids, hard=ids[:2])
    options = {"trainable_layers": "all", "layer": 1} if method == "rmu" else {}
    result = run_unlearning(model, tokenizer, FORGET, RETAIN, method, max_steps=4, lr=1e-2,
                            weight_decay=0.5, batch_size=2, grad_accum=1, warmup_epochs=0.0,
                            method_options=options, circuit_mask=kind, circuits=str(run),
                            mask_top_n=0.2)
    mask = build_circuit_mask(kind, run, start, forget_ids=ids, top_n=0.2)
    allowed = parameter_masks(start, mask.reachable())
    assert 0 < parameter_count(allowed) < sum(p.numel() for p in start.parameters())
    moved = 0
    after = dict(result.model.named_parameters())
    for name, before in start.named_parameters():
        keep = ~allowed.get(name, torch.zeros(before.shape, dtype=torch.bool))
        assert torch.equal(after[name].detach()[keep], before.detach()[keep]), name
        moved += int((after[name].detach() != before.detach()).sum())
    assert moved > 0
    summary = result.summary["circuit_mask"]
    assert summary["kind"] == kind and summary["update_params_max"] <= parameter_count(allowed)
    if kind != "batch":
        assert summary["update_params_mean"] == parameter_count(allowed)


def test_circuit_mask_needs_a_store_and_anchors(tmp_path):
    tokenizer = toy_tokenizer()
    model = toy_llama(tokenizer)
    with pytest.raises(DataError, match="needs a circuit store"):
        run_unlearning(model, tokenizer, FORGET, RETAIN, "grad_diff", max_steps=1,
                       warmup_epochs=0.0, circuit_mask="hard-anchors")
    run = _run_folder(tmp_path / "run", model, [s.id for s in FORGET], hard=["f0"])
    with pytest.raises(DataError, match="needs the hard anchors"):
        build_circuit_mask("hard-anchors", run / "circuits", model, forget_ids=[], top_n=0.2)


def test_unlearn_cli_circuit_mask(tmp_path):
    """`unlearn --circuit-mask hard-anchors --circuits RUN_DIR`: the saved model keeps every
    entry outside the hard anchors' circuit."""
    tokenizer = toy_tokenizer()
    model = toy_llama(tokenizer)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    for name, part in (("forget", FORGET), ("retain", RETAIN)):
        with open(tmp_path / f"{name}.jsonl", "w") as handle:
            for s in part:
                handle.write(json.dumps({"id": s.id, "question": s.question,
                                         "answer": s.answer}) + "\n")
    ids = [s.id for s in FORGET]
    run = _run_folder(tmp_path / "run", model, ids, hard=ids[2:])
    out = tmp_path / "out"
    assert main(["unlearn", "--model", str(tmp_path / "model"), "--method", "npo",
                 "--forget", f"jsonl:{tmp_path / 'forget.jsonl'}?id_field=id",
                 "--retain", f"jsonl:{tmp_path / 'retain.jsonl'}", "--out", str(out),
                 "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1", "--lr", "1e-2",
                 "--warmup-epochs", "0", "--circuit-mask", "hard-anchors",
                 "--circuits", str(run), "--mask-top-n", "0.2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["circuit_mask"]["hard_anchors"] == ids[2:]
    allowed = parameter_masks(model, build_circuit_mask("hard-anchors", run, model,
                                                        forget_ids=ids, top_n=0.2).fixed)
    after = dict(load_model(str(out / "model"), dtype="float32")[0].named_parameters())
    for name, before in model.named_parameters():
        keep = ~allowed.get(name, torch.zeros(before.shape, dtype=torch.bool))
        assert torch.equal(after[name].detach()[keep], before.detach()[keep]), name

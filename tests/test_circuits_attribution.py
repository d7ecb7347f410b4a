"""Invariants of per-sample attribution across model families (see also test_circuits_attr_reference)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from tiny_models import FAMILIES, FAMILY_CONFIG, VOCAB, family_model, padded_batch
from unlearnscope.circuits import GraphLayout, attribute, graph_layout
from unlearnscope.circuits.metrics import answer_logprob, paper_prob_diff
from unlearnscope.circuits.readers import (
    add_layer_reader_gradients,
    autograd_norm_vjp,
    norm_vjp,
)
from unlearnscope.circuits.recorder import GraphRecorder
from unlearnscope.circuits.ungroup import ungrouped_kv
from unlearnscope.errors import DataError, NonFiniteError, UnknownNameError
from unlearnscope.models.architecture import model_parts


def test_gpt2_small_edge_count():
    layout = GraphLayout(12, 12)
    assert (layout.n_forward, layout.n_backward, layout.n_edges) == (157, 445, 32491)
    model = GPT2LMHeadModel(GPT2Config(n_embd=24, n_layer=12, n_head=12, vocab_size=10))
    assert graph_layout(model).n_edges == 32491


def test_parallel_models_have_no_head_to_own_mlp_edges():
    layout = graph_layout(family_model("neox-parallel"))
    assert layout.n_edges == GraphLayout(2, 4).n_edges - 2 * 4
    assert not layout.real_edge_mask[layout.head_forward_index(1, 2), layout.mlp_backward_index(1)]
    assert graph_layout(family_model("neox-sequential")).n_edges == GraphLayout(2, 4).n_edges


@pytest.mark.parametrize("family", ["llama-gqa", "qwen2-gqa", "phi-gqa"])
def test_ungrouped_model_computes_the_same_logits(family):
    model = family_model(family)
    parts = model_parts(model)
    batch = padded_batch()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    seen = []

    def observe(module, args, output):
        seen.append(output.shape[-1])

    with torch.no_grad():
        original = model(**inputs).logits
        with ungrouped_kv(parts):
            hook = parts.blocks[0].qkv_modules[1].register_forward_hook(observe)
            ungrouped = model(**inputs).logits
            hook.remove()
        restored = model(**inputs).logits
    assert seen == [4 * parts.head_dim]
    torch.testing.assert_close(ungrouped, original, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(restored, original, atol=0, rtol=0)
    assert all(block.attention.num_key_value_groups == 2 for block in parts.blocks)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_writer_gradient_is_the_sum_of_its_readers_gradients(family):
    model = family_model(family)
    parts = model_parts(model)
    layout = graph_layout(model)
    batch = padded_batch()
    recorder = GraphRecorder(parts)
    with recorder.installed():
        outputs = {}
        handles = []
        for layer, block in enumerate(parts.blocks):
            handles.append(block.o_proj.register_forward_hook(
                lambda m, a, o, layer=layer: outputs.__setitem__(("attn", layer), o)))
            handles.append(block.mlp.register_forward_hook(
                lambda m, a, o, layer=layer: outputs.__setitem__(("mlp", layer), o)))
        embeds = parts.embedding(batch["input_ids"]).detach().requires_grad_(True)
        with recorder.recording(grads=True, embedding=embeds):
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
            metric = answer_logprob(logits, batch["labels"], logits).sum()
            keys = sorted(outputs)
            writer_grads = torch.autograd.grad(metric, [embeds] + [outputs[k] for k in keys])
            readers = [torch.zeros(3 * parts.n_heads + 1, *embeds.shape) for _ in parts.blocks]
            for layer, block in enumerate(parts.blocks):
                add_layer_reader_gradients(parts, layer, recorder.grads,
                                           block.qkv_weight().flatten(0, 1), readers[layer])
            readers.append(recorder.grads.logits[None])
        for handle in handles:
            handle.remove()
    readers = torch.cat(readers, dim=0)  # [n_backward, batch, pos, d_model]
    mask = layout.real_edge_mask
    rows = [0] + [layout.head_forward_index(layer, 0) if kind == "attn"
                  else layout.mlp_forward_index(layer) for kind, layer in keys]
    for row, writer_grad in zip(rows, writer_grads, strict=True):
        summed = readers[mask[row]].sum(dim=0)
        scale = writer_grad.abs().max()
        assert scale > 0
        torch.testing.assert_close(summed, writer_grad.float(), atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_input_scores_complete_to_the_metric_difference(family):
    """IG completeness: sum over the input's edges = m(baseline) - m(clean), for many steps."""
    model = family_model(family)
    batch = padded_batch()
    # Llama-type models are scale-invariant after RMSNorm with no positional embedding, so the
    # zero baseline is a discontinuity there; a corrupted-text baseline integrates smoothly.
    torch.manual_seed(5)
    corrupted = torch.randint(1, VOCAB, batch["input_ids"].shape)
    baseline = "zero" if family == "gpt2" else corrupted
    result = attribute(model, batch, method="EAP-IG-inputs", ig_steps=32, rule="midpoint",
                       baseline=baseline)
    input_total = result.scores[:, 0].sum(dim=1)
    difference = result.metric_baseline - result.metric_clean
    assert difference.abs().min() > 1e-3
    torch.testing.assert_close(input_total, difference, atol=0, rtol=1.5e-3)


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa", "neox-parallel", "phi-gqa"])
@pytest.mark.parametrize("method", ["EAP", "EAP-IG-inputs", "EAP-IG-activations"])
def test_sample_scores_do_not_depend_on_the_batch(family, method):
    model = family_model(family)
    batch = padded_batch()
    together = attribute(model, batch, method=method, ig_steps=3)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    for row, length in enumerate(lengths):
        alone = {key: value[row:row + 1, :length] for key, value in batch.items()}
        single = attribute(model, alone, method=method, ig_steps=3)
        # 1e-5 of the sample's largest score: float32 rounding of matmuls whose shapes depend
        # on the padded length (the zero-baseline step of RMSNorm/LayerNorm models without
        # positional embeddings gives scores in the hundreds).
        scale = max(single.scores.abs().max().item(), 1.0)
        torch.testing.assert_close(together.scores[row:row + 1], single.scores,
                                   atol=1e-5 * scale, rtol=0)
    assert together.scores.abs().max() > 1e-2


@pytest.mark.parametrize("family", ["gpt2", "qwen2-gqa", "neox-sequential"])
def test_result_layout_and_non_edges(family):
    model = family_model(family)
    result = attribute(model, padded_batch(), method="EAP-IG-inputs")
    layout = graph_layout(model)
    assert result.scores.shape == (3, layout.n_forward, layout.n_backward)
    assert result.scores.dtype == torch.float32
    assert result.forward_names == layout.forward_names
    assert result.backward_names == layout.backward_names
    assert result.real_edge_mask.dtype == torch.bool
    assert torch.equal(result.real_edge_mask, layout.real_edge_mask)
    assert (result.scores[:, ~result.real_edge_mask] == 0).all()
    assert (result.scores[:, result.real_edge_mask] != 0).float().mean() > 0.9


def test_zero_baseline_on_rmsnorm_stays_finite():
    """At alpha = 0 the whole residual stream of a Llama is 0; the norm's gradient is ~1/sqrt(eps)."""
    model = family_model("llama-gqa")
    result = attribute(model, padded_batch(), method="EAP-IG-inputs", ig_steps=5, rule="left")
    assert torch.isfinite(result.scores).all()
    midpoint = attribute(model, padded_batch(), method="EAP-IG-inputs", ig_steps=5,
                         rule="midpoint")
    assert result.scores.abs().max() > 10 * midpoint.scores.abs().max()


def test_answer_prob_is_the_chain_rule_of_answer_logprob_for_eap():
    model = family_model("gpt2")
    batch = padded_batch()
    logprob = attribute(model, batch, method="EAP", metric="answer_logprob")
    prob = attribute(model, batch, method="EAP", metric="answer_prob")
    factor = logprob.metric_clean.exp()[:, None, None]
    torch.testing.assert_close(prob.scores, factor * logprob.scores, atol=1e-7, rtol=1e-4)


def test_paper_metric_by_hand():
    """exp(q) (q - p), p and q the per-token geometric-mean answer probability of the current
    and the clean run: the pointwise kl_div(p, q, log_target=True) of the authors' code."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 7, generator=generator)
    clean = torch.randn(2, 6, 7, generator=generator)
    labels = torch.tensor([[-100, -100, 3, 1, 6, -100], [-100, 2, 5, 0, 4, 1]])

    def normalized_prob(values, row):
        logps = []
        for pos in range(1, labels.shape[1]):
            target = int(labels[row, pos])
            if target == -100:
                continue
            scores = values[row, pos - 1].tolist()
            logps.append(scores[target] - math.log(sum(math.exp(v) for v in scores)))
        return math.exp(sum(logps) / len(logps))

    got = paper_prob_diff(logits, labels, clean)
    for row in range(2):
        p, q = normalized_prob(logits, row), normalized_prob(clean, row)
        assert float(got[row]) == pytest.approx(math.exp(q) * (q - p), rel=1e-5)
    p = torch.tensor([normalized_prob(logits, r) for r in range(2)])
    q = torch.tensor([normalized_prob(clean, r) for r in range(2)])
    torch.testing.assert_close(got, torch.nn.functional.kl_div(p, q, log_target=True,
                                                               reduction="none"))
    assert paper_prob_diff(clean, labels, clean).abs().max() < 1e-7


def test_kl_metric_has_no_gradient_at_the_clean_input():
    model = family_model("gpt2")
    batch = padded_batch()
    eap = attribute(model, batch, method="EAP", metric="kl")
    assert eap.scores.abs().max() < 1e-6
    assert torch.allclose(eap.metric_clean, torch.zeros(3), atol=1e-6)
    ig = attribute(model, batch, method="EAP-IG-inputs", metric="kl", ig_steps=3)
    assert ig.scores.abs().max() > 1e-3
    assert (ig.metric_baseline > 0).all()


def test_named_baselines_are_the_token_embeddings_they_name():
    model = family_model("llama-gqa")
    batch = padded_batch()
    pad = attribute(model, batch, method="EAP", baseline="pad")
    pad_ids = torch.full_like(batch["input_ids"], model.config.pad_token_id)
    torch.testing.assert_close(pad.scores, attribute(model, batch, method="EAP",
                                                     baseline=pad_ids).scores)
    mean = attribute(model, batch, method="EAP", baseline="mean")
    mean_row = model.model.embed_tokens.weight.detach().mean(dim=0)
    mean_embeds = mean_row.expand(*batch["input_ids"].shape, -1).clone()
    torch.testing.assert_close(mean.scores, attribute(model, batch, method="EAP",
                                                      baseline=mean_embeds).scores)


def test_bad_inputs_raise_clear_errors():
    model = family_model("gpt2")
    batch = padded_batch()
    with pytest.raises(UnknownNameError):
        attribute(model, batch, method="ACDC")
    with pytest.raises(UnknownNameError):
        attribute(model, batch, rule="trapezoid")
    with pytest.raises(UnknownNameError):
        attribute(model, batch, metric="accuracy")
    with pytest.raises(UnknownNameError):
        attribute(model, batch, baseline="ones")
    left_padded = dict(batch, attention_mask=batch["attention_mask"].flip(1))
    with pytest.raises(DataError, match="attention_mask"):
        attribute(model, left_padded)
    no_answer = dict(batch, labels=torch.full_like(batch["labels"], -100))
    with pytest.raises(DataError, match="labels"):
        attribute(model, no_answer)
    with pytest.raises(DataError, match="baseline"):
        attribute(model, batch, baseline=batch["input_ids"][:, :4])


def test_model_is_left_as_it_was():
    model = family_model("llama-gqa")
    model.train()
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    attribute(model, padded_batch(), method="EAP-IG-activations", ig_steps=2)
    assert model.training
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks_before
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa", "neox-parallel", "phi-gqa"])
def test_closed_form_norm_vjp_equals_autograd(family):
    model = family_model(family)
    block = model_parts(model).blocks[1]
    torch.manual_seed(4)
    with torch.no_grad():
        block.attn_norm.weight.normal_()
    x = torch.randn(2, 5, 32) * 3
    cotangents = torch.randn(7, 2, 5, 32)
    closed = norm_vjp(block.attn_norm, x, cotangents)
    torch.testing.assert_close(closed, autograd_norm_vjp(block.attn_norm, x, cotangents),
                               atol=1e-5, rtol=1e-4)


def test_overflowing_zero_step_names_the_cause():
    """Deep RMSNorm models overflow at alpha = 0 with a zero baseline (as the reference does)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**FAMILY_CONFIG, "num_hidden_layers": 12},
                                         rms_norm_eps=1e-12)).eval()
    batch = padded_batch()
    with pytest.raises(NonFiniteError, match="midpoint"):
        attribute(model, batch, method="EAP-IG-inputs", rule="left")
    result = attribute(model, batch, method="EAP-IG-inputs", rule="midpoint")
    assert torch.isfinite(result.scores).all()


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa"])
@pytest.mark.parametrize("method", ["EAP-IG-inputs", "EAP-IG-activations"])
def test_chunked_attribution_equals_the_whole_batch(family, method):
    model = family_model(family)
    batch = padded_batch()
    whole = attribute(model, batch, method=method, ig_steps=2, chunk_size=len(batch["input_ids"]))
    for size in (1, 2):
        chunked = attribute(model, batch, method=method, ig_steps=2, chunk_size=size)
        scale = max(whole.scores.abs().max().item(), 1.0)
        torch.testing.assert_close(chunked.scores, whole.scores, atol=1e-5 * scale, rtol=0)
        torch.testing.assert_close(chunked.metric_clean, whole.metric_clean)
        torch.testing.assert_close(chunked.metric_baseline, whole.metric_baseline)
    assert whole.scores.abs().max() > 1e-2


def test_chunks_take_their_rows_of_a_tensor_baseline():
    model = family_model("llama-gqa")
    batch = padded_batch()
    corrupted = torch.randint(0, VOCAB, batch["input_ids"].shape, generator=torch.Generator()
                              .manual_seed(3))
    whole = attribute(model, batch, baseline=corrupted, ig_steps=2, chunk_size=99)
    chunked = attribute(model, batch, baseline=corrupted, ig_steps=2, chunk_size=1)
    scale = max(whole.scores.abs().max().item(), 1.0)
    torch.testing.assert_close(chunked.scores, whole.scores, atol=1e-5 * scale, rtol=0)
    with pytest.raises(DataError, match="baseline"):
        attribute(model, batch, baseline=corrupted[:, :-1], ig_steps=2, chunk_size=1)
    with pytest.raises(DataError, match="chunk_size"):
        attribute(model, batch, ig_steps=2, chunk_size=0)


def test_default_chunk_size_follows_the_memory_budget(monkeypatch):
    from unlearnscope.circuits import attribution

    model = family_model("llama-gqa")
    layout = graph_layout(model)
    per_sample = 4 * (layout.n_forward + layout.n_backward) * 10 * model.config.hidden_size
    monkeypatch.setattr(attribution, "MEMORY_BUDGET", 3 * per_sample + 1)
    assert attribution.default_chunk_size(model, 10) == 3
    monkeypatch.setattr(attribution, "MEMORY_BUDGET", 1)
    assert attribution.default_chunk_size(model, 10) == 1

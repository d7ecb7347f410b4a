"""The TransformerBridge backend against the fast backend, and the bridge against the HF model."""

from __future__ import annotations

import pytest
import torch

from tiny_models import FAMILIES, family_model, padded_batch
from unlearnscope.circuits import attribute
from unlearnscope.circuits.bridge import build_bridge, shared_clone
from unlearnscope.errors import UnknownNameError, UnlearnscopeError

# the bridge backend refuses Phi (a test below checks that it says so)
BRIDGE_FAMILIES = [family for family in FAMILIES if family != "phi-gqa"]
SETTINGS = [("EAP", "left"), ("EAP-IG-inputs", "left"), ("EAP-IG-inputs", "midpoint"),
            ("EAP-IG-activations", "left")]


def on_bridge(model, batch, **options):
    return attribute(model, batch, backend="bridge", **options)


def tiny(family: str):
    return family_model(family, perturb_vectors=True)


def assert_same_scores(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Per sample: equal to 1e-4 of that sample's largest |score|, and not trivially zero."""
    for sample, (got, want) in enumerate(zip(actual, expected, strict=True)):
        scale = want.abs().max()
        assert scale > 1e-3, f"sample {sample}: scores are ~0, the comparison would be vacuous"
        error = (got - want).abs().max() / scale
        assert error < 1e-4, f"sample {sample}: max error {error:.2e} of the largest score"


@pytest.mark.parametrize("family", BRIDGE_FAMILIES)
@pytest.mark.parametrize(("method", "rule"), SETTINGS)
def test_bridge_matches_fast_backend(family, method, rule):
    model, batch = tiny(family), padded_batch()
    fast = attribute(model, batch, method=method, ig_steps=5, baseline="zero", rule=rule)
    bridged = on_bridge(model, batch, method=method, ig_steps=5, baseline="zero", rule=rule)
    assert bridged.scores.dtype == torch.float32
    assert bridged.scores.shape == fast.scores.shape
    assert bridged.forward_names == fast.forward_names
    assert bridged.backward_names == fast.backward_names
    assert not bridged.scores[:, ~bridged.real_edge_mask].any()
    assert_same_scores(bridged.scores, fast.scores)
    torch.testing.assert_close(bridged.metric_clean, fast.metric_clean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bridged.metric_baseline, fast.metric_baseline, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("baseline", ["pad", "mean", "corrupted"])
@pytest.mark.parametrize("metric", ["answer_logprob", "answer_prob", "kl"])
def test_bridge_matches_fast_backend_on_baselines_and_metrics(baseline, metric):
    model, batch = tiny("llama-gqa"), padded_batch()
    if baseline == "corrupted":
        baseline = padded_batch(seed=7)["input_ids"]
    fast = attribute(model, batch, method="EAP-IG-inputs", ig_steps=3, baseline=baseline,
                     rule="midpoint", metric=metric)
    bridged = on_bridge(model, batch, method="EAP-IG-inputs", ig_steps=3,
                        baseline=baseline, rule="midpoint", metric=metric)
    assert_same_scores(bridged.scores, fast.scores)


def test_bridge_scores_are_per_sample():
    """Each sample alone (unpadded) scores the same as inside the right-padded batch."""
    model, batch = tiny("llama-gqa"), padded_batch()
    together = on_bridge(model, batch, method="EAP-IG-inputs", rule="midpoint").scores
    for sample, length in enumerate(batch["attention_mask"].sum(dim=1).tolist()):
        alone = {key: value[sample: sample + 1, :length] for key, value in batch.items()}
        scores = on_bridge(model, alone, method="EAP-IG-inputs", rule="midpoint").scores
        assert_same_scores(together[sample: sample + 1], scores)


def _storages(params) -> set[int]:
    return {param.untyped_storage().data_ptr() for param in params}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_bridge_wraps_the_model_parameters_without_copy(family):
    model = tiny(family)
    bridge = build_bridge(model)
    # The model's own tensors, at the same addresses ...
    assert {p.data_ptr() for p in model.parameters()} <= {p.data_ptr() for p in bridge.parameters()}
    # ... and nothing else: GPT-2's split q/k/v weights are views into the fused `c_attn`.
    assert _storages(bridge.parameters()) == _storages(model.parameters())


def test_neox_bridge_copies_only_its_split_qkv():
    """GPT-NeoX fuses q/k/v per head (`[head, qkv, head_dim]` rows), which TransformerLens 4.3
    splits into copies; everything else is the model's own memory."""
    model = tiny("neox-sequential")
    shared = _storages(model.parameters())
    copied = {name.split(".")[-3] for name, param in build_bridge(model).named_parameters()
              if param.untyped_storage().data_ptr() not in shared}
    assert copied == {"q", "k", "v"}


def test_ungrouped_bridge_copies_only_key_and_value_projections():
    model = tiny("llama-gqa")
    shared = {param.data_ptr() for param in model.parameters()}
    clone = shared_clone(model)
    for name, param in clone.named_parameters():
        copied = name.endswith(("k_proj.weight", "v_proj.weight"))
        assert (param.data_ptr() not in shared) == copied, name
        if copied:
            assert param.shape == (32, 32)  # one 8-wide k/v head per query head


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa", "qwen2-gqa", "neox-sequential"])
def test_bridge_and_ungrouped_clone_logits_equal_the_model(family):
    model, batch = tiny(family), padded_batch()
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        expected = model(**inputs).logits[real]
        clone_logits = shared_clone(model)(**inputs).logits[real]
        bridge_logits = build_bridge(model)(batch["input_ids"], return_type="logits",
                                            attention_mask=batch["attention_mask"])[real]
    torch.testing.assert_close(clone_logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bridge_logits, expected, atol=1e-5, rtol=1e-5)


def test_attribute_bridge_leaves_the_model_as_it_was():
    model, batch = tiny("llama-gqa"), padded_batch()
    modules = [(name, type(module)) for name, module in model.named_modules()]
    attn_implementation = model.config._attn_implementation
    with torch.no_grad():
        before = model(**batch).logits
    on_bridge(model, batch, method="EAP")
    assert [(name, type(module)) for name, module in model.named_modules()] == modules
    assert model.config._attn_implementation == attn_implementation
    assert model.config.num_key_value_heads == 2
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)


def test_phi_is_refused_with_the_reason():
    """TransformerLens 4.3's parallel block for Phi (MLP on the shared attention norm) never
    fires `hook_mlp_in`, so the MLP readers' residual-stream gradients are not on the bridge."""
    with pytest.raises(UnlearnscopeError, match=r"never fires the hook points.*hook_mlp_in"):
        on_bridge(tiny("phi-gqa"), padded_batch(), method="EAP")


def test_unknown_method_is_refused():
    with pytest.raises(UnknownNameError, match="EAP-IG-inputs"):
        on_bridge(tiny("gpt2"), padded_batch(), method="IG")


def test_attribute_dispatches_to_the_bridge_backend():
    model, batch = tiny("llama"), padded_batch()
    hooks = attribute(model, batch, method="EAP")
    bridged = attribute(model, batch, method="EAP", backend="bridge")
    scale = hooks.scores.abs().max()
    assert (bridged.scores - hooks.scores).abs().max() <= 1e-4 * scale
    with pytest.raises(UnknownNameError, match="unknown attribution backend 'jax'"):
        attribute(model, batch, backend="jax")

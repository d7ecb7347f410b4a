"""Unlearning methods on a tiny Llama model: values, masking, references, one update step."""

from __future__ import annotations

import copy
import json
import math

import pandas as pd
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tiny_models import FAMILY_CONFIG, family_model, padded_batch, toy_llama, toy_tokenizer
from unlearning_support import toy_samples
from unlearnscope.data.tokenize import collate, encode_samples, pad_id
from unlearnscope.errors import DataError, UnknownNameError
from unlearnscope.models.architecture import decoder_layers
from unlearnscope.models.logprobs import mean_answer_nll
from unlearnscope.unlearning import losses, trainer
from unlearnscope.unlearning.methods import METHODS, RMU_SETTINGS, get_method
from unlearnscope.unlearning.trainer import run_unlearning


@pytest.fixture(scope="module")
def setup():
    tokenizer = toy_tokenizer()
    model = toy_llama(tokenizer, seed=0)
    reference = toy_llama(tokenizer, seed=1).requires_grad_(False)
    encoded = encode_samples(tokenizer, toy_samples()).samples
    return tokenizer, model, reference, encoded


def batch_of(encoded, tokenizer, indices):
    return collate([encoded[i] for i in indices], pad_id(tokenizer))


def test_registry_has_every_method_and_rejects_unknown_names():
    assert set(METHODS) == {"grad_ascent", "grad_diff", "npo", "simnpo", "undial", "rmu"}
    with pytest.raises(UnknownNameError, match="unknown unlearning method 'nope'"):
        get_method("nope")
    with pytest.raises(UnknownNameError, match="option"):
        get_method("npo", bta=1.0)
    npo = get_method("npo")
    assert (npo.beta, npo.gamma, npo.alpha, npo.retain_loss) == (0.1, 1.0, 1.0, "nll")
    simnpo = get_method("simnpo")
    assert (simnpo.beta, simnpo.delta, simnpo.gamma) == (4.5, 0.0, 0.125)
    assert get_method("undial").beta == 10.0
    assert not get_method("grad_ascent").uses_retain
    assert get_method("grad_diff", retain_loss="kl").uses_reference
    assert {get_method(name).nll_weighting for name in METHODS} == {"token"}
    with pytest.raises(UnknownNameError, match="unknown nll_weighting 'tokens'"):
        get_method("grad_diff", nll_weighting="tokens")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_padding_in_a_batch_changes_no_sample(name, setup):
    """A sample's forget term is the same alone as next to a longer (padding-forcing) one."""
    tokenizer, model, reference, encoded = setup
    method = get_method(name, layer=0) if name == "rmu" else get_method(name)
    lengths = [len(e.input_ids) for e in encoded]
    short, long = lengths.index(min(lengths)), lengths.index(max(lengths))
    assert min(lengths) < max(lengths)
    with torch.no_grad():
        together = method.forget_loss(model, batch_of(encoded, tokenizer, [short, long]), reference)
        alone = torch.cat([method.forget_loss(model, batch_of(encoded, tokenizer, [i]), reference)
                           for i in (short, long)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def answer_tokens(batch) -> list[int]:
    """Answer tokens (labels after the shift) per sample of a collated batch."""
    return (batch["labels"][:, 1:] != -100).sum(dim=1).tolist()


def test_grad_ascent_is_negative_answer_nll_and_one_step_raises_forget_loss(setup):
    tokenizer, _, _, encoded = setup
    model = toy_llama(tokenizer, seed=0)
    batch = batch_of(encoded, tokenizer, [0, 1, 2])
    counts = answer_tokens(batch)
    assert len(set(counts)) > 1  # answers of different lengths
    with torch.no_grad():
        output = model(**batch)  # HF's loss: the mean over every answer token of the batch
        before = mean_answer_nll(output.logits, batch["labels"])
    by_token = sum(n * v for n, v in zip(counts, before.tolist(), strict=True)) / sum(counts)
    assert output.loss.item() == pytest.approx(by_token, rel=1e-6)
    sample = get_method("grad_ascent", nll_weighting="sample").loss(model, batch, None, None)
    assert sample.total.item() == pytest.approx(-before.mean().item(), rel=1e-6)
    method = get_method("grad_ascent")
    parts = method.loss(model, batch, None, None)
    assert parts.total.item() == pytest.approx(-output.loss.item(), rel=1e-6)
    # the two weightings differ (per-sample NLLs of a random model differ little) by far more
    # than the tolerance above
    assert abs(parts.total.item() - sample.total.item()) > 50 * 1e-6 * abs(sample.total.item())
    assert parts.retain is None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    parts.total.backward()
    optimizer.step()
    with torch.no_grad():
        after = mean_answer_nll(model(**batch).logits, batch["labels"])
    assert after.mean() > before.mean() + 1e-3


def test_npo_at_the_reference_is_two_over_beta_log_two(setup):
    tokenizer, model, _, encoded = setup
    reference = copy.deepcopy(model).requires_grad_(False)
    batch = batch_of(encoded, tokenizer, [0, 3, 5])
    for beta in (0.1, 1.0):
        value = get_method("npo", beta=beta).forget_loss(model, batch, reference)
        assert value.tolist() == pytest.approx([2 / beta * math.log(2)] * 3, rel=1e-5)


def test_simnpo_and_undial_match_their_formulas_on_the_model(setup):
    tokenizer, model, reference, encoded = setup
    batch = batch_of(encoded, tokenizer, [1, 4])
    with torch.no_grad():
        nll = mean_answer_nll(model(**batch).logits, batch["labels"])
        simnpo = get_method("simnpo").forget_loss(model, batch, None)
    expected = [(2 / 4.5) * math.log(1 + math.exp(-4.5 * v)) for v in nll.tolist()]
    assert simnpo.tolist() == pytest.approx(expected, rel=1e-5)
    # With beta = 0 UNDIAL is plain distillation: CE(teacher, student) = H(teacher) + KL >= H.
    with torch.no_grad():
        undial_0 = get_method("undial", beta=0.0).forget_loss(model, batch, reference)
        kl = get_method("grad_diff", retain_loss="kl").retain_losses()["kl"](model, batch, reference)
    assert (undial_0 > kl).all()
    assert (undial_0 - kl).tolist() == pytest.approx(
        get_method("undial", beta=0.0).forget_loss(reference, batch, reference).tolist(), rel=1e-4)


def test_kl_retain_term_is_zero_at_the_reference_and_total_combines_terms(setup):
    tokenizer, model, _, encoded = setup
    reference = copy.deepcopy(model).requires_grad_(False)
    forget, retain = batch_of(encoded, tokenizer, [0, 1]), batch_of(encoded, tokenizer, [5, 6, 7])
    method = get_method("grad_diff", retain_loss="kl", gamma=2.0, alpha=3.0)
    parts = method.loss(model, forget, retain, reference)
    assert parts.retain.item() == pytest.approx(0.0, abs=1e-6)
    nll_method = get_method("grad_diff", gamma=2.0, alpha=3.0)
    parts = nll_method.loss(model, forget, retain, None)
    with torch.no_grad():
        f, r = model(**forget).loss, model(**retain).loss
    assert parts.total.item() == pytest.approx((-2.0 * f + 3.0 * r).item(), rel=1e-5)


@pytest.mark.parametrize("name", ["grad_diff", "npo", "simnpo"])
def test_nll_retain_term_is_token_weighted_by_default_and_per_sample_by_option(name, setup):
    tokenizer, model, reference, encoded = setup
    forget, retain = batch_of(encoded, tokenizer, [0]), batch_of(encoded, tokenizer, [3, 5, 7])
    counts = answer_tokens(retain)
    assert len(set(counts)) > 1
    with torch.no_grad():
        per_sample = mean_answer_nll(model(**retain).logits, retain["labels"]).tolist()
        token = get_method(name).loss(model, forget, retain, reference).retain
        sample = get_method(name, nll_weighting="sample").loss(model, forget, retain,
                                                               reference).retain
    hand_token = sum(n * v for n, v in zip(counts, per_sample, strict=True)) / sum(counts)
    assert token.item() == pytest.approx(hand_token, rel=1e-6)
    assert sample.item() == pytest.approx(sum(per_sample) / 3, rel=1e-6)
    assert token.item() != pytest.approx(sample.item(), rel=1e-4)


@pytest.mark.parametrize("name", ["npo", "simnpo", "undial", "rmu"])
@pytest.mark.parametrize("weighting", ["token", "sample"])
def test_other_forget_terms_stay_plain_means_of_per_sample_values(name, weighting, setup):
    """NPO, SimNPO, UNDIAL and RMU average their per-sample forget values with equal weights
    (DESIGN 5.2) whatever `nll_weighting` says."""
    tokenizer, model, reference, encoded = setup
    forget = batch_of(encoded, tokenizer, [0, 1, 2])
    assert len(set(answer_tokens(forget))) > 1
    options = {"layer": 0, "nll_weighting": weighting}
    method = get_method(name, **options) if name == "rmu" else get_method(
        name, nll_weighting=weighting)
    with torch.no_grad():
        per_sample = method.forget_loss(model, forget, reference)
        parts = method.loss(model, forget, None, reference)
    assert parts.forget.item() == pytest.approx(per_sample.mean().item(), rel=1e-6)


def test_rmu_hand_value_trainable_layers_and_zero_retain_at_reference(setup):
    tokenizer, _, _, encoded = setup
    model = toy_llama(tokenizer, seed=0, layers=3)
    reference = copy.deepcopy(model).requires_grad_(False)
    method = get_method("rmu", setting="small-model", layer=1, steering_coeff=5.0, seed=3)
    method.prepare(model)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == [f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)]
    batch = batch_of(encoded, tokenizer, [2, 3])
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[2]  # output of block 1
        value = method.forget_loss(model, batch, reference)
    u = torch.rand(32, generator=torch.Generator().manual_seed(3))
    target = 5.0 * u / u.norm()
    for row in range(2):
        answer = batch["labels"][row] != -100
        expected = (hidden[row, answer] - target).pow(2).mean().item()
        assert value[row].item() == pytest.approx(expected, rel=1e-5)
    parts = method.loss(model, batch, batch_of(encoded, tokenizer, [6]), reference)
    assert parts.retain.item() == pytest.approx(0.0, abs=1e-10)
    parts.total.backward()
    assert all((p.grad is None) != p.requires_grad for p in model.parameters())


def test_rmu_small_model_setting_scales_the_layer_and_options_show_it(setup):
    tokenizer = setup[0]
    method = get_method("rmu", setting="small-model")
    assert [method.resolved_layer(n) for n in (16, 30, 4, 2, 1)] == [7, 14, 1, 0, 0]
    assert get_method("rmu", layer=9).resolved_layer(4) == 3
    model = toy_llama(tokenizer, layers=4)
    method.prepare(model)
    assert method.options == {
        "setting": "small-model", "gamma": 1.0, "alpha": 1000.0, "retain_loss": "hidden_mse",
        "nll_weighting": "token", "steering_coeff": 300.0, "layer": 1, "trainable_layers": [0, 1],
        "trainable_params": r"mlp\.(down_proj|c_proj|dense_4h_to_h|fc_out|fc2)\.weight",
        "steering_scale": None, "seed": 0, "forget_hidden_norm": None}
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == [
        f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)]
    # explicit options win over the setting's
    assert get_method("rmu", setting="small-model", alpha=10.0).options["alpha"] == 10.0


def test_rmu_reference_setting_is_open_unlearnings_config_and_trains_everything(setup):
    """open-unlearning's configs/trainer/RMU.yaml: steering_coeff 2, alpha 1, gamma 1,
    EMBED_DIFF retain, module model.layers.7, trainable_params_regex `.*`."""
    tokenizer = setup[0]
    assert get_method("rmu").setting == "reference"
    method = get_method("rmu")
    model = toy_llama(tokenizer, layers=8)
    method.prepare(model)
    assert method.options == {
        "setting": "reference", "gamma": 1.0, "alpha": 1.0, "retain_loss": "hidden_mse",
        "nll_weighting": "token", "steering_coeff": 2.0, "layer": 7, "trainable_layers": "all",
        "trainable_params": None, "steering_scale": None, "seed": 0, "forget_hidden_norm": None}
    # block 7 is the last: every parameter but the final norm and the LM head reaches it
    assert sorted(n for n, p in model.named_parameters() if not p.requires_grad) == [
        "lm_head.weight", "model.norm.weight"]
    assert method.steering_vector(32).norm().item() == pytest.approx(2.0, rel=1e-6)
    assert method.uses_reference
    small = get_method("rmu", setting="small-model", trainable_layers="all")
    assert small.trainable_params is None and small.alpha == 1000.0
    with pytest.raises(UnknownNameError, match="unknown rmu setting 'tiny'"):
        get_method("rmu", setting="tiny")
    with pytest.raises(DataError, match="leave trainable_params unset"):
        get_method("rmu", trainable_params="mlp.*")
    with pytest.raises(DataError, match=r"'rmu\.trainable_layers'"):
        get_method("rmu", trainable_layers="some")
    assert set(RMU_SETTINGS) == {"reference", "small-model"}


def full_forward_block_output(model, batch, block: int) -> torch.Tensor:
    """Output of `block` from a complete forward (every block and the LM head run)."""
    captured = []
    handle = decoder_layers(model)[block].register_forward_hook(
        lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out))
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        handle.remove()
    return captured[0]


@pytest.mark.parametrize("family", ["llama", "llama-gqa", "qwen2-gqa", "gpt2", "neox-parallel",
                                    "phi-gqa"])
def test_rmu_forward_stops_at_the_steered_block_with_the_full_forwards_loss_and_gradients(family):
    """Loss and every gradient equal those of a full forward; no block above the steered one,
    and no LM head, runs (for the model or the frozen reference)."""
    model = family_model(family)
    reference = copy.deepcopy(model).requires_grad_(False)
    forget, retain = padded_batch(1), padded_batch(2)
    method = get_method("rmu", layer=0, steering_coeff=5.0, alpha=3.0)
    target = method.steering_vector(model.config.hidden_size)
    hidden = full_forward_block_output(model, forget, 0)
    with torch.no_grad():
        frozen = full_forward_block_output(reference, retain, 0)
    expected = (losses.hidden_mse(hidden, target, forget["labels"] != -100).mean()
                + 3.0 * losses.hidden_mse(full_forward_block_output(model, retain, 0), frozen,
                                          retain["labels"] != -100).mean())
    expected.backward()
    expected_grads = {n: None if p.grad is None else p.grad.clone()
                      for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    calls = []
    handles = [module.register_forward_pre_hook(lambda *_: calls.append(1))
               for net in (model, reference)
               for module in (decoder_layers(net)[1], net.get_output_embeddings())]
    parts = method.loss(model, forget, retain, reference)
    for handle in handles:
        handle.remove()
    assert calls == []
    assert torch.equal(parts.total, expected.detach())
    parts.total.backward()
    for name, param in model.named_parameters():
        if expected_grads[name] is None:
            assert param.grad is None, name
        else:
            torch.testing.assert_close(param.grad, expected_grads[name], rtol=1e-6, atol=0,
                                       msg=name)
    assert any(g is None for g in expected_grads.values())  # block 1 and the head get none
    assert model.forward.__func__ is type(model).forward  # the patched forward is gone
    assert "forward" not in vars(model) and "forward" not in vars(reference)


def test_rmu_prepare_freezes_what_the_steered_block_does_not_reach(setup):
    tokenizer = setup[0]
    model = toy_llama(tokenizer, layers=3)
    get_method("rmu", layer=1).prepare(model)
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert frozen == sorted(["lm_head.weight", "model.norm.weight",
                             *(n for n, _ in model.named_parameters()
                               if n.startswith("model.layers.2."))])
    # a retain term on the logits runs the whole model: nothing is frozen
    model = toy_llama(tokenizer, layers=3)
    get_method("rmu", layer=1, retain_loss="nll").prepare(model)
    assert all(p.requires_grad for p in model.parameters())
    # tied embeddings: the LM head's weight is the embedding, which block 0 reads
    torch.manual_seed(0)
    tied = LlamaForCausalLM(LlamaConfig(**{**FAMILY_CONFIG, "tie_word_embeddings": True}))
    get_method("rmu", layer=0).prepare(tied)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight and tied.lm_head.weight.requires_grad
    assert not any(p.requires_grad for p in tied.model.layers[1].parameters())
    with pytest.raises(ValueError, match="reaches the output of block 0"):
        get_method("rmu", layer=0, trainable_layers=[1], trainable_params=".*").prepare(
            toy_llama(tokenizer, layers=3))


def test_rmu_run_leaves_the_parameters_above_the_steered_block_exactly_as_they_were(setup):
    """With weight decay, everything the steered output depends on moves; the blocks above,
    the final norm and the LM head are neither updated nor decayed (as before the forward
    stopped early: their gradient was None, and AdamW skips those)."""
    tokenizer = setup[0]
    start = toy_llama(tokenizer, layers=3)
    result = run_unlearning(copy.deepcopy(start), tokenizer, toy_samples("f")[:4],
                            toy_samples("r")[4:], "rmu", epochs=2, lr=5e-3, batch_size=2,
                            grad_accum=1, warmup_epochs=0.0, weight_decay=0.5,
                            method_options={"layer": 1, "steering_coeff": 5.0})
    after = dict(result.model.named_parameters())
    for name, param in start.named_parameters():
        untouched = name in ("lm_head.weight", "model.norm.weight") or name.startswith(
            "model.layers.2.")
        assert torch.equal(after[name], param) == untouched, name


def hand_mean_norm(model, batches, layer: int) -> float:
    """Mean L2 norm of block `layer`'s output over answer positions, from HF hidden states."""
    norms = []
    with torch.no_grad():
        for batch in batches:
            hidden = model(**batch, output_hidden_states=True).hidden_states[layer + 1]
            for row in range(hidden.shape[0]):
                answer = batch["labels"][row] != -100
                norms.extend(hidden[row, answer].norm(dim=-1).tolist())
    return sum(norms) / len(norms)


def test_rmu_auto_steering_coeff_is_scale_times_the_measured_hidden_norm(setup):
    tokenizer, _, _, encoded = setup
    model = toy_llama(tokenizer, seed=2, layers=3)
    forget = encoded[:5]
    batches = [batch_of(encoded, tokenizer, [i]) for i in range(5)]  # one at a time: no padding
    norm = hand_mean_norm(model, batches, layer=1)
    method = get_method("rmu", steering_coeff="auto", steering_scale=0.5, layer=1)
    method.prepare(model, forget, pad_token_id=pad_id(tokenizer))
    assert method.options["forget_hidden_norm"] == pytest.approx(norm, rel=1e-5)
    assert method.options["steering_coeff"] == pytest.approx(0.5 * norm, rel=1e-5)
    assert method.options["steering_scale"] == 0.5
    assert method.steering_vector(32).norm().item() == pytest.approx(0.5 * norm, rel=1e-5)
    assert get_method("rmu", steering_coeff="auto").steering_scale == 1.0
    with pytest.raises(DataError, match="measured on the forget samples"):
        get_method("rmu", steering_coeff="auto", layer=1).prepare(model)
    with pytest.raises(DataError, match="steering_scale applies to steering_coeff='auto'"):
        get_method("rmu", steering_scale=2.0)
    with pytest.raises(DataError, match="expected a number or 'auto'"):
        get_method("rmu", steering_coeff="big")


def test_rmu_auto_steering_coeff_is_recorded_and_stable_across_resume(setup, tmp_path,
                                                                      monkeypatch):
    tokenizer = setup[0]
    forget, retain = toy_samples("f")[:4], toy_samples("r")[4:]
    settings = {"epochs": 2, "lr": 5e-3, "batch_size": 2, "grad_accum": 1, "warmup_epochs": 0.0,
                "checkpoint_every": 1, "save": False,
                "method_options": {"setting": "small-model", "steering_coeff": "auto",
                                   "steering_scale": 2.0, "layer": 1, "alpha": 1.0}}
    straight = run_unlearning(toy_llama(tokenizer, layers=3), tokenizer, forget, retain, "rmu",
                              out_dir=tmp_path / "straight", **settings)
    encoded = encode_samples(tokenizer, forget).samples
    norm = hand_mean_norm(toy_llama(tokenizer, layers=3),
                          [batch_of(encoded, tokenizer, [i]) for i in range(4)], layer=1)
    recorded = json.loads((tmp_path / "straight" / "config.json").read_text())
    options = recorded["options"]["method_options"]
    assert options["steering_coeff"] == pytest.approx(2.0 * norm, rel=1e-5)
    assert options["forget_hidden_norm"] == pytest.approx(norm, rel=1e-5)
    assert straight.summary["method_options"] == options

    real_step = trainer._UnlearnRun.train_step

    def killed_at_step_three(*args, **kwargs):
        if args[1] == 2:  # (run, step, forget, retain)
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer._UnlearnRun, "train_step", killed_at_step_three)
    with pytest.raises(KeyboardInterrupt):
        run_unlearning(toy_llama(tokenizer, layers=3), tokenizer, forget, retain, "rmu",
                       out_dir=tmp_path / "resumed", **settings)
    monkeypatch.setattr(trainer._UnlearnRun, "train_step", real_step)
    resumed = run_unlearning(toy_llama(tokenizer, layers=3), tokenizer, forget, retain, "rmu",
                             out_dir=tmp_path / "resumed", resume=True, **settings)
    again = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert again["options"]["method_options"] == options
    pd.testing.assert_frame_equal(straight.outcomes, resumed.outcomes, rtol=1e-6)

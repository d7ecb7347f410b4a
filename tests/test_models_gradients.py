"""Per-sample gradients: batched passes equal a plain backward per sample, whatever the batch."""

import copy

import pytest
import torch

from unlearnscope.data.tokenize import encode_samples, pad_id
from unlearnscope.models import gradients
from unlearnscope.models.gradients import (
    mean_tensor_norm,
    per_sample_gradient_norms,
    per_sample_gradients,
    total_l2_norm,
)
from unlearnscope.models.logprobs import mean_answer_nll


def _one_by_one(model, encoded) -> list[list[torch.Tensor]]:
    grads = []
    for sample in encoded:
        model.zero_grad()
        ids, labels = torch.tensor([sample.input_ids]), torch.tensor([sample.labels])
        mean_answer_nll(model(input_ids=ids).logits, labels).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    model.zero_grad()
    return grads


@pytest.fixture(scope="module")
def float64_lm(tiny_lm, small_samples):
    model, tokenizer = tiny_lm
    model = copy.deepcopy(model).double().eval()
    return model, tokenizer, encode_samples(tokenizer, small_samples[:5]).samples


def test_batched_gradients_and_norms_equal_a_backward_per_sample(float64_lm, monkeypatch):
    model, tokenizer, encoded = float64_lm
    expected = _one_by_one(model, encoded)
    seen, sizes = [], []
    for indices, grads in per_sample_gradients(model, encoded, pad_id(tokenizer), batch_size=3):
        seen += indices
        sizes.append(len(indices))
        assert all(g.shape[0] == len(indices) for g in grads)
        for row, index in enumerate(indices):
            for got, want in zip(grads, expected[index], strict=True):
                torch.testing.assert_close(got[row], want, rtol=1e-9, atol=1e-12)
    assert sorted(seen) == list(range(len(encoded)))
    assert sizes == [3, 2]
    l2 = torch.tensor([sum(float(g.pow(2).sum()) for g in e) ** 0.5 for e in expected],
                      dtype=torch.float64)
    mean_l1 = torch.tensor([sum(float(g.abs().sum()) for g in e) / len(e) for e in expected],
                           dtype=torch.float64)
    torch.testing.assert_close(per_sample_gradient_norms(
        model, encoded, pad_id(tokenizer), batch_size=4), l2, rtol=1e-9, atol=0)
    torch.testing.assert_close(per_sample_gradient_norms(
        model, encoded, pad_id(tokenizer), reduce=mean_tensor_norm(1.0), batch_size=4),
        mean_l1, rtol=1e-9, atol=0)
    # a budget below one sample's gradient: one sample per pass, the same norms
    monkeypatch.setattr(gradients, "PER_SAMPLE_GRADIENT_BUDGET", 10)
    torch.testing.assert_close(per_sample_gradient_norms(
        model, encoded, pad_id(tokenizer), batch_size=4), l2, rtol=1e-9, atol=0)


def test_a_parameter_the_objective_does_not_reach_gets_zeros(float64_lm):
    model, tokenizer, encoded = float64_lm
    model = copy.deepcopy(model)
    unused = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    model.register_parameter("unused", unused)
    position = [p is unused for p in model.parameters()].index(True)
    _, grads = next(per_sample_gradients(model, encoded[:2], pad_id(tokenizer)))
    assert torch.equal(grads.pop(position), torch.zeros(2, 3, dtype=torch.float64))
    assert float(total_l2_norm([g[0] for g in grads])) > 0


def test_all_weights_includes_frozen_ones(float64_lm):
    model, tokenizer, encoded = float64_lm
    model = copy.deepcopy(model)
    frozen = next(model.parameters()).requires_grad_(False)
    _, trainable = next(per_sample_gradients(model, encoded[:2], pad_id(tokenizer)))
    _, every = next(per_sample_gradients(model, encoded[:2], pad_id(tokenizer),
                                         all_weights=True))
    assert len(every) == len(trainable) + 1 and every[0].shape[1:] == frozen.shape

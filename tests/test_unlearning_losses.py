"""Each unlearning loss term against hand computations on fixed logits."""

from __future__ import annotations

import math

import pytest
import torch

from unlearnscope.data.tokenize import IGNORE_INDEX
from unlearnscope.unlearning import losses

# Two samples over a vocabulary of 3. Sample 0: prompt at positions 0-1, answer tokens at 2-3,
# padding at 4. Sample 1: prompt at 0, answer at 1-4. Labels are on the answer positions.
LABELS = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 0, IGNORE_INDEX],
                       [IGNORE_INDEX, 1, 1, 2, 0]])


def fixed_logits(seed: int) -> torch.Tensor:
    return torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(seed))


def answer_positions(labels: torch.Tensor) -> list[list[int]]:
    """Per sample, the logit positions that predict an answer token (t predicts t+1)."""
    return [[t for t in range(labels.shape[1] - 1) if labels[b, t + 1] != IGNORE_INDEX]
            for b in range(labels.shape[0])]


def softmax(row: list[float]) -> list[float]:
    z = [math.exp(x) for x in row]
    return [x / sum(z) for x in z]


def perturb_outside_answer(logits: torch.Tensor) -> torch.Tensor:
    """Change every logit row that does not predict an answer token."""
    changed = logits.clone()
    keep = {(b, t) for b, ts in enumerate(answer_positions(LABELS)) for t in ts}
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if (b, t) not in keep:
                changed[b, t] = torch.tensor([9.0, -4.0, 3.0])
    return changed


def test_npo_hand_value_and_zero_log_ratio():
    logp = torch.tensor([-3.0, -5.0])
    logp_ref = torch.tensor([-2.0, -5.0])
    value = losses.npo_loss(logp, logp_ref, beta=0.1)
    # -(2/b) logsigmoid(-b * (-1)) = (2/b) log(1 + exp(-0.1)); at equal log-probs (2/b) log 2.
    assert value[0].item() == pytest.approx(20 * math.log(1 + math.exp(-0.1)), rel=1e-6)
    assert value[1].item() == pytest.approx(20 * math.log(2), rel=1e-6)


def test_simnpo_hand_value():
    value = losses.simnpo_loss(torch.tensor([1.0, 2.0]), beta=4.5, delta=0.5)
    expected = [(2 / 4.5) * math.log(1 + math.exp(-4.5 * (nll - 0.5))) for nll in (1.0, 2.0)]
    assert value.tolist() == pytest.approx(expected, rel=1e-6)


def slow_undial(logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                beta: float) -> list[float]:
    out = []
    for b, positions in enumerate(answer_positions(labels)):
        terms = []
        for t in positions:
            y = int(labels[b, t + 1])
            shifted = [v - (beta if k == y else 0.0) for k, v in enumerate(teacher[b, t].tolist())]
            target = softmax(shifted)
            student = softmax(logits[b, t].tolist())
            terms.append(-sum(p * math.log(q) for p, q in zip(target, student, strict=True)))
        out.append(sum(terms) / len(terms))
    return out


def test_undial_matches_hand_computation_and_ignores_prompt_and_padding():
    student, teacher = fixed_logits(0), fixed_logits(1)
    value = losses.undial_loss(student, teacher, LABELS, beta=10.0)
    assert value.tolist() == pytest.approx(slow_undial(student, teacher, LABELS, 10.0), rel=1e-5)
    moved = losses.undial_loss(perturb_outside_answer(student), perturb_outside_answer(teacher),
                               LABELS, beta=10.0)
    torch.testing.assert_close(moved, value)


def test_undial_single_token_by_hand():
    # One answer token y=0, teacher logits 0 everywhere, beta = ln 2: target = (1/5, 2/5, 2/5).
    labels = torch.tensor([[IGNORE_INDEX, 0]])
    teacher = torch.zeros(1, 2, 3)
    student = torch.zeros(1, 2, 3)
    value = losses.undial_loss(student, teacher, labels, beta=math.log(2))
    assert value.item() == pytest.approx(math.log(3), rel=1e-6)  # uniform student: CE = log 3
    student[0, 0] = torch.tensor([0.0, math.log(2), math.log(2)])  # student = (1/5, 2/5, 2/5)
    entropy = -(0.2 * math.log(0.2) + 2 * 0.4 * math.log(0.4))
    value = losses.undial_loss(student, teacher, labels, beta=math.log(2))
    assert value.item() == pytest.approx(entropy, rel=1e-6)


def slow_kl(logits: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor) -> list[float]:
    out = []
    for b, positions in enumerate(answer_positions(labels)):
        terms = []
        for t in positions:
            p, q = softmax(logits[b, t].tolist()), softmax(ref[b, t].tolist())
            terms.append(sum(qi * math.log(qi / pi) for pi, qi in zip(p, q, strict=True)))
        out.append(sum(terms) / len(terms))
    return out


def test_kl_matches_hand_computation_is_zero_at_reference_and_ignores_padding():
    logits, ref = fixed_logits(2), fixed_logits(3)
    value = losses.kl_to_reference(logits, ref, LABELS)
    assert value.tolist() == pytest.approx(slow_kl(logits, ref, LABELS), rel=1e-5)
    assert (value > 0).all()
    assert losses.kl_to_reference(ref, ref, LABELS).abs().max().item() < 1e-6
    moved = losses.kl_to_reference(perturb_outside_answer(logits), ref, LABELS)
    torch.testing.assert_close(moved, value)


def test_hidden_mse_hand_value_and_mask():
    hidden = torch.tensor([[[1.0, 3.0], [2.0, 2.0], [100.0, -7.0]]])
    target = torch.tensor([1.0, 1.0])
    mask = torch.tensor([[True, True, False]])
    # position 0: ((0)^2 + (2)^2)/2 = 2; position 1: (1 + 1)/2 = 1; mean = 1.5
    assert losses.hidden_mse(hidden, target, mask).item() == pytest.approx(1.5)


def test_masked_token_mean_empty_row_is_zero():
    values = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    mask = torch.tensor([[False, False], [True, True]])
    assert losses.masked_token_mean(values, mask).tolist() == [0.0, 4.0]


def slow_answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> list[list[float]]:
    """Per sample, the NLL of each answer token, from a hand softmax."""
    return [[-math.log(softmax(logits[b, t].tolist())[int(labels[b, t + 1])]) for t in positions]
            for b, positions in enumerate(answer_positions(labels))]


def test_nll_batch_mean_token_and_sample_weighting_by_hand():
    logits = fixed_logits(4)
    per_token = slow_answer_nll(logits, LABELS)
    assert [len(t) for t in per_token] == [2, 4]  # answers of different lengths
    per_sample = torch.tensor([sum(t) / len(t) for t in per_token])
    token = losses.nll_batch_mean(per_sample, LABELS, "token")
    sample = losses.nll_batch_mean(per_sample, LABELS, "sample")
    every_token = [v for t in per_token for v in t]
    assert token.item() == pytest.approx(sum(every_token) / 6, rel=1e-6)
    assert sample.item() == pytest.approx((sum(per_token[0]) / 2 + sum(per_token[1]) / 4) / 2,
                                          rel=1e-6)
    assert token.item() != pytest.approx(sample.item(), rel=1e-3)
    # token weighting is HF's causal-LM loss: cross-entropy over every shifted answer label
    hf_style = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 3),
                                                 LABELS[:, 1:].reshape(-1))
    assert token.item() == pytest.approx(hf_style.item(), rel=1e-6)
    with pytest.raises(ValueError, match="unknown NLL weighting 'tokens'"):
        losses.nll_batch_mean(per_sample, LABELS, "tokens")

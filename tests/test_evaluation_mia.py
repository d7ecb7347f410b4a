"""Membership-inference attacks: AUC, privleak and attack scores against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unlearnscope.data.sample import Sample
from unlearnscope.data.tokenize import encode_sample
from unlearnscope.errors import NonFiniteError
from unlearnscope.evaluation.mia import (
    gradnorm_scores,
    mia_auc,
    min_k_plus_plus_scores,
    min_k_scores,
    privleak,
)
from unlearnscope.models.tiny import TinyConfig, build_tiny_model


def test_auc_counts_pairs_with_ties_as_half():
    forget = [1.0, 2.0, 3.0]
    holdout = [2.0, 4.0]
    # holdout 2 beats forget 1, ties forget 2, loses to forget 3 -> 1.5; holdout 4 beats all -> 3
    assert mia_auc(forget, holdout) == pytest.approx(4.5 / 6)
    assert mia_auc([0.0, 0.1], [5.0, 6.0]) == 1.0  # forget fully recognisable (lower loss)
    assert mia_auc([1.0, 1.0], [1.0, 1.0]) == 0.5


def test_auc_matches_brute_force_pair_count():
    rng = np.random.default_rng(1)
    forget = rng.integers(0, 5, size=17).astype(float)
    holdout = rng.integers(0, 5, size=11).astype(float)
    pairs = [(h > f) + 0.5 * (h == f) for h in holdout for f in forget]
    assert mia_auc(forget, holdout) == pytest.approx(np.mean(pairs))


def test_auc_rejects_non_finite_scores():
    with pytest.raises(NonFiniteError):
        mia_auc([1.0, float("nan")], [2.0])


def test_privleak_sign_convention():
    # a model that still knows the forget set (AUC 1) vs a retain model at chance: -100
    assert privleak(1.0, 0.5) == pytest.approx(-100.0)
    assert privleak(0.5, 0.5) == pytest.approx(0.0)
    # forget set looks less member-like than for the retain model: positive (over-unlearning)
    assert privleak(0.3, 0.5) == pytest.approx(40.0)
    # MUSE scale: a = 1 - AUC; (0.2 - 0.4) / 0.4 * 100
    assert privleak(0.8, 0.6) == pytest.approx(-50.0)


def test_min_k_takes_the_lowest_fraction_of_valid_tokens():
    logprobs = torch.tensor([[-1.0, -5.0, -2.0, -3.0, -0.5],
                             [-4.0, -1.0, -9.0, 0.0, 0.0]])
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    # row 0: int(5 * 0.4) = 2 lowest: -5, -3 -> 4; row 1: int(2 * 0.4) = 0 -> at least 1: -4
    assert min_k_scores(logprobs, mask, k=0.4).tolist() == pytest.approx([4.0, 4.0])
    assert min_k_scores(logprobs, mask, k=1.0).tolist() == pytest.approx([2.3, 2.5])


def test_min_k_plus_plus_standardises_by_the_vocab_distribution():
    logprobs = torch.tensor([[-1.0, -3.0, -2.0]])
    mean = torch.tensor([[-2.0, -2.0, -1.0]])
    var = torch.tensor([[4.0, 1.0, 0.25]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    # z = (0.5, -1, -2); k = 0.67 -> int(2.01) = 2 lowest: -2, -1 -> 1.5
    assert min_k_plus_plus_scores(logprobs, mean, var, mask, k=0.67).item() == pytest.approx(1.5)


def test_gradnorm_matches_one_sample_at_a_time():
    texts = ["Question: Who?\nAnswer: Ada.", "Question: Where was she born?\nAnswer: Porto."]
    config = TinyConfig(vocab_size=300, hidden_size=16, intermediate_size=32,
                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    model, tokenizer = build_tiny_model(texts * 4, config=config, seed=1)
    model.eval()
    samples = [Sample("a", "Who?", "Ada Brightwater."), Sample("b", "Where was she born?",
                                                                "Porto, in the north.")]
    encoded = [encode_sample(tokenizer, s) for s in samples]
    batched = gradnorm_scores(model, encoded, tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert all(p.grad is None for p in model.parameters())  # .grad left untouched
    for row, e in enumerate(encoded):
        model.zero_grad()
        ids = torch.tensor([e.input_ids])
        logits = model(input_ids=ids).logits[0, :-1]
        start = len(e.prompt_ids) - 1
        # content tokens only: answer targets without the closing EOS
        targets = ids[0, start + 1:-1]
        loss = torch.nn.functional.cross_entropy(logits[start:-1], targets)
        loss.backward()
        norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
        assert batched[row] == pytest.approx(torch.stack(norms).mean().item(), rel=1e-4)

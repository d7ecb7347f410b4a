"""Answer-token statistics: each function against a hand computation, and the difficulty
scorers against the TOFU statistics under the same EOS rule."""

from __future__ import annotations

import random
import zlib

import pytest
import torch

from tiny_models import tiny_llama
from unlearnscope.data.tokenize import IGNORE_INDEX, collate, encode_sample, pad_id
from unlearnscope.evaluation.tofu import answer_statistics
from unlearnscope.models.answer_stats import (
    answer_mask,
    exact_memorization,
    extraction_strength,
    mean_nll,
    min_k_mean,
    token_stats,
    zlib_ratio,
)
from unlearnscope.scoring import get_scorer
from unlearnscope.scoring.base import run_logit_scorers

EOS = 9
LABELS = torch.tensor([
    [IGNORE_INDEX, IGNORE_INDEX, 4, 5, EOS, IGNORE_INDEX],
    [IGNORE_INDEX, 4, 5, 6, IGNORE_INDEX, IGNORE_INDEX],  # truncated: no EOS
])


def test_answer_mask_drops_only_a_closing_eos():
    with_eos = [[False, True, True, True, False], [True, True, True, False, False]]
    assert answer_mask(LABELS, EOS, include_eos=True).tolist() == with_eos
    assert answer_mask(LABELS, EOS, include_eos=False).tolist() == [
        [False, True, True, False, False], [True, True, True, False, False]]
    # no EOS token: nothing to drop
    assert answer_mask(LABELS, None, include_eos=False).tolist() == with_eos
    # an EOS id inside the answer is content, only the closing one is dropped
    inner = torch.tensor([[IGNORE_INDEX, EOS, 5, EOS]])
    assert answer_mask(inner, EOS, include_eos=False).tolist() == [[True, True, False]]


def test_token_stats_against_full_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1, 6],
                           [IGNORE_INDEX, 2, 2, 6, IGNORE_INDEX]])
    stats = token_stats(logits, labels, eos_token_id=6, with_vocab_stats=True)
    log_p = torch.log_softmax(logits[:, :-1].double(), -1)
    p = log_p.exp()
    for b, t in [(0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]:
        target = labels[b, t + 1]
        assert stats.logprobs[b, t].item() == pytest.approx(log_p[b, t, target].item(), abs=1e-5)
        mean = (p[b, t] * log_p[b, t]).sum()
        var = (p[b, t] * log_p[b, t] ** 2).sum() - mean**2
        assert stats.vocab_mean[b, t].item() == pytest.approx(mean.item(), abs=1e-5)
        assert stats.vocab_var[b, t].item() == pytest.approx(var.item(), abs=1e-5)
        assert stats.argmax_correct[b, t].item() == (logits[b, t].argmax() == target).item()
    assert stats.logprobs[1, 3].item() == 0.0  # padding carries nothing
    assert stats.mask(include_eos=False).tolist() == [[False, True, True, False],
                                                      [True, True, False, False]]
    with_eos = -(log_p[0, 1, 3] + log_p[0, 2, 1] + log_p[0, 3, 6]) / 3
    without_eos = -(log_p[0, 1, 3] + log_p[0, 2, 1]) / 2
    for include_eos, expected in [(True, with_eos), (False, without_eos)]:
        got = mean_nll(stats.logprobs, stats.mask(include_eos=include_eos))
        assert got[0].item() == pytest.approx(expected.item(), abs=1e-5)


def test_exact_memorization_and_extraction_strength_hand_values():
    correct = torch.tensor([
        [True, False, True, True, False],   # 4 tokens + 1 padding
        [True, True, True, False, False],   # 3 tokens + 2 padding (padding "wrong")
        [True, True, False, False, False],  # 3 tokens, last one wrong
        [False, True, True, True, True],    # answer at positions 1..3, first one wrong
        [True, True, True, True, True],     # no answer token
    ])
    mask = torch.tensor([
        [True, True, True, True, False],
        [True, True, True, False, False],
        [True, True, True, False, False],
        [False, True, True, True, False],
        [False, False, False, False, False],
    ])
    assert exact_memorization(correct, mask).tolist() == pytest.approx(
        [3 / 4, 1.0, 2 / 3, 1.0, 0.0])
    # longest correct suffix / length: 2/4, 3/3, 0/3, 3/3; an empty row scores 0
    assert extraction_strength(correct, mask).tolist() == pytest.approx(
        [0.5, 1.0, 0.0, 1.0, 0.0])


def test_extraction_strength_follows_its_definition():
    """1 - k/|y| with k found by trying every suffix start, on random contiguous answers."""
    rng = random.Random(0)
    rows, masks, expected = [], [], []
    for _ in range(200):
        width = 12
        start, length = rng.randrange(4), rng.randrange(1, 8)
        hits = [rng.random() < 0.7 for _ in range(length)]
        k = next(k for k in range(length + 1) if all(hits[k:]))
        expected.append(1 - k / length)
        row = [rng.random() < 0.5 for _ in range(width)]
        row[start:start + length] = hits
        rows.append(row)
        masks.append([start <= j < start + length for j in range(width)])
    got = extraction_strength(torch.tensor(rows), torch.tensor(masks))
    assert got.tolist() == pytest.approx(expected, abs=1e-7)


def test_min_k_mean_takes_the_floor_of_k_n_lowest_values():
    values = torch.tensor([[-1.0, -5.0, -2.0, -3.0, -0.5, 7.0],
                           [-4.0, -1.0, 9.0, 9.0, 9.0, 9.0],
                           [-2.0, -2.0, -2.0, -1.0, -1.0, -9.0],
                           [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    mask = torch.tensor([[True] * 5 + [False],
                         [True, True, False, False, False, False],
                         [True] * 5 + [False],
                         [False] * 6])
    # row 0: floor(5 * 0.4) = 2 lowest: -5, -3; row 1: floor(0.8) = 0 -> at least 1: -4;
    # row 2: ties at -2, two of them -> -2; the masked -9 is not a candidate; row 3 empty -> 0
    assert min_k_mean(values, mask, 0.4).tolist() == pytest.approx([-4.0, -4.0, -2.0, 0.0])
    # k = 1: the plain mean of the masked values
    assert min_k_mean(values, mask, 1.0).tolist() == pytest.approx([-2.3, -2.5, -1.6, 0.0])
    # floor(5 * 0.7) = 3: -2, -2, -2
    assert min_k_mean(values, mask, 0.7)[2].item() == pytest.approx(-2.0)


def test_min_k_mean_against_sorted_python_lists():
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(50, 13, generator=gen).round(decimals=1)  # many ties
    mask = torch.rand(50, 13, generator=gen) < 0.6
    for k in (0.2, 0.4, 0.75):
        got = min_k_mean(values, mask, k)
        for row in range(50):
            kept = sorted(v for v, m in zip(values[row].tolist(), mask[row].tolist(),
                                            strict=True) if m)
            n_low = max(1, int(len(kept) * k))
            expected = sum(kept[:n_low]) / n_low if kept else 0.0
            assert got[row].item() == pytest.approx(expected, abs=1e-6), (k, row)


def test_zlib_ratio_divides_by_the_compressed_size():
    texts = ["abc abc abc abc", "a very different and longer answer text"]
    expected = [2.0 / len(zlib.compress(texts[0].encode())),
                3.0 / len(zlib.compress(texts[1].encode()))]
    for dtype in (torch.float32, torch.float64):
        got = zlib_ratio(torch.tensor([2.0, 3.0], dtype=dtype), texts)
        assert got.dtype == dtype
        assert got.tolist() == pytest.approx(expected)


# ---------------------------------------------------------------- the scorers and TOFU agree


@pytest.fixture(scope="module")
def trained_lm(small_samples):
    """A tiny model trained until it predicts many answer tokens: exact memorization and
    extraction strength are neither all 0 nor all 1."""
    torch.manual_seed(0)
    model, tokenizer = tiny_llama(small_samples, seed=0)
    encoded = [encode_sample(tokenizer, s) for s in small_samples]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(40):
        chunk = [encoded[(4 * step + i) % len(encoded)] for i in range(4)]
        model(**collate(chunk, pad_id(tokenizer))).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model, tokenizer


def test_scorers_equal_the_tofu_statistics_under_the_same_eos_rule(trained_lm, small_samples):
    model, tokenizer = trained_lm
    encoded = [encode_sample(tokenizer, s) for s in small_samples]
    names = ("loss", "exact_memorization", "extraction_strength", "min_k", "zlib")
    scorers = [get_scorer(n) for n in names]
    scores = run_logit_scorers(scorers, model, tokenizer, small_samples, encoded, batch_size=1)
    with_eos = answer_statistics(model, tokenizer, small_samples, batch_size=1, include_eos=True)
    tofu = {"loss": with_eos.mean_nll, "exact_memorization": with_eos.exact_memorization,
            "extraction_strength": with_eos.extraction_strength,
            "min_k": -with_eos.attack_scores["min_k"], "zlib": with_eos.attack_scores["zlib"]}
    for name in names:
        assert scores[name].tolist() == pytest.approx(tofu[name].tolist(), rel=1e-6, abs=1e-7), name
    em = with_eos.exact_memorization
    assert 0 < em.min() < 1 and em.max() > em.min()  # the model is neither blank nor perfect

    # open-unlearning's rule (the TOFU default) leaves the closing EOS out of the per-token
    # numbers only: the loss is the same, exact memorization is the hits over one token fewer
    without_eos = answer_statistics(model, tokenizer, small_samples, batch_size=1)
    assert without_eos.mean_nll.tolist() == pytest.approx(with_eos.mean_nll.tolist())
    for row, sample in enumerate(encoded):
        n = len(sample.answer_ids)  # answer tokens, the EOS last
        eos_hit = (with_eos.exact_memorization[row] * n
                   - without_eos.exact_memorization[row] * (n - 1))
        assert min(abs(eos_hit), abs(eos_hit - 1)) < 1e-5  # the EOS token was a hit or not
    assert (without_eos.exact_memorization != with_eos.exact_memorization).any()

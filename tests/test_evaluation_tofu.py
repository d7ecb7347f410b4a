"""TOFU metrics: pure functions against hand computations, model-facing ones against slow loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from unlearnscope.data.sample import Sample
from unlearnscope.data.tokenize import encode_sample
from unlearnscope.evaluation.tofu import (
    Truncation,
    answer_losses,
    answer_statistics,
    closer_to_1_better,
    evaluate_tofu,
    forget_quality,
    harmonic_mean,
    normalized_probability,
    option_losses,
    true_better,
    truth_ratio,
)
from unlearnscope.models.generation import greedy_answers, left_pad, rouge_l_recall
from unlearnscope.models.tiny import TinyConfig, build_tiny_model

# ---------------------------------------------------------------- pure functions


def test_truth_ratio_averages_perturbed_losses_before_exp():
    correct = torch.tensor([1.0, 2.0])
    perturbed = torch.tensor([[2.0, 3.0, 4.0], [1.0, 0.5, 99.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    ratios = truth_ratio(correct, perturbed, mask)
    # sample 0: p_pert = exp(-(2+3+4)/3) = e^-3, p_para = e^-1 -> R = e^-2
    # sample 1: the masked third option is ignored: p_pert = exp(-0.75), p_para = e^-2
    assert ratios.tolist() == pytest.approx([math.exp(-2.0), math.exp(1.25)], rel=1e-6)
    # averaging probabilities instead of losses would give a different number
    prob_mean = (math.exp(-2) + math.exp(-3) + math.exp(-4)) / 3 / math.exp(-1)
    assert abs(ratios[0].item() - prob_mean) > 1e-2


def test_truth_ratio_aggregators():
    ratios = torch.tensor([0.5, 2.0, 1.0])
    # forget: mean(min(R, 1/R)) = (0.5 + 0.5 + 1) / 3
    assert closer_to_1_better(ratios) == pytest.approx(2.0 / 3.0)
    # retain: mean(max(0, 1 - R)) over [0.25, 1.5, 0.5] = (0.75 + 0 + 0.5) / 3
    assert true_better(torch.tensor([0.25, 1.5, 0.5])) == pytest.approx(1.25 / 3.0)


def test_forget_quality_is_the_ks_p_value():
    a = np.array([0.1, 0.2, 0.3])
    b = np.array([0.7, 0.8, 0.9])
    # fully separated samples of 3 and 3: exact two-sided p = 2 / C(6, 3) = 0.1
    assert forget_quality(a, b) == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    x, y = rng.lognormal(size=25), rng.lognormal(0.5, size=30)
    assert forget_quality(x, y) == pytest.approx(ks_2samp(x, y).pvalue)
    # open-unlearning's older code tested 1/R; KS is invariant under a monotone map
    assert forget_quality(1 / x, 1 / y) == pytest.approx(forget_quality(x, y))
    assert forget_quality(x, x) == pytest.approx(1.0)


def test_harmonic_mean():
    assert harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3.0 / 7.0)
    assert harmonic_mean([0.9, 0.0, 0.4]) == 0.0


def test_normalized_probability():
    correct = torch.tensor([math.log(2.0)])  # p = 1/2
    wrong = torch.tensor([[math.log(4.0), math.log(8.0), 0.0]])  # p = 1/4, 1/8, (masked)
    mask = torch.tensor([[True, True, False]])
    value = normalized_probability(correct, wrong, mask)
    assert value.item() == pytest.approx(0.5 / (0.5 + 0.25 + 0.125))


def test_rouge_l_recall_hand_pair():
    # LCS of "the cat sat on the mat" and "the cat was on a mat" is "the cat on mat": 4 of 6
    recall = rouge_l_recall(["the cat sat on the mat"], ["the cat was on a mat"])
    assert recall.tolist() == pytest.approx([4 / 6])
    # extra generated words do not lower recall; tokens are lower-cased and Porter-stemmed
    assert rouge_l_recall(["a b"], ["x a y b z"]).tolist() == pytest.approx([1.0])
    assert rouge_l_recall(["The cats"], ["the cat"]).tolist() == pytest.approx([1.0])


# ---------------------------------------------------------------- model-facing functions

QUESTIONS = [
    ("Where was Ada Brightwater born?", "Ada Brightwater was born in Porto, Portugal."),
    ("What genre does Ada write?", "She writes mystery novels."),
    ("Name a book by Ada.", "One of her books is The Silent Orchard."),
    ("What award did Ada win?", "Ada won the Silver Quill Prize in 1999."),
    ("What did her father do?", "Her father was a lighthouse keeper."),
]


def _samples() -> list[Sample]:
    samples = []
    for i, (q, a) in enumerate(QUESTIONS):
        samples.append(Sample(
            f"s{i}", q, a,
            {"paraphrased_answer": a.replace("was", "is").replace("won", "received"),
             "perturbed_answer": [a.replace("Ada", "Bo"), a + " Maybe.", "No idea at all."][: 2 + i % 2]},
        ))
    return samples


@pytest.fixture(scope="module")
def tiny():
    texts = [f"Question: {q}\nAnswer: {a}" for q, a in QUESTIONS] * 3
    config = TinyConfig(vocab_size=320, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model, tokenizer = build_tiny_model(texts, config=config, seed=3)
    model.eval()
    return model, tokenizer


def _single_loss(model, tokenizer, sample, answer=None, max_length=None) -> float:
    encoded = encode_sample(tokenizer, sample, answer=answer, max_length=max_length)
    ids = torch.tensor([encoded.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    targets = ids[0, 1:]
    start = len(encoded.prompt_ids) - 1
    logp = torch.log_softmax(logits.double(), -1)[start:].gather(1, targets[start:, None])
    return float(-logp.mean())


def test_answer_losses_match_a_per_sample_loop(tiny):
    model, tokenizer = tiny
    samples = _samples()
    batched = answer_losses(model, tokenizer, samples, batch_size=3)
    slow = [_single_loss(model, tokenizer, s) for s in samples]
    assert batched.tolist() == pytest.approx(slow, rel=1e-4)


def _length(tokenizer, sample, answer=None) -> int:
    return len(encode_sample(tokenizer, sample, answer=answer).input_ids)


def test_answer_losses_honour_the_max_length_and_collect_the_cut_samples(tiny):
    model, tokenizer = tiny
    samples = _samples()
    lengths = [_length(tokenizer, s) for s in samples]
    limit = sorted(lengths)[len(lengths) // 2]  # about half the samples are longer
    truncation = Truncation(limit)
    cut = answer_losses(model, tokenizer, samples, batch_size=3, truncation=truncation)
    longer = {s.id for s, n in zip(samples, lengths, strict=True) if n > limit}
    assert truncation.sample_ids == longer and 0 < len(longer) < len(samples)
    slow = [_single_loss(model, tokenizer, s, max_length=limit) for s in samples]
    assert cut.tolist() == pytest.approx(slow, rel=1e-4)
    whole = answer_losses(model, tokenizer, samples, batch_size=3)
    changed = {s.id for s, a, b in zip(samples, cut.tolist(), whole.tolist(), strict=True)
               if a != pytest.approx(b, rel=1e-4)}
    assert changed == longer  # the cut sequences, and only those, give other losses


def test_evaluate_tofu_counts_the_samples_cut_to_the_max_length(tiny):
    model, tokenizer = tiny
    samples = _samples()
    holdout = [Sample(f"h{i}", q, a) for i, (q, a) in enumerate(QUESTIONS[::-1])]
    longest = {s.id: max(_length(tokenizer, s, a) for a in
                         [s.answer, s.extra["paraphrased_answer"], *s.extra["perturbed_answer"]])
               for s in samples}
    longest |= {h.id: _length(tokenizer, h) for h in holdout}
    limit = sorted(longest.values())[len(longest) // 2]
    common = {"forget": samples, "holdout": holdout, "retain_perturbed": samples,
              "batch_size": 4, "max_new_tokens": 2, "gradnorm": False}
    result = evaluate_tofu(model, tokenizer, max_length=limit, **common)
    expected = sum(n > limit for n in longest.values())
    assert 0 < expected < len(longest) and result["n_truncated"] == expected
    assert evaluate_tofu(model, tokenizer, **common)["n_truncated"] == 0


def test_option_losses_batch_every_variant(tiny):
    model, tokenizer = tiny
    samples = _samples()
    correct, perturbed, mask = option_losses(model, tokenizer, samples,
                                             correct_key="paraphrased_answer", batch_size=4)
    for row, s in enumerate(samples):
        assert correct[row].item() == pytest.approx(
            _single_loss(model, tokenizer, s, s.extra["paraphrased_answer"]), rel=1e-4)
        options = s.extra["perturbed_answer"]
        assert mask[row].tolist() == [True] * len(options) + [False] * (3 - len(options))
        for j, option in enumerate(options):
            assert perturbed[row, j].item() == pytest.approx(
                _single_loss(model, tokenizer, s, option), rel=1e-4)


def test_answer_statistics_match_a_per_sample_loop(tiny):
    model, tokenizer = tiny
    samples = _samples()
    stats = answer_statistics(model, tokenizer, samples, batch_size=2)
    for row, s in enumerate(samples):
        encoded = encode_sample(tokenizer, s)
        ids = torch.tensor([encoded.input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        start = len(encoded.prompt_ids) - 1
        # content tokens: the answer without its closing EOS
        targets = ids[0, start + 1:-1]
        preds = logits[start:-1].argmax(-1)
        hits = (preds == targets).tolist()
        suffix = 0
        for hit in reversed(hits):
            if not hit:
                break
            suffix += 1
        assert stats.exact_memorization[row] == pytest.approx(sum(hits) / len(hits))
        assert stats.extraction_strength[row] == pytest.approx(suffix / len(hits))
        assert stats.mean_nll[row] == pytest.approx(_single_loss(model, tokenizer, s), rel=1e-4)


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_left_padded_generation_equals_unpadded(tiny):
    model, tokenizer = tiny
    samples = _samples()
    batched = greedy_answers(model, tokenizer, samples, batch_size=5, max_new_tokens=12)
    single = [greedy_answers(model, tokenizer, [s], batch_size=1, max_new_tokens=12)[0]
              for s in samples]
    assert batched == single
    assert any(batched)


def test_evaluate_tofu_reports_missing_retain_numbers(tiny):
    model, tokenizer = tiny
    samples = _samples()
    holdout = [Sample(f"h{i}", q, a) for i, (q, a) in enumerate(QUESTIONS[::-1])]
    result = evaluate_tofu(model, tokenizer, forget=samples, holdout=holdout,
                           retain_perturbed=samples, batch_size=4, max_new_tokens=4)
    metrics, missing = result["metrics"], result["missing"]
    assert metrics["forget_quality"] is None and "retain" in missing["forget_quality"]
    assert metrics["privleak"] is None and "retain" in missing["privleak"]
    assert result["utility_components"] == ["retain_Q_A_Prob", "retain_Q_A_ROUGE",
                                            "retain_Truth_Ratio"]
    assert metrics["model_utility"] == pytest.approx(
        harmonic_mean([metrics[c] for c in result["utility_components"]]))
    ratios = np.array(list(result["forget_truth_ratios"].values()))
    assert metrics["forget_truth_ratio"] == pytest.approx(np.minimum(ratios, 1 / ratios).mean())
    for name in ("loss", "zlib", "min_k", "min_k_plus_plus", "gradnorm"):
        assert 0.0 <= metrics[f"mia_{name}"] <= 1.0

    with_reference = evaluate_tofu(
        model, tokenizer, forget=samples, holdout=holdout, batch_size=4, max_new_tokens=4,
        retain_truth_ratios={s.id: 1.0 + i for i, s in enumerate(samples)}, retain_mia_auc=0.5,
    )
    assert with_reference["metrics"]["forget_quality"] == pytest.approx(
        ks_2samp(ratios, np.arange(1.0, 6.0)).pvalue)
    auc = with_reference["metrics"]["mia_min_k"]
    assert with_reference["metrics"]["privleak"] == pytest.approx(((1 - auc) - 0.5) / 0.5 * 100)

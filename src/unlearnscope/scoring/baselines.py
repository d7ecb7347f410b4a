"""Baseline difficulty scorers (DESIGN 5.1), all over the answer (+ EOS) tokens. The formulas
are `models.answer_stats`'s, shared with the TOFU metrics and membership attacks (whose exact
memorization, extraction strength and Min-K% leave the closing EOS out).

Orientation: a sample the model has memorized well (low loss, high probability, exact
memorization, a small gradient) is taken as harder to unlearn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from unlearnscope.data.sample import Sample
from unlearnscope.data.tokenize import pad_id
from unlearnscope.models.answer_stats import (
    DEFAULT_K,
    TokenStats,
    exact_memorization,
    extraction_strength,
    min_k_mean,
    token_stats,
    zlib_ratio,
)
from unlearnscope.models.gradients import per_sample_gradient_norms
from unlearnscope.models.logprobs import mean_answer_nll
from unlearnscope.scoring.base import (
    LogitScorer,
    Scorer,
    is_number,
    option_error,
    register_scorer,
)

INCLUDE_EOS = True  # the scorers' EOS rule (`models.answer_stats`): the closing EOS counts


@register_scorer
class Loss(LogitScorer):
    """Mean NLL over answer tokens."""

    name = "loss"
    higher_is_harder = False

    def from_logits(self, logits, batch, samples):
        return mean_answer_nll(logits, batch["labels"])


@register_scorer
class Prob(LogitScorer):
    """exp(-loss): the geometric-mean answer-token probability."""

    name = "prob"
    higher_is_harder = True

    def from_logits(self, logits, batch, samples):
        return torch.exp(-mean_answer_nll(logits, batch["labels"]))


def _answer_tokens(logits: torch.Tensor, batch: dict[str, torch.Tensor]
                   ) -> tuple[TokenStats, torch.Tensor]:
    """The batch's `TokenStats` and the scorers' answer mask `[batch, pos-1]` (EOS included)."""
    stats = token_stats(logits, batch["labels"])
    return stats, stats.mask(include_eos=INCLUDE_EOS)


@register_scorer
class ExactMemorization(LogitScorer):
    """Fraction of answer tokens whose teacher-forced argmax equals the label."""

    name = "exact_memorization"
    higher_is_harder = True

    def from_logits(self, logits, batch, samples):
        stats, mask = _answer_tokens(logits, batch)
        return exact_memorization(stats.argmax_correct, mask)


@register_scorer
class ExtractionStrength(LogitScorer):
    """1 - k/|y|, k the smallest suffix start from which every argmax matches the label."""

    name = "extraction_strength"
    higher_is_harder = True

    def from_logits(self, logits, batch, samples):
        stats, mask = _answer_tokens(logits, batch)
        return extraction_strength(stats.argmax_correct, mask)


@register_scorer
class MinK(LogitScorer):
    """Mean of the lowest `k` fraction (default 40%) of answer-token log-probs (at least one)."""

    name = "min_k"
    higher_is_harder = True

    def __init__(self, k: float = DEFAULT_K) -> None:
        if not (is_number(k) and 0 < k <= 1):
            raise option_error(self.name, "k", f"must be a fraction in (0, 1], got {k!r}")
        super().__init__(k=k)
        self.k = k

    def from_logits(self, logits, batch, samples):
        stats, mask = _answer_tokens(logits, batch)
        return min_k_mean(stats.logprobs, mask, self.k)


@register_scorer
class Zlib(LogitScorer):
    """loss / len(zlib(answer bytes)): loss relative to the answer's compressed size."""

    name = "zlib"
    higher_is_harder = False

    def from_logits(self, logits, batch, samples):
        return zlib_ratio(mean_answer_nll(logits, batch["labels"]), [s.answer for s in samples])


@register_scorer
class GradNorm(Scorer):
    """L2 norm of the gradient of the sample's loss w.r.t. all trainable weights, from
    `models.gradients` (per-sample gradients of a batch in one vmapped backward pass)."""

    name = "grad_norm"
    higher_is_harder = False

    def score(self, model, tokenizer, samples: Sequence[Sample], encoded, *, batch_size):
        return per_sample_gradient_norms(model, encoded, pad_id(tokenizer), batch_size=batch_size,
                                         desc=None)


BASELINES = ("loss", "prob", "exact_memorization", "extraction_strength", "min_k", "zlib",
             "grad_norm")

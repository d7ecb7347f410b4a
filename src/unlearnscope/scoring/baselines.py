"""Baseline difficulty scorers (DESIGN 5.1), all over the answer (+ EOS) tokens.

Orientation: a sample the model has memorized well (low loss, high probability, exact
memorization, a small gradient) is taken as harder to unlearn.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch

from unlearnscope.data.sample import Sample
from unlearnscope.data.tokenize import pad_id
from unlearnscope.models.gradients import per_sample_gradient_norms
from unlearnscope.models.logprobs import mean_answer_nll, shift_labels, token_logprobs
from unlearnscope.scoring.base import LogitScorer, Scorer, register_scorer


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


def _argmax_hits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[batch, pos-1]` bool: teacher-forced argmax equals the label; and the answer mask."""
    target, mask = shift_labels(labels)
    hits = (logits[:, :-1].argmax(dim=-1) == target) & mask
    return hits, mask


@register_scorer
class ExactMemorization(LogitScorer):
    """Fraction of answer tokens whose teacher-forced argmax equals the label."""

    name = "exact_memorization"
    higher_is_harder = True

    def from_logits(self, logits, batch, samples):
        hits, mask = _argmax_hits(logits, batch["labels"])
        return hits.sum(dim=1).float() / mask.sum(dim=1).clamp(min=1)


@register_scorer
class ExtractionStrength(LogitScorer):
    """1 - k/|y|, k the smallest suffix start from which every argmax matches the label."""

    name = "extraction_strength"
    higher_is_harder = True

    def from_logits(self, logits, batch, samples):
        hits, mask = _argmax_hits(logits, batch["labels"])
        length = mask.sum(dim=1)
        # A miss at answer position j forces k >= j + 1, so k = (last miss index) + 1, or 0.
        miss = mask & ~hits
        answer_pos = mask.long().cumsum(dim=1) - 1  # 0-based position inside the answer
        last_miss = torch.where(miss, answer_pos, torch.full_like(answer_pos, -1)).amax(dim=1)
        return 1.0 - (last_miss + 1).float() / length.clamp(min=1)


@register_scorer
class MinK(LogitScorer):
    """Mean of the lowest `k` fraction (default 40%) of answer-token log-probs (at least one)."""

    name = "min_k"
    higher_is_harder = True

    def __init__(self, k: float = 0.4) -> None:
        super().__init__(k=k)
        self.k = k

    def from_logits(self, logits, batch, samples):
        logp, mask = token_logprobs(logits, batch["labels"])
        n_low = (mask.sum(dim=1).float() * self.k).long().clamp(min=1)
        ordered = logp.masked_fill(~mask, float("inf")).sort(dim=1).values
        keep = torch.arange(ordered.shape[1], device=logp.device)[None, :] < n_low[:, None]
        return ordered.masked_fill(~keep, 0.0).sum(dim=1) / n_low


@register_scorer
class Zlib(LogitScorer):
    """loss / len(zlib(answer bytes)): loss relative to the answer's compressed size."""

    name = "zlib"
    higher_is_harder = False

    def from_logits(self, logits, batch, samples):
        sizes = torch.tensor([len(zlib.compress(s.answer.encode("utf-8"))) for s in samples],
                             dtype=torch.float32, device=logits.device)
        return mean_answer_nll(logits, batch["labels"]) / sizes


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

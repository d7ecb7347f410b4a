"""Per-sample metrics that attribution differentiates.

Each metric maps logits `[batch, pos, vocab]`, labels `[batch, pos]` (HF convention, -100
outside the answer) and the clean run's logits to one value per sample `[batch]` float32,
computed on the sample's own answer positions only (padding never enters).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from unlearnscope.errors import UnknownNameError
from unlearnscope.models.logprobs import shift_labels, token_logprobs

Metric = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def answer_logprob(logits: torch.Tensor, labels: torch.Tensor,
                   clean_logits: torch.Tensor) -> torch.Tensor:
    """Mean log-probability of the answer tokens `[batch]`."""
    logp, mask = token_logprobs(logits, labels)
    return logp.sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def answer_prob(logits: torch.Tensor, labels: torch.Tensor,
                clean_logits: torch.Tensor) -> torch.Tensor:
    """Per-token geometric-mean probability of the answer, `exp(answer_logprob)` `[batch]`."""
    return answer_logprob(logits, labels, clean_logits).exp()


def kl_to_clean(logits: torch.Tensor, labels: torch.Tensor,
                clean_logits: torch.Tensor) -> torch.Tensor:
    """KL(clean || current) of the next-token distributions, mean over answer positions `[batch]`.

    Zero with zero gradient at the clean input, so it is informative for EAP-IG, not for EAP.
    """
    _, mask = shift_labels(labels)
    current = F.log_softmax(logits[:, :-1].float(), dim=-1)
    clean = F.log_softmax(clean_logits[:, :-1].float(), dim=-1)
    per_position = (clean.exp() * (clean - current)).sum(dim=-1)
    return (per_position * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def paper_prob_diff(logits: torch.Tensor, labels: torch.Tensor,
                    clean_logits: torch.Tensor) -> torch.Tensor:
    """The CUD authors' attribution metric (arXiv 2601.09624, their `metric_fn`) `[batch]`.

    With p and q the length-normalized answer probability (`answer_prob`) of the current
    (patched) run and of the clean run, their code returns
    `torch.nn.functional.kl_div(p, q, log_target=True)` pointwise, which reads both
    probabilities as log-probabilities: exp(q) (q - p). It is 0 at the clean run; its gradient
    is -exp(q) dp, so edges rank as for -p, each sample's scores scaled by exp(q).
    """
    p = answer_prob(logits, labels, clean_logits)
    q = answer_prob(clean_logits, labels, clean_logits).detach()
    return q.exp() * (q - p)


METRICS: dict[str, Metric] = {
    "answer_logprob": answer_logprob,
    "answer_prob": answer_prob,
    "kl": kl_to_clean,
    "paper_prob_diff": paper_prob_diff,
}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise UnknownNameError("attribution metric", name, list(METRICS))
    return METRICS[name]

"""Per-sample unlearning loss terms, computed from logits or hidden states (DESIGN 5.2).

Every loss function returns one value per sample, `[batch]`, so methods, tests and per-sample
unlearning share the same numbers; `nll_batch_mean` says how per-sample answer NLLs combine
into a batch's term. Prompt and padding positions never contribute: token terms
are masked to the answer positions (`labels != -100`) and averaged over that sample's answer
tokens only. open-unlearning averages UNDIAL and the KL regularizer over every position
(prompt and padding included); these do not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearnscope.models.logprobs import shift_labels


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` `[batch, pos]` over positions where `mask` `[batch, pos]` is True: `[batch]`."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def nll_batch_mean(nll: torch.Tensor, labels: torch.Tensor, weighting: str) -> torch.Tensor:
    """Batch mean (a scalar) of per-sample mean answer NLLs, nll `[batch]`, labels `[batch, pos]`.

    `token`: each sample weighted by its number of answer tokens, i.e. the batch's summed
    answer NLL over its answer tokens (HF's `model(**batch).loss`, as open-unlearning takes
    it); `sample`: every sample weighs the same, however long its answer.
    """
    if weighting == "sample":
        return nll.mean()
    if weighting != "token":
        raise ValueError(f"unknown NLL weighting '{weighting}' (token, sample)")
    _, mask = shift_labels(labels)
    tokens = mask.sum(dim=1).to(nll.dtype)
    return (nll * tokens).sum() / tokens.sum().clamp(min=1)


def npo_loss(logp: torch.Tensor, logp_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: `-(2/beta) * logsigmoid(-beta * (logp - logp_ref))`.

    logp, logp_ref `[batch]`: summed answer log-probs under the model and the reference.
    Equals `(2/beta) * log 2` where the model equals the reference.
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - logp_ref))


def simnpo_loss(mean_nll: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """SimNPO: `-(2/beta) * logsigmoid(beta * (NLL_sum/|y| - delta))`; mean_nll `[batch]`."""
    return -(2.0 / beta) * F.logsigmoid(beta * (mean_nll - delta))


def undial_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                beta: float) -> torch.Tensor:
    """UNDIAL: cross-entropy of the student to `softmax(teacher - beta * onehot(y))`.

    logits, teacher_logits `[batch, pos, vocab]`, labels `[batch, pos]` -> `[batch]`, the mean
    over the sample's answer positions.
    """
    target, mask = shift_labels(labels)
    adjusted = teacher_logits[:, :-1].float().scatter_add(
        -1, target.unsqueeze(-1), torch.full_like(target, -beta, dtype=torch.float32).unsqueeze(-1)
    )
    soft_target = adjusted.softmax(dim=-1)
    cross_entropy = -(soft_target * logits[:, :-1].float().log_softmax(dim=-1)).sum(dim=-1)
    return masked_token_mean(cross_entropy, mask)


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor,
                    labels: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) of the next-token distributions at answer positions.

    logits, ref_logits `[batch, pos, vocab]`, labels `[batch, pos]` -> `[batch]` (mean over
    the sample's answer positions; 0 where the model equals the reference).
    """
    _, mask = shift_labels(labels)
    log_p = logits[:, :-1].float().log_softmax(dim=-1)
    log_q = ref_logits[:, :-1].float().log_softmax(dim=-1)
    kl = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(dim=-1)
    return masked_token_mean(kl, mask)


def hidden_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMU distance: squared error averaged over the hidden dimension, then over the masked
    positions of each sample.

    hidden `[batch, pos, d_model]`, target broadcastable to it (`[d_model]` steering vector or
    `[batch, pos, d_model]` frozen activations), mask `[batch, pos]` -> `[batch]`.
    """
    squared = (hidden.float() - target.float()).pow(2).mean(dim=-1)
    return masked_token_mean(squared, mask)

"""Teacher-forced statistics of answer tokens and the per-sample numbers built on them
(DESIGN 5.1): mean NLL, exact memorization, extraction strength, Min-K% and the zlib ratio.

The difficulty scorers and the TOFU metrics / membership attacks compute these numbers with
the functions here; they differ only in the EOS rule. An encoded answer ends with the EOS
token (`data.tokenize.encode_sample`); `include_eos=True` counts it as an answer token (the
scorers: "the answer (plus EOS) carries the loss", DESIGN 3), `include_eos=False` leaves a
closing EOS out (open-unlearning's exact memorization, extraction strength and per-token
attacks).

Shapes: position t of a `[batch, pos-1]` tensor holds the prediction of token t+1.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearnscope.data.tokenize import IGNORE_INDEX

DEFAULT_K = 0.4  # Min-K% fraction: DESIGN 5.1 and open-unlearning's TOFU configs


def answer_mask(labels: torch.Tensor, eos_token_id: int | None, *,
                include_eos: bool) -> torch.Tensor:
    """The answer targets of labels `[batch, pos]` -> `[batch, pos-1]` bool.

    With `include_eos=False` the last answer target is dropped when it is `eos_token_id` (a
    truncated answer keeps all its tokens); `eos_token_id=None` means there is no EOS token.
    Shifts and masks only, no indexing by values, so it also runs under vmap.
    """
    target = labels[:, 1:]
    answer = target != IGNORE_INDEX
    if include_eos or eos_token_id is None:
        return answer
    # the answer is one contiguous span: its last target is followed by a non-answer (or the end)
    followed_by_answer = F.pad(answer[:, 1:], (0, 1), value=False)
    closing = answer & ~followed_by_answer
    return answer & ~(closing & (target == eos_token_id))


@dataclass
class TokenStats:
    """Teacher-forced statistics of the answer tokens of a batch, each `[batch, pos-1]`.

    `logprobs` (float32, 0 outside the answer) and `argmax_correct` (bool) cover every answer
    target, EOS included; pick the tokens a number is taken over with `mask(include_eos=...)`.
    `vocab_mean` / `vocab_var` (mean and variance of log p under the model's own next-token
    distribution, for min-k++) are present only when asked for, zero outside the answer.
    """

    logprobs: torch.Tensor
    argmax_correct: torch.Tensor
    answer_mask: torch.Tensor
    content_mask: torch.Tensor
    vocab_mean: torch.Tensor | None = None
    vocab_var: torch.Tensor | None = None

    def mask(self, *, include_eos: bool) -> torch.Tensor:
        """The answer targets with (`answer_mask`) or without (`content_mask`) a closing EOS."""
        return self.answer_mask if include_eos else self.content_mask


def token_stats(logits: torch.Tensor, labels: torch.Tensor, eos_token_id: int | None = None, *,
                with_vocab_stats: bool = False) -> TokenStats:
    """`TokenStats` from logits `[batch, pos, vocab]` and labels `[batch, pos]`.

    `eos_token_id` only matters for `mask(include_eos=False)`: without it (None) no target
    counts as a closing EOS. The log-softmax over the vocabulary is taken in float32 on answer
    positions only (never a full `[batch, pos, vocab]` float32 copy).
    """
    answer = answer_mask(labels, eos_token_id, include_eos=True)
    content = answer_mask(labels, eos_token_id, include_eos=False)
    target = labels[:, 1:].masked_fill(~answer, 0)
    shape = target.shape
    logprobs = torch.zeros(shape, dtype=torch.float32, device=logits.device)
    correct = torch.zeros(shape, dtype=torch.bool, device=logits.device)
    answer_logits = logits[:, :-1][answer].float()  # [n_answer_tokens, vocab]
    log_p = F.log_softmax(answer_logits, dim=-1)
    answer_targets = target[answer]
    logprobs[answer] = log_p.gather(1, answer_targets[:, None]).squeeze(1)
    correct[answer] = answer_logits.argmax(-1) == answer_targets
    stats = TokenStats(logprobs, correct, answer, content)
    if with_vocab_stats:
        p = log_p.exp()
        mean = (p * log_p).sum(-1)
        var = (p * log_p.square()).sum(-1) - mean.square()
        stats.vocab_mean = torch.zeros(shape, dtype=torch.float32, device=logits.device)
        stats.vocab_var = torch.zeros(shape, dtype=torch.float32, device=logits.device)
        stats.vocab_mean[answer] = mean
        stats.vocab_var[answer] = var
    return stats


def mean_nll(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean NLL over the masked tokens: logprobs, mask `[batch, pos]` -> `[batch]` (0 for a row
    with no masked token)."""
    return -(logprobs * mask).sum(1) / mask.sum(1).clamp(min=1)


def exact_memorization(correct: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of the masked tokens whose teacher-forced argmax is the label.

    correct, mask `[batch, pos]` bool -> `[batch]` float32 (0 for an empty row)."""
    return (correct & mask).sum(1).float() / mask.sum(1).clamp(min=1).float()


def extraction_strength(correct: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - k/|y|, k the smallest start of a suffix of the answer y whose argmax predictions all
    match, i.e. the longest correctly predicted suffix / |y|.

    correct, mask `[batch, pos]` bool -> `[batch]` float32. An answer whose last token is
    wrong scores 0 (open-unlearning's loop gives 1/|y| there, since its k stops at |y| - 1);
    an empty row scores 0.
    """
    miss = mask & ~correct
    answer_position = mask.long().cumsum(1) - 1  # 0-based index inside the answer
    # a miss at answer position j forces k >= j + 1, so k = (last miss position) + 1, or 0
    k = torch.where(miss, answer_position + 1, torch.zeros_like(answer_position)).amax(1)
    length = mask.sum(1)
    return (length - k).float() / length.clamp(min=1).float()


def min_k_mean(values: torch.Tensor, mask: torch.Tensor, k: float = DEFAULT_K) -> torch.Tensor:
    """Min-K% (Shi et al. 2024) of each row: the mean of its `max(1, floor(n * k))` smallest
    masked values, n the number of masked values.

    values `[batch, pos]` (token log-probs, or their standardised form for min-k++), mask
    `[batch, pos]` bool -> `[batch]` float32; 0 for an empty row. Ties do not matter: the sum
    of the smallest values is the same whichever of equal values is taken.
    """
    n = mask.sum(1)
    n_low = (n.float() * k).long().clamp(min=1)
    ordered = values.float().masked_fill(~mask, float("inf")).sort(dim=1).values
    lowest = torch.arange(values.shape[1], device=values.device)[None, :] < n_low[:, None]
    mean = ordered.masked_fill(~lowest, 0.0).sum(1) / n_low
    return torch.where(n > 0, mean, torch.zeros_like(mean))


def zlib_ratio(mean_nll: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
    """The zlib ratio (Carlini et al. 2021): mean answer NLL / zlib-compressed size in bytes of
    the answer text (UTF-8). mean_nll `[batch]` -> `[batch]`, in mean_nll's dtype and device."""
    sizes = torch.tensor([len(zlib.compress(t.encode("utf-8"))) for t in texts],
                         dtype=mean_nll.dtype, device=mean_nll.device)
    return mean_nll / sizes

"""Membership-inference attacks on answers, their AUC (forget vs holdout) and privleak.

Conventions follow open-unlearning so that numbers and logs are comparable:

- Every attack score is oriented "higher = looks less like a training member" (a loss).
- `mia_auc(forget, holdout)` is the probability that a random holdout sample scores higher
  than a random forget sample (ties count 1/2): 1 when the forget set is still recognisable,
  0.5 when forget and holdout are indistinguishable.
- `privleak` compares the unlearned model's AUC to a retain model's AUC on the MUSE scale,
  where an AUC is reported as 1 - x (see `privleak`).

Per-token attacks (min-k, min-k++, gradnorm) skip the closing end-of-sequence token, as
open-unlearning does; the loss and zlib attacks use the mean NLL over all answer tokens.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from unlearnscope.data.tokenize import IGNORE_INDEX, EncodedSample
from unlearnscope.errors import DataError
from unlearnscope.models.gradients import (
    mean_tensor_norm,
    per_sample_gradient_norms,
    trainable_parameters,
)
from unlearnscope.models.logprobs import token_logprobs
from unlearnscope.runs import check_finite

ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "gradnorm")
DEFAULT_K = 0.4  # open-unlearning's TOFU configs use k = 0.4 for min-k and min-k++


@dataclass
class TokenStats:
    """Teacher-forced statistics of the answer tokens of a batch.

    Shapes: `[batch, pos-1]` (position t predicts token t+1), float32 where real-valued.
    `answer_mask` marks every answer target (EOS included); `content_mask` the same without
    a closing EOS. `vocab_mean`/`vocab_var` (mean and variance of log p under the model's own
    next-token distribution, for min-k++) are present only when asked for, zero elsewhere.
    """

    logprobs: torch.Tensor
    answer_mask: torch.Tensor
    content_mask: torch.Tensor
    argmax_correct: torch.Tensor
    vocab_mean: torch.Tensor | None = None
    vocab_var: torch.Tensor | None = None

    @property
    def mean_nll(self) -> torch.Tensor:
        """Mean NLL over all answer tokens (EOS included): `[batch]`."""
        return -(self.logprobs * self.answer_mask).sum(1) / self.answer_mask.sum(1).clamp(min=1)


def content_mask(labels: torch.Tensor, eos_token_id: int | None) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """Answer target masks from labels `[batch, pos]` -> (answer `[batch, pos-1]`, content
    `[batch, pos-1]`): content drops the last answer target when it is the EOS token."""
    target = labels[:, 1:]
    answer = target != IGNORE_INDEX
    if eos_token_id is None:
        return answer, answer.clone()
    # the answer is one contiguous span: its last target is followed by a non-answer (or the
    # end). Shifts and masks only, no indexing by values, so it also runs under vmap.
    followed_by_answer = F.pad(answer[:, 1:], (0, 1), value=False)
    last = answer & ~followed_by_answer
    content = answer & ~(last & (target == eos_token_id))
    return answer, content


def token_stats(logits: torch.Tensor, labels: torch.Tensor, eos_token_id: int | None, *,
                with_vocab_stats: bool = False) -> TokenStats:
    """`TokenStats` from logits `[batch, pos, vocab]` and labels `[batch, pos]`.

    The log-softmax over the vocabulary is taken in float32 on answer positions only (never a
    full `[batch, pos, vocab]` float32 copy).
    """
    answer, content = content_mask(labels, eos_token_id)
    target = labels[:, 1:].masked_fill(~answer, 0)
    shape = target.shape
    logprobs = torch.zeros(shape, dtype=torch.float32, device=logits.device)
    correct = torch.zeros(shape, dtype=torch.bool, device=logits.device)
    answer_logits = logits[:, :-1][answer].float()  # [n_answer_tokens, vocab]
    log_p = F.log_softmax(answer_logits, dim=-1)
    answer_targets = target[answer]
    logprobs[answer] = log_p.gather(1, answer_targets[:, None]).squeeze(1)
    correct[answer] = answer_logits.argmax(-1) == answer_targets
    stats = TokenStats(logprobs, answer, content, correct)
    if with_vocab_stats:
        p = log_p.exp()
        mean = (p * log_p).sum(-1)
        var = (p * log_p.square()).sum(-1) - mean.square()
        stats.vocab_mean = torch.zeros(shape, dtype=torch.float32, device=logits.device)
        stats.vocab_var = torch.zeros(shape, dtype=torch.float32, device=logits.device)
        stats.vocab_mean[answer] = mean
        stats.vocab_var[answer] = var
    return stats


def _bottom_k_mean(values: torch.Tensor, mask: torch.Tensor, k: float) -> torch.Tensor:
    """Per row, the mean of the `max(1, int(n * k))` smallest of the `n` masked values.

    values, mask `[batch, pos]` -> `[batch]`; rows with no masked value give 0 (as the
    reference does for empty answers)."""
    n = mask.sum(1)
    n_k = (n.float() * k).long().clamp(min=1)
    # masked entries sort last; zero them so the running sums over valid entries stay finite
    ordered = values.float().masked_fill(~mask, float("inf")).sort(dim=1).values
    positions = torch.arange(values.shape[1], device=values.device)
    ordered = ordered.masked_fill(positions[None, :] >= n[:, None], 0.0)
    cumulative = ordered.cumsum(1)
    index = (n_k - 1).clamp(max=values.shape[1] - 1)
    picked = cumulative.gather(1, index[:, None]).squeeze(1) / n_k
    return torch.where(n > 0, picked, torch.zeros_like(picked))


def min_k_scores(logprobs: torch.Tensor, mask: torch.Tensor, k: float = DEFAULT_K) -> torch.Tensor:
    """Min-k% Prob (Shi et al. 2024): minus the mean of the k% lowest token log-probs.

    logprobs, mask `[batch, pos]` -> `[batch]`."""
    return -_bottom_k_mean(logprobs, mask, k)


def min_k_plus_plus_scores(logprobs: torch.Tensor, vocab_mean: torch.Tensor,
                           vocab_var: torch.Tensor, mask: torch.Tensor,
                           k: float = DEFAULT_K) -> torch.Tensor:
    """Min-k%++ (Zhang et al. 2025): each token's log-prob standardised by the mean and variance
    of log p under the next-token distribution, then minus the mean of the k% lowest.

    All inputs `[batch, pos]` -> `[batch]`. The variance is floored at 1e-6 as in the reference.
    """
    z = (logprobs - vocab_mean) / vocab_var.clamp(min=1e-6).sqrt()
    return -_bottom_k_mean(z, mask, k)


def zlib_scores(mean_nll: torch.Tensor | np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """zlib attack (Carlini et al. 2021): mean answer NLL divided by the zlib-compressed length
    (bytes) of the answer text. `[batch]` -> `[batch]`."""
    lengths = np.array([max(len(zlib.compress(t.encode("utf-8"))), 1) for t in texts], float)
    return np.asarray(mean_nll, dtype=np.float64) / lengths


def mia_auc(forget_scores: Sequence[float] | np.ndarray,
            holdout_scores: Sequence[float] | np.ndarray) -> float:
    """AUC of telling holdout from forget by score: P(holdout > forget) + P(tie) / 2.

    Computed as the Mann-Whitney U of the holdout scores from average ranks. Scores are
    oriented "higher = less member-like", so 1 means the forget set is fully recognisable.
    """
    forget = np.asarray(forget_scores, dtype=np.float64)
    holdout = np.asarray(holdout_scores, dtype=np.float64)
    if forget.size == 0 or holdout.size == 0:
        raise DataError("an AUC needs at least one forget and one holdout score")
    check_finite(torch.from_numpy(np.concatenate([forget, holdout])), "membership attack scores")
    ranks = rankdata(np.concatenate([holdout, forget]))
    u_holdout = ranks[: holdout.size].sum() - holdout.size * (holdout.size + 1) / 2
    return float(u_holdout / (holdout.size * forget.size))


def privleak(auc_unlearned: float, auc_retain: float) -> float:
    """PrivLeak (MUSE; open-unlearning's sign convention), in percent.

    MUSE reports an AUC as 1 - x of ours, so with a = 1 - auc:
    `(a_unlearned - a_retain) / a_retain * 100`. 0 is ideal; an un-unlearned model scores
    near -100 (the forget set is recognisable), over-unlearning gives positive values.
    """
    a_unlearned = 1.0 - auc_unlearned
    a_retain = 1.0 - auc_retain
    if a_retain == 0:
        raise DataError("privleak is undefined when the retain model's AUC is 1")
    return (a_unlearned - a_retain) / a_retain * 100.0


def gradnorm_scores(model, encoded: Sequence[EncodedSample], pad_token_id: int,
                    eos_token_id: int | None, *, p: float = 2.0, batch_size: int = 16,
                    desc: str | None = "gradnorm") -> np.ndarray:
    """Gradient-norm attack: per sample, the mean over trainable parameter tensors of the
    p-norm of the gradient of the sample's mean answer NLL (EOS excluded). `[n]` float64 in the
    order of `encoded`; parameter gradients (`.grad`) are left untouched."""
    def content_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logprobs, _ = token_logprobs(logits, labels)
        _, content = content_mask(labels, eos_token_id)
        return -(logprobs * content).sum(1) / content.sum(1).clamp(min=1)

    if not trainable_parameters(model):
        raise DataError("gradnorm needs parameters that require gradients")
    scores = per_sample_gradient_norms(model, encoded, pad_token_id, objective=content_nll,
                                       reduce=mean_tensor_norm(p), batch_size=batch_size,
                                       desc=desc)
    check_finite(scores, "gradnorm attack scores")
    return scores.numpy()


def attack_scores(stats: TokenStats, answer_texts: Sequence[str], *,
                  k: float = DEFAULT_K) -> dict[str, np.ndarray]:
    """The forward-pass attacks (loss, zlib, min-k, min-k++) of one batch: name -> `[batch]`."""
    mean_nll = stats.mean_nll.cpu()
    scores = {
        "loss": mean_nll.numpy().astype(np.float64),
        "zlib": zlib_scores(mean_nll.numpy(), answer_texts),
        "min_k": min_k_scores(stats.logprobs, stats.content_mask, k).cpu().numpy(),
    }
    if stats.vocab_mean is not None and stats.vocab_var is not None:
        scores["min_k_plus_plus"] = min_k_plus_plus_scores(
            stats.logprobs, stats.vocab_mean, stats.vocab_var, stats.content_mask, k
        ).cpu().numpy()
    return scores

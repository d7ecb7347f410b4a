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

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from unlearnscope.data.tokenize import EncodedSample
from unlearnscope.errors import DataError
from unlearnscope.models.answer_stats import (
    DEFAULT_K,
    TokenStats,
    answer_mask,
    mean_nll,
    min_k_mean,
    zlib_ratio,
)
from unlearnscope.models.gradients import (
    mean_tensor_norm,
    per_sample_gradient_norms,
    trainable_parameters,
)
from unlearnscope.models.logprobs import token_logprobs
from unlearnscope.runs import check_finite

ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "gradnorm")
INCLUDE_EOS = False  # the per-token attacks' EOS rule (`models.answer_stats`), open-unlearning's


def min_k_scores(logprobs: torch.Tensor, mask: torch.Tensor, k: float = DEFAULT_K) -> torch.Tensor:
    """Min-k% Prob (Shi et al. 2024): minus the mean of the k% lowest token log-probs.

    logprobs, mask `[batch, pos]` -> `[batch]`."""
    return -min_k_mean(logprobs, mask, k)


def min_k_plus_plus_scores(logprobs: torch.Tensor, vocab_mean: torch.Tensor,
                           vocab_var: torch.Tensor, mask: torch.Tensor,
                           k: float = DEFAULT_K) -> torch.Tensor:
    """Min-k%++ (Zhang et al. 2025): each token's log-prob standardised by the mean and variance
    of log p under the next-token distribution, then minus the mean of the k% lowest.

    All inputs `[batch, pos]` -> `[batch]`. The variance is floored at 1e-6 as in the reference.
    """
    z = (logprobs - vocab_mean) / vocab_var.clamp(min=1e-6).sqrt()
    return -min_k_mean(z, mask, k)


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
        return mean_nll(logprobs, answer_mask(labels, eos_token_id, include_eos=INCLUDE_EOS))

    if not trainable_parameters(model):
        raise DataError("gradnorm needs parameters that require gradients")
    scores = per_sample_gradient_norms(model, encoded, pad_token_id, objective=content_nll,
                                       reduce=mean_tensor_norm(p), batch_size=batch_size,
                                       desc=desc)
    check_finite(scores, "gradnorm attack scores")
    return scores.numpy()


def attack_scores(stats: TokenStats, answer_texts: Sequence[str], *, k: float = DEFAULT_K,
                  include_eos: bool = INCLUDE_EOS) -> dict[str, np.ndarray]:
    """The forward-pass attacks (loss, zlib, min-k, min-k++) of one batch: name -> `[batch]`.

    loss and zlib take the mean NLL over all answer tokens; min-k and min-k++ follow
    `include_eos` (default: without the closing EOS)."""
    nll = mean_nll(stats.logprobs, stats.mask(include_eos=True)).cpu().double()
    tokens = stats.mask(include_eos=include_eos)
    scores = {
        "loss": nll.numpy(),
        "zlib": zlib_ratio(nll, answer_texts).numpy(),
        "min_k": min_k_scores(stats.logprobs, tokens, k).cpu().numpy(),
    }
    if stats.vocab_mean is not None and stats.vocab_var is not None:
        scores["min_k_plus_plus"] = min_k_plus_plus_scores(
            stats.logprobs, stats.vocab_mean, stats.vocab_var, tokens, k
        ).cpu().numpy()
    return scores

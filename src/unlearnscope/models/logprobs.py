"""Per-token answer log-probabilities from logits, the quantity most metrics are built on."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearnscope.data.tokenize import IGNORE_INDEX, iter_batches_by_length
from unlearnscope.models.inputs import model_device, move_batch
from unlearnscope.progress import progress_bar


def shift_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets for next-token prediction.

    labels `[batch, pos]` -> (targets `[batch, pos-1]` with -100 replaced by 0,
    mask `[batch, pos-1]` bool, True where the target is an answer token).
    """
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    return target.masked_fill(~mask, 0), mask


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each answer token under teacher forcing.

    logits `[batch, pos, vocab]`, labels `[batch, pos]` ->
    (logprobs `[batch, pos-1]` float32, 0 outside the answer; mask `[batch, pos-1]` bool).
    Computed in float32 via `cross_entropy`, which never materializes a full log-softmax copy.
    """
    target, mask = shift_labels(labels)
    batch, positions = target.shape
    # Rows of [batch*pos, vocab] keep the vocabulary contiguous; the [batch, vocab, pos] view
    # that cross_entropy's 3-d form wants is several times slower on CPUs.
    nll = F.cross_entropy(logits[:, :-1].reshape(batch * positions, -1).float(),
                          target.reshape(-1), reduction="none").view(batch, positions)
    return (-nll).masked_fill(~mask, 0.0), mask


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed answer log-probability per sample: `[batch]` float32."""
    logp, _ = token_logprobs(logits, labels)
    return logp.sum(dim=1)


def mean_answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over answer tokens per sample (`loss` in DESIGN 5.1): `[batch]` float32."""
    logp, mask = token_logprobs(logits, labels)
    return -logp.sum(dim=1) / mask.sum(dim=1).clamp(min=1)


@torch.no_grad()
def answer_nll(model, encoded, pad_token_id: int, *, batch_size: int = 16,
               desc: str | None = None) -> torch.Tensor:
    """Mean answer NLL of each encoded sample: `[n_samples]` float64 in the order of `encoded`,
    batched by length, eval mode; `desc` shows a progress bar over batches."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    out = torch.empty(len(encoded), dtype=torch.float64)
    batches = list(iter_batches_by_length(encoded, batch_size, pad_token_id))
    for indices, batch in progress_bar(batches, desc=desc, leave=False, disable=desc is None):
        batch = move_batch(batch, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out[indices] = mean_answer_nll(logits, batch["labels"]).double().cpu()
    model.train(was_training)
    return out

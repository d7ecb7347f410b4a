"""What goes into a model: samples encoded within its context, batches on its device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from unlearnscope.data.sample import Sample
from unlearnscope.data.tokenize import (
    EncodedDataset,
    encode_sample,
    encode_samples,
    sequence_limit,
)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's weights (its first parameter's)."""
    return next(model.parameters()).device


def move_batch(batch: Mapping[str, torch.Tensor], device: torch.device
               ) -> dict[str, torch.Tensor]:
    """Every tensor of `batch` (e.g. `input_ids`, `attention_mask`, `labels`, each
    `[batch, pos]`) on `device`, under the same keys."""
    return {key: value.to(device) for key, value in batch.items()}


def encode_for(model, tokenizer, samples: Sequence[Sample], max_length: int | None = None, *,
               answers: Sequence[str] | None = None) -> EncodedDataset:
    """`samples` encoded for `model`: at most `max_length` tokens, default the model's context
    size (`data.tokenize.sequence_limit`; a `max_length` over it is a `DataError`). Longer
    sequences lose answer tokens from the end, logged and counted in the result's
    `n_truncated`; `answers[i]` replaces `samples[i]`'s own answer."""
    limit = sequence_limit(tokenizer, model, max_length)
    return encode_samples(tokenizer, samples, max_length=limit, answers=answers)


def count_truncated(model, tokenizer, samples: Sequence[Sample], max_length: int | None = None
                    ) -> int:
    """How many of `samples` `encode_for` would cut to the length limit, without logging them
    (for a command's `config.json` when it encodes later in chunks, each chunk logging its own
    cuts)."""
    limit = sequence_limit(tokenizer, model, max_length)
    return sum(encode_sample(tokenizer, s, max_length=limit).truncated for s in samples)

"""Tokenization with answer masks, and right-padded batches.

Every model-facing batch in unlearnscope follows the Hugging Face convention:

- `input_ids`      `[batch, pos]` int64, right padded with the tokenizer's pad id
- `attention_mask` `[batch, pos]` int64, 1 on real tokens
- `labels`         `[batch, pos]` int64, the token id on answer (+ EOS) positions, -100 elsewhere

Prompt tokens never carry loss; the answer and the end-of-sequence token do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from unlearnscope.data.sample import Sample
from unlearnscope.errors import DataError

IGNORE_INDEX = -100
PLAIN_PROMPT = "Question: {question}\nAnswer:"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedSample:
    """Token ids of one sample: `prompt_ids + answer_ids` is the full sequence."""

    sample_id: str
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    truncated: bool = False

    @property
    def input_ids(self) -> list[int]:
        return [*self.prompt_ids, *self.answer_ids]

    @property
    def labels(self) -> list[int]:
        return [IGNORE_INDEX] * len(self.prompt_ids) + list(self.answer_ids)


@dataclass
class EncodedDataset:
    """Encoded samples plus a record of which ones were truncated."""

    samples: list[EncodedSample]
    truncated_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> EncodedSample:
        return self.samples[index]

    @property
    def n_truncated(self) -> int:
        """How many samples lost answer tokens to the length limit."""
        return len(self.truncated_ids)


def uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer, question: str) -> str:
    """The text before the answer: the chat template's user turn, else `Question: ...\\nAnswer:`."""
    if uses_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return PLAIN_PROMPT.format(question=question)


def answer_text(tokenizer, answer: str) -> str:
    """The answer as it follows the prompt (a leading space after `Answer:`)."""
    return answer if uses_chat_template(tokenizer) else " " + answer


def _bos_prefix(tokenizer) -> list[int]:
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if probe and probe[0] == bos else []


def model_max_length(tokenizer, model=None) -> int | None:
    """The context size: the model config's `max_position_embeddings`, else the tokenizer's."""
    if model is not None:
        n = getattr(model.config, "max_position_embeddings", None)
        if n:
            return int(n)
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if n and n < 1_000_000 else None


def sequence_limit(tokenizer, model=None, max_length: int | None = None, *,
                   option: str = "max_length") -> int | None:
    """The most tokens of an encoded sequence: `max_length`, else the context size
    (`model_max_length`). A `max_length` over the context size is a `DataError` naming `option`
    (the model has no trained position beyond it)."""
    limit = model_max_length(tokenizer, model)
    if max_length is None:
        return limit
    if limit is not None and max_length > limit:
        raise DataError(f"{option} {max_length} is over the model's limit of {limit} positions "
                        f"(max_position_embeddings); give at most {limit}")
    return max_length


def encode_sample(tokenizer, sample: Sample, *, answer: str | None = None,
                  question: str | None = None, max_length: int | None = None,
                  on_overflow: str = "truncate") -> EncodedSample:
    """Encode one sample; `answer`/`question` replace the sample's own (paraphrased or perturbed
    variants). Sequences over `max_length` lose answer tokens from the end (`on_overflow=
    "truncate"`, reported on the result) or raise (`"error"`)."""
    q = sample.question if question is None else question
    a = sample.answer if answer is None else answer
    if not a.strip():
        raise DataError("empty answer", source=f"sample {sample.id}", field="answer")
    if not q.strip():
        raise DataError("empty question", source=f"sample {sample.id}", field="question")
    prefix = [] if uses_chat_template(tokenizer) else _bos_prefix(tokenizer)
    prompt = prefix + tokenizer(prompt_text(tokenizer, q), add_special_tokens=False)["input_ids"]
    ans = tokenizer(answer_text(tokenizer, a), add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ans = [*ans, tokenizer.eos_token_id]
    truncated = False
    if max_length is not None and len(prompt) + len(ans) > max_length:
        if on_overflow == "error" or len(prompt) >= max_length:
            raise DataError(
                f"sequence of {len(prompt) + len(ans)} tokens (prompt {len(prompt)}) exceeds the "
                f"model's context of {max_length} tokens",
                source=f"sample {sample.id}", field="question" if len(prompt) >= max_length
                else "answer",
            )
        ans = ans[: max_length - len(prompt)]
        truncated = True
    return EncodedSample(sample.id, tuple(prompt), tuple(ans), truncated)


def encode_samples(tokenizer, samples: Sequence[Sample], *, max_length: int | None = None,
                   on_overflow: str = "truncate",
                   answers: Sequence[str] | None = None) -> EncodedDataset:
    """Encode a list of samples (`answers[i]`, when given, in place of `samples[i]`'s own);
    truncations are logged with the sample ids, never silent."""
    if answers is not None and len(answers) != len(samples):
        raise DataError(f"{len(answers)} answers for {len(samples)} samples", field="answer")
    encoded = [encode_sample(tokenizer, s, answer=None if answers is None else answers[i],
                             max_length=max_length, on_overflow=on_overflow)
               for i, s in enumerate(samples)]
    truncated = [e.sample_id for e in encoded if e.truncated]
    if truncated:
        log.warning("truncated %d of %d samples to %s tokens: %s", len(truncated), len(encoded),
                    max_length, ", ".join(truncated[:10]) + (" ..." if len(truncated) > 10 else ""))
    return EncodedDataset(encoded, truncated)


def collate(encoded: Sequence[EncodedSample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded samples into a batch (see the module docstring for the keys)."""
    width = max(len(e.prompt_ids) + len(e.answer_ids) for e in encoded)
    batch = len(encoded)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(encoded):
        ids = e.input_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.tensor(e.labels)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pad_id(tokenizer) -> int:
    """The id used for padding: the pad token, else EOS (padding is masked everywhere)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    return 0


def iter_batches(encoded: Sequence[EncodedSample], batch_size: int, pad_token_id: int):
    """Yield `(indices, batch)` for consecutive slices of `encoded`."""
    for start in range(0, len(encoded), batch_size):
        chunk = list(range(start, min(start + batch_size, len(encoded))))
        yield chunk, collate([encoded[i] for i in chunk], pad_token_id)


def iter_batches_by_length(encoded: Sequence[EncodedSample], batch_size: int,
                           pad_token_id: int):
    """Yield `(indices, batch)` over `encoded` sorted by length, so batches carry little
    padding; `indices` point into `encoded`, so results can be put back in order."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        yield chunk, collate([encoded[i] for i in chunk], pad_token_id)

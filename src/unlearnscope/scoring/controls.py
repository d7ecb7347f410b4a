"""Trivial controls: scorers that cost nothing and that every difficulty score must beat.

They read only the tokenized sample (no forward pass), so a real scorer whose validation
number does not clear theirs has found nothing beyond surface form. Each control's orientation
is fixed here, before any outcome is seen, and never fitted on the data being validated:

- `answer_length`: answer tokens including EOS (the tokens that carry the unlearning loss).
  Longer = easier (`higher_is_harder = False`): GradAscent, GradDiff and NPO sum the forget
  loss over answer tokens, so a longer answer receives a larger update per step.
- `question_length`: prompt tokens (the question inside the fixed template, which adds the
  same count to every sample). Longer = easier, as the other length controls.
- `sequence_length`: prompt + answer tokens. Longer = easier.
- `answer_rarity`: mean unigram surprisal of the answer tokens (EOS excluded), -mean log f(t),
  f the add-one smoothed frequency of token t among the answer tokens of a corpus (by design
  the forget + retain samples, given as the `corpus` option). Rarer = easier
  (`higher_is_harder = False`), the orientation of the `loss` baseline: rare tokens are
  predicted with a higher loss, and a high loss is taken as easy.
- `author_position`: 0-based position of the question within its author (TOFU lists 20
  questions per author in order, the first asking for the author's full name). Later = harder
  (`higher_is_harder = True`), a convention without a mechanism behind it: a negative
  correlation reads as the reverse.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from unlearnscope.data.registry import load_samples
from unlearnscope.data.sample import Sample
from unlearnscope.data.tofu import QUESTIONS_PER_AUTHOR, SPLITS
from unlearnscope.data.tokenize import EncodedSample, encode_samples
from unlearnscope.errors import DataError
from unlearnscope.scoring.base import Scorer, register_scorer

CONTROLS = ("answer_length", "question_length", "sequence_length", "answer_rarity",
            "author_position")

_TOFU_ID = re.compile(rf"(?:{'|'.join(re.escape(s) for s in SPLITS)})-(\d+)")
_SYNTHETIC_ID = re.compile(r"a\d+-q(\d+)")


class Control(Scorer):
    """A scorer computed from the tokenized samples alone."""

    is_control: ClassVar[bool] = True


@register_scorer
class AnswerLength(Control):
    """Answer tokens including EOS."""

    name = "answer_length"
    higher_is_harder = False

    def score(self, model, tokenizer, samples, encoded, *, batch_size):
        return torch.tensor([len(e.answer_ids) for e in encoded], dtype=torch.float64)


@register_scorer
class QuestionLength(Control):
    """Prompt tokens (question plus the fixed template)."""

    name = "question_length"
    higher_is_harder = False

    def score(self, model, tokenizer, samples, encoded, *, batch_size):
        return torch.tensor([len(e.prompt_ids) for e in encoded], dtype=torch.float64)


@register_scorer
class SequenceLength(Control):
    """Prompt + answer tokens."""

    name = "sequence_length"
    higher_is_harder = False

    def score(self, model, tokenizer, samples, encoded, *, batch_size):
        return torch.tensor([len(e.input_ids) for e in encoded], dtype=torch.float64)


def _text_tokens(encoded: EncodedSample, eos_id: int | None) -> list[int]:
    """The answer's tokens without the appended EOS."""
    return [t for t in encoded.answer_ids if t != eos_id]


def _digest(samples: Sequence[Sample]) -> str:
    text = "\n".join(f"{s.id}\t{s.answer}" for s in samples)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


@register_scorer
class AnswerRarity(Control):
    """Mean unigram surprisal `-mean_t log f(t)` (nats) of the answer tokens, EOS excluded.

    `f(t) = (c_t + 1) / (N + V)`: `c_t` the count of token t among the corpus's answer
    tokens (EOS excluded), `N` their total, `V = len(tokenizer)`. Options: `corpus`, one or
    more dataset specs (read with `data_dir`), or a list of samples from the API (recorded in
    the config by count and digest); samples repeated across specs (same id) count once.
    There is no default: the runner hands a scorer one chunk of samples at a time, so "the
    scored samples" would depend on the chunk size and the process count.
    """

    name = "answer_rarity"
    higher_is_harder = False

    def __init__(self, corpus: str | Sequence[str] | Sequence[Sample] | None = None, *,
                 data_dir: str | None = None) -> None:
        if corpus is None or len(corpus) == 0:
            raise DataError("answer_rarity needs a corpus to count token frequencies in: the "
                            "forget and retain sets, e.g. answer_rarity.corpus="
                            "'[\"tofu:forget10\", \"tofu:retain90\"]'", field="corpus")
        items = [corpus] if isinstance(corpus, str) else list(corpus)
        if all(isinstance(item, Sample) for item in items):
            samples = items
            described = {"corpus": f"{len(items)} samples", "corpus_digest": _digest(items)}
        elif all(isinstance(item, str) for item in items):
            samples = [s for spec in items for s in load_samples(spec, data_dir=data_dir)]
            described = {"corpus": items}
        else:
            raise DataError("expected dataset specs or samples", field="corpus")
        super().__init__(**described, data_dir=data_dir)
        self.corpus = list({s.id: s for s in samples}.values())
        self._surprisal: dict[int, np.ndarray] = {}

    def surprisal(self, tokenizer) -> np.ndarray:
        """`[len(tokenizer)]` float64: -log f(t) of every token id, counted once per
        tokenizer."""
        key = id(tokenizer)
        if key not in self._surprisal:
            encoded = encode_samples(tokenizer, self.corpus).samples
            tokens = [t for e in encoded for t in _text_tokens(e, tokenizer.eos_token_id)]
            vocab = len(tokenizer)
            counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab)
            self._surprisal[key] = -np.log((counts + 1.0) / (len(tokens) + vocab))
        return self._surprisal[key]

    def score(self, model, tokenizer, samples, encoded, *, batch_size):
        table = self.surprisal(tokenizer)
        return torch.tensor([table[_text_tokens(e, tokenizer.eos_token_id)].mean()
                             for e in encoded], dtype=torch.float64)


def author_position(sample: Sample) -> int:
    """0-based position of `sample`'s question within its author.

    From, in order: an explicit `question_index` field; a TOFU id `<split>-<row>` of the
    author family (samples with `author`; every such split starts at an author's first
    question, so the position is `row % 20`); a synthetic-authors id `a<author>-q<index>`.
    Anything else is a `DataError`: the position is not guessed from the order of the rows.
    """
    if "question_index" in sample.extra:
        return int(sample.extra["question_index"])
    if sample.get("author") is not None:
        tofu = _TOFU_ID.fullmatch(sample.id)
        if tofu:
            return int(tofu.group(1)) % QUESTIONS_PER_AUTHOR
        synthetic = _SYNTHETIC_ID.fullmatch(sample.id)
        if synthetic:
            return int(synthetic.group(1))
    raise DataError("no position within an author: expected a 'question_index' field, or a "
                    "TOFU or synthetic-authors sample with an 'author'",
                    source=f"sample {sample.id}", field="question_index")


@register_scorer
class AuthorPosition(Control):
    """0-based position of the question within its author (see `author_position`)."""

    name = "author_position"
    higher_is_harder = True

    def score(self, model, tokenizer, samples, encoded, *, batch_size):
        return torch.tensor([author_position(s) for s in samples], dtype=torch.float64)

"""The scorer interface and registry.

A scorer maps samples to one raw number each (`value`) and declares its orientation, so that
`difficulty` (higher = harder to unlearn) is derived the same way everywhere.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from unlearnscope.data.sample import Sample
from unlearnscope.data.tokenize import EncodedSample, iter_batches, pad_id
from unlearnscope.errors import DataError, UnknownNameError
from unlearnscope.models.inputs import model_device, move_batch

SCORERS: dict[str, type[Scorer]] = {}


def register_scorer(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make a scorer available by its `name`."""
    SCORERS[cls.name] = cls
    return cls


def scorer_class(table_name: str) -> type[Scorer] | None:
    """The registered class of a score-table name (`cud`, or a variant `cud:npo`, named
    `<scorer>:<detail>`); None for a name no scorer class produced (e.g. `predicted:npo`)."""
    return SCORERS.get(str(table_name).split(":")[0])


def get_scorer(name: str, **options: Any) -> Scorer:
    """The scorer `name` with `options`; an option the scorer does not take is a `DataError`
    naming it and the ones it takes."""
    if name not in SCORERS:
        raise UnknownNameError("scorer", name, list(SCORERS))
    cls = SCORERS[name]
    known = option_names(cls)
    unknown = [key for key in options if known is not None and key not in known]
    if unknown:
        raise option_error(name, unknown[0], f"not an option of this scorer (its options: "
                                             f"{', '.join(known) or 'none'})")
    return cls(**options)


def option_names(cls: type[Scorer]) -> list[str] | None:
    """The keyword options of a scorer class; None when it takes any (`**options`)."""
    if cls.__init__ is Scorer.__init__:
        return []
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def option_error(scorer: str, option: str, message: str) -> DataError:
    """The error of a scorer option that cannot be used, naming the scorer and the option."""
    return DataError(message, source=f"scorer '{scorer}'", field=option)


def is_number(value: Any) -> bool:
    """True for an int or a float (not a bool): what numeric scorer options must be."""
    return isinstance(value, int | float) and not isinstance(value, bool)


class Scorer(ABC):
    """One difficulty metric.

    `higher_is_harder`: True when a larger `value` means the sample is harder to unlearn.
    `value_is_ease`: True when `value` is non-negative and proportional to how easy the sample
    is to unlearn (the MRD forms), so difficulty-weighted sampling may weight by the value
    itself rather than by rank.
    `uses_anchors`: True when the scorer is fitted on anchor samples (CUD); its `config()` then
    names them (`anchor_fit_ids`), so validation can leave them out.
    `is_control`: True for the trivial controls (lengths, rarity, position) that every
    difficulty score must beat.
    `score` returns `[n_samples]` float64 values in the order of `samples`.
    """

    name: ClassVar[str]
    higher_is_harder: ClassVar[bool]
    value_is_ease: ClassVar[bool] = False
    uses_anchors: ClassVar[bool] = False
    is_control: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options = options

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "higher_is_harder": self.higher_is_harder, **self.options}

    def difficulty(self, values: float | torch.Tensor) -> float | torch.Tensor:
        """Raw values (a number or a tensor) -> difficulty: higher is harder."""
        return values if self.higher_is_harder else -values

    @abstractmethod
    def score(self, model, tokenizer, samples: Sequence[Sample],
              encoded: Sequence[EncodedSample], *, batch_size: int) -> torch.Tensor:
        """Raw values `[n_samples]` float64."""


class LogitScorer(Scorer):
    """A scorer computed from one teacher-forced forward pass; the runner shares that pass
    between all logit scorers of a run."""

    @abstractmethod
    def from_logits(self, logits: torch.Tensor, batch: dict[str, torch.Tensor],
                    samples: Sequence[Sample]) -> torch.Tensor:
        """logits `[batch, pos, vocab]` -> values `[batch]`."""

    def score(self, model, tokenizer, samples, encoded, *, batch_size):
        return run_logit_scorers([self], model, tokenizer, samples, encoded,
                                 batch_size=batch_size)[self.name]


@torch.no_grad()
def run_logit_scorers(scorers: Sequence[LogitScorer], model, tokenizer,
                      samples: Sequence[Sample], encoded: Sequence[EncodedSample], *,
                      batch_size: int,
                      on_batch: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """One forward pass per batch, shared by all `scorers`: name -> `[n_samples]` float64."""
    device = model_device(model)
    out = {s.name: torch.empty(len(encoded), dtype=torch.float64) for s in scorers}
    for indices, batch in iter_batches(encoded, batch_size, pad_id(tokenizer)):
        batch = move_batch(batch, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        chunk = [samples[i] for i in indices]
        for scorer in scorers:
            out[scorer.name][indices] = scorer.from_logits(logits, batch, chunk).double().cpu()
        if on_batch is not None:
            on_batch(len(indices))
    return out

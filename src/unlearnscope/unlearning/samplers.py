"""Which forget (and retain) samples each training step sees: uniform, difficulty-weighted,
or curricula.

A stream hands out indices into the real dataset (`0..n-1`), never positions in a subset,
so every sample is reachable. The order of epoch `e` (a stage, for curricula) is a pure
function of `(seed, e)` and the stream's settings, and the state is just `{"epoch",
"offset"}`: checkpoints restore it exactly.

- `uniform`: a fresh random permutation each epoch.
- `weighted`: each slot draws a sample with probability `(1 - t) * w + t / n`, `w` the
  normalized ease weights and `t` the fraction of training done (slot / (total slots - 1), the
  run's real slot count), so the distribution anneals linearly to uniform by the last slot (the
  MRD paper's weighted sampling). For a scorer whose value is proportional to ease (`Scorer.value_is_ease`: `mrd`,
  `mrd_grad`, `mrd_hutchinson`; high MRD = easy) `w` is proportional to the value; for any other
  scorer `w` is proportional to the rank of ease (1 for the hardest sample, n for the easiest,
  ties averaged), a positive transform that works whatever the scorer's scale or sign.
- `easy-to-hard` / `hard-to-easy`: samples sorted by difficulty are split into `chunks`
  chunks, and the run's sample slots (steps x global batch) into `chunks` equal stages; stage
  `s` draws from the first `s + 1` chunks, its new samples first (`CurriculumStream`). The
  full pool is reached before the run ends and, when the run has at least `n` slots, every
  sample is drawn.

Every schedule hands out exactly the slots the trainer asks for, so all schedules of a run
see the same number of slots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata

from unlearnscope.errors import DataError, UnknownNameError
from unlearnscope.scoring.base import SCORERS

SCHEDULES = ("uniform", "weighted", "easy-to-hard", "hard-to-easy")


class EpochStream:
    """Cycles through per-epoch index orders; subclasses define `epoch_order`."""

    def __init__(self, n: int, seed: int) -> None:
        if n <= 0:
            raise DataError("cannot sample from an empty dataset")
        self.n = n
        self.seed = seed
        self.epoch = 0
        self.offset = 0
        self._order: torch.Tensor | None = None

    def generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Indices `[slots]` (int64) drawn in epoch `epoch`."""
        raise NotImplementedError

    def draw(self, count: int) -> list[int]:
        """The next `count` dataset indices."""
        out: list[int] = []
        while len(out) < count:
            if self._order is None:
                self._order = self.epoch_order(self.epoch)
            take = self._order[self.offset: self.offset + count - len(out)]
            out.extend(take.tolist())
            self.offset += len(take)
            if self.offset >= len(self._order):
                self.epoch, self.offset, self._order = self.epoch + 1, 0, None
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset, self._order = int(state["epoch"]), int(state["offset"]), None


class UniformStream(EpochStream):
    """A new random permutation of all samples every epoch."""

    def epoch_order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=self.generator(epoch))


class WeightedStream(EpochStream):
    """Draws with replacement from weights annealed linearly to uniform over `total_slots`."""

    def __init__(self, weights: np.ndarray, seed: int, total_slots: int) -> None:
        super().__init__(len(weights), seed)
        weights = torch.tensor(np.asarray(weights, dtype=np.float64))
        if (weights < 0).any() or not torch.isfinite(weights).all() or weights.sum() <= 0:
            raise DataError("sampling weights must be finite, non-negative and not all zero")
        self.weights = weights / weights.sum()
        self.total_slots = max(int(total_slots), 1)

    def progress(self, slots: torch.Tensor) -> torch.Tensor:
        """Fraction `t` of training done at the given global slot numbers, in [0, 1]."""
        return (slots.double() / max(self.total_slots - 1, 1)).clamp(0.0, 1.0)

    def probabilities(self, slot: int) -> torch.Tensor:
        """Sampling distribution `[n]` at global slot `slot`."""
        t = self.progress(torch.tensor(slot))
        return (1 - t) * self.weights + t / self.n

    def epoch_order(self, epoch: int) -> torch.Tensor:
        # The mixture (1 - t) w + t u is drawn exactly by picking u with probability t.
        generator = self.generator(epoch)
        slots = torch.arange(epoch * self.n, (epoch + 1) * self.n)
        from_weights = torch.multinomial(self.weights, self.n, replacement=True,
                                         generator=generator)
        from_uniform = torch.randint(self.n, (self.n,), generator=generator)
        use_uniform = torch.rand(self.n, generator=generator, dtype=torch.float64) < self.progress(
            slots)
        return torch.where(use_uniform, from_uniform, from_weights)


class CurriculumStream(EpochStream):
    """Pools that grow chunk by chunk along `order` (dataset indices, first = first taught),
    paced by the run's `total_slots`.

    With T = `total_slots` and c = `chunks`, stage s (the stream's `epoch`) covers the slots
    `[floor(s T / c), floor((s + 1) T / c))` and draws from the pool `order[:ceil((s + 1) n /
    c)]`. A stage first draws, shuffled, the samples of its pool that no earlier stage drew
    (its new chunk, and any sample an earlier stage had no slot for), then fills its slots
    with shuffled passes over the pool. So the full pool is reached after a fraction (c - 1) / c
    of the slots, and when T >= n every sample is drawn at least once: the last stage has
    ceil(T / c) >= floor(n / c) slots, enough for its new chunk, and any stage that could not
    draw all of its pool drew only new samples. Draws past T continue with stages of n slots
    over the full pool, the undrawn first. A stage's order is a pure function of `(seed,
    stage)` and the settings (the undrawn samples are found by replaying earlier stages), so
    the state stays `{"epoch", "offset"}`.
    """

    def __init__(self, order: np.ndarray, seed: int, chunks: int, total_slots: int) -> None:
        super().__init__(len(order), seed)
        self.order = torch.tensor(np.asarray(order, dtype=np.int64))
        if sorted(self.order.tolist()) != list(range(self.n)):
            raise ValueError("a curriculum order must be a permutation of the dataset indices")
        self.chunks = max(1, min(int(chunks), self.n))
        self.total_slots = max(int(total_slots), 1)
        self._drawn_before = [torch.zeros(self.n, dtype=torch.bool)]

    def pool(self, stage: int) -> torch.Tensor:
        """The dataset indices `[pool size]` that stage `stage` draws from."""
        size = -(-self.n * min(stage + 1, self.chunks) // self.chunks)
        return self.order[:size]

    def stage_slots(self, stage: int) -> int:
        """How many slots stage `stage` has."""
        if stage >= self.chunks:
            return self.n
        total, chunks = self.total_slots, self.chunks
        return total * (stage + 1) // chunks - total * stage // chunks

    def epoch_order(self, epoch: int) -> torch.Tensor:
        while len(self._drawn_before) <= epoch:
            stage = len(self._drawn_before) - 1
            drawn = self._drawn_before[stage].clone()
            drawn[self._stage_order(stage, self._drawn_before[stage])] = True
            self._drawn_before.append(drawn)
        return self._stage_order(epoch, self._drawn_before[epoch])

    def _stage_order(self, stage: int, drawn: torch.Tensor) -> torch.Tensor:
        """Stage `stage`'s indices `[stage_slots(stage)]`, given the mask `[n]` of samples
        drawn by the earlier stages."""
        pool, generator, slots = self.pool(stage), self.generator(stage), self.stage_slots(stage)
        fresh = pool[~drawn[pool]]
        parts = [fresh[torch.randperm(len(fresh), generator=generator)]]
        filled = len(fresh)
        while filled < slots:
            parts.append(pool[torch.randperm(len(pool), generator=generator)])
            filled += len(pool)
        return torch.cat(parts)[:slots]


def load_difficulty(source: str | Path | pd.DataFrame, sample_ids: list[str],
                    scorer: str | None = None) -> tuple[str, np.ndarray, np.ndarray]:
    """Read a score table (`sample_id, scorer, value, difficulty`; a parquet file or a
    DataFrame) for the given samples.

    Returns `(scorer, value [n], difficulty [n])` aligned with `sample_ids`. `scorer` may be
    left out when the table holds a single scorer.
    """
    if isinstance(source, pd.DataFrame):
        table, path = source, "the score table"
    else:
        path = Path(source)
        try:
            table = pd.read_parquet(path)
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read score table: {error}", source=str(path)) from None
    for column in ("sample_id", "scorer", "value", "difficulty"):
        if column not in table.columns:
            raise DataError("missing column", source=str(path), field=column)
    scorers = sorted(table["scorer"].astype(str).unique())
    if scorer is None:
        if len(scorers) != 1:
            raise DataError(f"the table holds scorers {', '.join(scorers)}: choose one with "
                            "--scorer", source=str(path), field="scorer")
        scorer = scorers[0]
    if scorer not in scorers:
        raise UnknownNameError(f"scorer in {path}", scorer, scorers)
    rows = table[table["scorer"].astype(str) == scorer]
    rows = rows.assign(sample_id=rows["sample_id"].astype(str))
    if rows["sample_id"].duplicated().any():
        duplicate = rows.loc[rows["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise DataError(f"sample '{duplicate}' appears twice for scorer {scorer}",
                        source=str(path), field="sample_id")
    rows = rows.set_index("sample_id")
    missing = [s for s in sample_ids if s not in rows.index]
    if missing:
        raise DataError(f"no {scorer} score for {len(missing)} forget samples, e.g. "
                        f"{', '.join(missing[:5])}", source=str(path), field="sample_id")
    rows = rows.loc[sample_ids]
    value = rows["value"].to_numpy(dtype=np.float64)
    difficulty = rows["difficulty"].to_numpy(dtype=np.float64)
    if not (np.isfinite(value).all() and np.isfinite(difficulty).all()):
        raise DataError(f"non-finite {scorer} score", source=str(path), field="value")
    return scorer, value, difficulty


def ease_weights(scorer: str, value: np.ndarray, difficulty: np.ndarray) -> np.ndarray:
    """Positive sampling weights `[n]`, higher for easier samples (see the module docstring).

    The value itself for a registered scorer whose class sets `value_is_ease` (the MRD forms);
    the rank of ease for every other scorer, including names the registry does not know.
    """
    kind = SCORERS.get(scorer)
    if kind is not None and kind.value_is_ease:
        if (value < 0).any() or value.sum() <= 0:
            raise DataError(f"{scorer} values must be non-negative and not all zero",
                            field="value")
        return value
    return rankdata(-difficulty, method="average")


def build_stream(schedule: str, n: int, *, seed: int, total_slots: int, scorer: str | None = None,
                 value: np.ndarray | None = None, difficulty: np.ndarray | None = None,
                 chunks: int = 1) -> EpochStream:
    """The forget-sample stream for a schedule (difficulty arrays aligned with the samples).

    `total_slots` is the number of indices the run will draw (steps x global batch): the
    weighted stream anneals over it and curricula pace their `chunks` stages by it.
    """
    if schedule not in SCHEDULES:
        raise UnknownNameError("schedule", schedule, list(SCHEDULES))
    if schedule == "uniform":
        return UniformStream(n, seed)
    if difficulty is None or value is None or scorer is None:
        raise DataError(f"schedule '{schedule}' needs difficulty scores (--difficulty)")
    if schedule == "weighted":
        return WeightedStream(ease_weights(scorer, value, difficulty), seed, total_slots)
    order = np.argsort(difficulty, kind="stable")
    if schedule == "hard-to-easy":
        order = np.argsort(-difficulty, kind="stable")
    return CurriculumStream(order, seed, chunks, total_slots)

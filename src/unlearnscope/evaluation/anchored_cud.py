"""CUD recomputed from a run's circuit store for anchors voted inside the run (no model forward).

What the cross-method and the configuration-choice validations share:

- `read_run_outcomes`: every method's outcome tables by seed, from `unlearn/<method>/seed<s>/
  outcomes.parquet` (one per seed) or the single-seed `unlearn/<method>/outcomes.parquet`
  (its seed: `settings.seed` of the folder's `summary.json` or `config.json`, else 0);
- `seed_mean`: one method's per-sample outcome averaged over chosen seeds;
- `run_halves`: the fit / held-out split of the run's `anchors/anchors.json` (its `k` too), or
  a seeded `split_fit` when the run has none;
- `vote_sets`: the easy / hard lists the `vote` heuristic gives from outcome tables restricted to
  the fit half, for an anchor method (`combined`, `mean` or a method name);
- `StoreCud`: CUD of stored samples against anchor lists, as the `cud` scorer computes it with a
  circuit store (`scoring.cud`: aggregates averaged per set, top-n selection with the store's
  graph layout, then the similarity); the samples' circuit vectors of one (top_n, vector)
  are selected once and reused for every anchor choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from unlearnscope.anchors.sets import AnchorSets, check_k, read_anchors, split_fit
from unlearnscope.anchors.vote import vote_anchors
from unlearnscope.circuits.store import CircuitStore
from unlearnscope.errors import DataError, UnknownNameError
from unlearnscope.evaluation.validation import MEAN_METHOD, seed_mean_outcomes
from unlearnscope.layout import (
    ANCHORS_DIR,
    ANCHORS_FILE,
    HEADER_FILE,
    UNLEARN_DIR,
    anchors_file,
    read_method_outcomes,
    store_folder,
)
from unlearnscope.scoring.cud import (
    SIMILARITIES,
    VECTORS,
    anchor_aggregate,
    circuit_vectors,
    cud,
)

ANCHOR_METHODS = ("combined", "mean")  # besides a single method's name (AnchorSets.sets_for)

SeedOutcomes = Mapping[str, Mapping[int, pd.DataFrame]]  # method -> seed -> outcome table


def read_run_outcomes(run_dir: str | Path) -> dict[str, dict[int, pd.DataFrame]]:
    """`{method: {seed: outcome table}}` of the run folder (`layout.read_method_outcomes`),
    refusing a method folder named `mean`, the name of the method-averaged difficulty."""
    found = read_method_outcomes(run_dir)
    if MEAN_METHOD in found:
        raise DataError(f"the method name '{MEAN_METHOD}' is reserved for the method-averaged "
                        "difficulty", source=str(Path(run_dir) / UNLEARN_DIR / MEAN_METHOD))
    return found


def seed_mean(tables: Mapping[int, pd.DataFrame], seeds: Sequence[int] | None = None
              ) -> pd.DataFrame:
    """One method's outcome averaged over `seeds` (default: all): columns `sample_id` (as
    strings), `efficacy` and, when every table has it, `delta_loss` (the vote's tie-breaker);
    one row per sample every chosen table has, in the first table's order."""
    chosen = sorted(tables) if seeds is None else list(seeds)
    if not chosen:
        raise DataError("no seed to average", field="seed")
    columns = ["efficacy"] + (["delta_loss"] if all("delta_loss" in tables[s].columns
                                                    for s in chosen) else [])
    mean = seed_mean_outcomes({s: tables[s].assign(sample_id=tables[s]["sample_id"].astype(str))
                               for s in chosen})
    return mean[["sample_id", *columns]]


@dataclass
class Halves:
    """The fit half (anchors are voted on it; configurations are chosen on it), the held-out
    half (validation only), the anchor set size `k` and where the split came from."""

    fit_ids: list[str]
    held_out_ids: list[str]
    k: int
    source: str


def run_halves(run_dir: str | Path, sample_ids: Sequence[str], *, k: int | None = None,
               fit_fraction: float = 0.5, seed: int = 0) -> Halves:
    """The split of the run's `anchors/anchors.json` (and its `k` unless `k` is given); without
    that file, `split_fit(sample_ids, fit_fraction, seed)` and `k` must be given."""
    path = anchors_file(run_dir)
    if path.is_file():
        anchors = read_anchors(path)
        return Halves(anchors.fit_ids, anchors.held_out_ids, anchors.k if k is None else k,
                      f"{ANCHORS_DIR}/{ANCHORS_FILE}")
    if k is None:
        raise DataError(f"no {ANCHORS_DIR}/{ANCHORS_FILE} in the run: give the anchor set size k "
                        "(and the fit fraction) to split the samples here", source=str(path),
                        field="k")
    fit, held_out = split_fit(list(sample_ids), fit_fraction, seed)
    return Halves(fit, held_out, k, f"split_fit(fraction={fit_fraction}, seed={seed})")


def vote_sets(tables: Mapping[str, pd.DataFrame], fit_ids: Sequence[str], k: int,
              anchor_method: str) -> dict[str, dict[str, list[str]]]:
    """The anchor lists (`AnchorSets.sets_for`) of the `vote` over `tables` (method -> outcome
    table) on `fit_ids` only: `combined` the overall vote, `mean` every method's own lists, a
    method name that method's lists. No row outside `fit_ids` is read."""
    check_k(k, len(fit_ids))
    result = vote_anchors(tables, k, sample_ids=list(fit_ids))
    sets = AnchorSets("vote", k, result.easy, result.hard, list(fit_ids), [],
                      per_method=result.per_method)
    return sets.sets_for(anchor_method)


def open_run_store(path: str | Path) -> CircuitStore:
    """The circuit store of a run folder (`<run>/circuits/`) or a store folder itself."""
    store_dir = store_folder(path)
    if not (store_dir / HEADER_FILE).is_file():
        raise DataError("no circuit store (run `unlearnscope circuits` first)",
                        source=str(store_dir))
    return CircuitStore.open(store_dir)


class StoreCud:
    """CUD of stored samples against anchor lists of stored samples.

    `edge_scores` `[n, E]` of `sample_ids` are read once; `values` gives what the `cud` scorer
    gives with this store (`scoring.cud.cud_from_aggregates`), reusing each sample's circuit
    vector `[E]` across anchor choices.
    """

    def __init__(self, store: CircuitStore, sample_ids: Sequence[str]) -> None:
        self.sample_ids = list(sample_ids)
        self.position = {sample_id: i for i, sample_id in enumerate(self.sample_ids)}
        self.layout = store.layout
        self.edge_scores = store.edge_scores(self.sample_ids)  # [n, E] float32
        self._vectors: tuple[tuple[float, str], torch.Tensor] | None = None

    def _rows(self, ids: Sequence[str]) -> list[int]:
        missing = [i for i in ids if i not in self.position]
        if missing:
            raise DataError(f"no stored circuit for sample(s) {', '.join(missing[:10])}",
                            field="sample_id")
        return [self.position[i] for i in ids]

    def vectors(self, top_n: float, vector: str) -> torch.Tensor:
        """Circuit vectors `[n, E]` of all samples; the last `(top_n, vector)` asked for is
        kept (one `[n, E]` copy: ask in `(top_n, vector)` order to compute each once)."""
        key = (float(top_n), vector)
        if self._vectors is None or self._vectors[0] != key:
            self._vectors = (key, circuit_vectors(self.edge_scores, top_n, vector=vector,
                                                  layout=self.layout))
        return self._vectors[1]

    def values(self, anchor_sets: Mapping[str, Mapping[str, Sequence[str]]],
               ids: Sequence[str], *, top_n: float, vector: str, similarity: str
               ) -> np.ndarray:
        """CUD `[len(ids)]` float64 of `ids` against the anchors of `anchor_sets` (`{set name:
        {"easy": ids, "hard": ids}}`; several sets are averaged as `anchor_aggregate` does)."""
        if similarity not in SIMILARITIES:
            raise UnknownNameError("similarity", similarity, list(SIMILARITIES))
        if vector not in VECTORS:
            raise UnknownNameError("circuit vector", vector, list(VECTORS))
        aggregates = [anchor_aggregate([self.edge_scores[self._rows(lists[side])]
                                        for lists in anchor_sets.values()])
                      for side in ("easy", "hard")]
        anchors = circuit_vectors(torch.stack(aggregates).float(), top_n, vector=vector,
                                  layout=self.layout)
        samples = self.vectors(top_n, vector)[self._rows(ids)]
        return cud(samples, anchors[0], anchors[1], similarity).numpy()

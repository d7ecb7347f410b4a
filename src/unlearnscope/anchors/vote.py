"""The `vote` anchors (DESIGN 5.7, what the CUD authors' code does).

Each of M unlearning runs ranks the forget samples by measured efficacy (rank 0 = most
forgotten). A sample is an easy candidate when it is in the top k of at least ceil(M/2) runs, a
hard candidate when it is in the bottom k of at least ceil(M/2) runs. A sample that is both goes
to the side its mean rank is on (neither when it sits exactly in the middle). Candidates beyond k
are cut by mean rank; sets short of k are filled up by mean rank from the samples in neither set,
easy first, then hard.

Ties: efficacy is clipped to [0, 1], so fully forgotten (or strengthened) samples tie; they are
ordered by `delta_loss` (larger loss increase = more forgotten) when the table has it, then by
sample id. Every order in this module ends on the sample id, so results are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from unlearnscope.anchors.sets import AnchorSets, check_k, split_fit
from unlearnscope.errors import DataError
from unlearnscope.layout import OUTCOME_REQUIRED, require_columns
from unlearnscope.runs import check_finite


@dataclass
class VoteResult:
    """Disjoint easy and hard lists (easiest resp. hardest first), each method's own top-k and
    bottom-k lists, and every sample's mean rank over the methods (0 = most forgotten)."""

    easy: list[str]
    hard: list[str]
    per_method: dict[str, dict[str, list[str]]]
    mean_rank: dict[str, float]


def efficacy_ranks(table: pd.DataFrame, sample_ids: Sequence[str], *, name: str = "outcomes"
                   ) -> np.ndarray:
    """Rank of each of `sample_ids` in one run, `[n]` int: 0 = highest efficacy.

    `table` has columns `sample_id`, `efficacy` and optionally `delta_loss` (tie-breaker).
    """
    require_columns(table, OUTCOME_REQUIRED, name)
    rows = table.assign(sample_id=table["sample_id"].astype(str)).drop_duplicates("sample_id")
    rows = rows.set_index("sample_id")
    missing = [i for i in sample_ids if i not in rows.index]
    if missing:
        raise DataError(f"no outcome for {len(missing)} sample(s): {', '.join(missing[:10])}",
                        source=name, field="sample_id")
    rows = rows.loc[list(sample_ids)].reset_index()
    check_finite(torch.tensor(rows["efficacy"].to_numpy(dtype=np.float64)), f"{name} efficacy")
    keys, ascending = ["efficacy"], [False]
    if "delta_loss" in rows.columns:
        check_finite(torch.tensor(rows["delta_loss"].to_numpy(dtype=np.float64)),
                     f"{name} delta_loss")
        keys, ascending = [*keys, "delta_loss"], [*ascending, False]
    order = rows.sort_values([*keys, "sample_id"], ascending=[*ascending, True],
                             kind="mergesort").index.to_numpy()
    ranks = np.empty(len(rows), dtype=np.int64)
    ranks[order] = np.arange(len(rows))
    return ranks


def _fill(chosen: list[str], order: list[str], k: int, taken: set[str]) -> list[str]:
    """`chosen` extended in `order` by samples not in `chosen` or `taken` until it has `k`."""
    out = list(chosen)
    for sample_id in order:
        if len(out) >= k:
            break
        if sample_id not in out and sample_id not in taken:
            out.append(sample_id)
    return out


def vote_anchors(outcomes: Mapping[str, pd.DataFrame], k: int, *,
                 sample_ids: Sequence[str] | None = None) -> VoteResult:
    """Easy and hard anchors from several runs' outcome tables (`method name -> table`).

    `sample_ids`: the samples to vote over (default: the first table's); every table must
    have an outcome for each of them.
    """
    if not outcomes:
        raise DataError("vote needs at least one outcome table", field="outcomes")
    names = list(outcomes)
    if sample_ids is None:
        sample_ids = outcomes[names[0]]["sample_id"].astype(str).tolist()
    ids = list(sample_ids)
    n = len(ids)
    check_k(k, n)
    ranks = np.stack([efficacy_ranks(outcomes[m], ids, name=f"outcomes of '{m}'")
                      for m in names])  # [M, n]
    need = math.ceil(len(names) / 2)
    easy_votes = (ranks < k).sum(axis=0)
    hard_votes = (ranks >= n - k).sum(axis=0)
    mean_rank = ranks.mean(axis=0)
    middle = (n - 1) / 2
    easy_candidate = (easy_votes >= need) & (~(hard_votes >= need) | (mean_rank < middle))
    hard_candidate = (hard_votes >= need) & (~(easy_votes >= need) | (mean_rank > middle))

    easy_order = sorted(range(n), key=lambda i: (mean_rank[i], ids[i]))
    hard_order = sorted(range(n), key=lambda i: (-mean_rank[i], ids[i]))
    easy = [ids[i] for i in easy_order if easy_candidate[i]][:k]
    hard = [ids[i] for i in hard_order if hard_candidate[i]][:k]
    easy = _fill(easy, [ids[i] for i in easy_order], k, set(hard))
    hard = _fill(hard, [ids[i] for i in hard_order], k, set(easy))
    position = {ids[i]: p for p, i in enumerate(easy_order)}
    per_method = {}
    for name, method_ranks in zip(names, ranks, strict=True):
        by_rank = [ids[i] for i in np.argsort(method_ranks, kind="stable")]
        per_method[name] = {"easy": by_rank[:k], "hard": by_rank[::-1][:k]}
    return VoteResult(easy=sorted(easy, key=position.__getitem__),
                      hard=sorted(hard, key=position.__getitem__, reverse=True),
                      per_method=per_method,
                      mean_rank={i: float(r) for i, r in zip(ids, mean_rank, strict=True)})


def vote_anchor_sets(outcomes: Mapping[str, pd.DataFrame], k: int, sample_ids: Sequence[str],
                     *, fit_fraction: float, seed: int, options: dict[str, Any] | None = None,
                     diagnostics: dict[str, Any] | None = None) -> AnchorSets:
    """The `vote` anchor sets of `sample_ids`: `vote_anchors` over the fit part of
    `split_fit(sample_ids, fit_fraction, seed)`, the rest held out. `options` (how they were
    asked for) are recorded as given; `diagnostics` after the vote's `mean_rank`."""
    fit_ids, held_out = split_fit(list(sample_ids), fit_fraction, seed)
    vote = vote_anchors(outcomes, k, sample_ids=fit_ids)
    return AnchorSets("vote", k, vote.easy, vote.hard, fit_ids, held_out,
                      per_method=vote.per_method, options=dict(options or {}),
                      diagnostics={"mean_rank": vote.mean_rank, **(diagnostics or {})})

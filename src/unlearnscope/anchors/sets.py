"""Anchor sets on disk (`anchors.json`) and the seeded fit / held-out split.

`anchors.json` keys: `method` (`vote` | `bilevel`), `k`, `easy` and `hard` (sample ids, easiest
resp. hardest first), `fit_ids` and `held_out_ids` (the samples anchors were discovered on and
the ones kept for validation), `per_method` (vote: `{method: {"easy": [...], "hard": [...]}}`),
`options`, and method-specific diagnostics (`mean_rank` for vote, `weights` for bilevel).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unlearnscope.errors import DataError
from unlearnscope.layout import ANCHORS_FILE
from unlearnscope.runs import read_json, write_json

REQUIRED_KEYS = ("method", "k", "easy", "hard", "fit_ids", "held_out_ids")


@dataclass
class AnchorSets:
    """Reference easy and hard sets (disjoint lists of sample ids) and how they were found."""

    method: str
    k: int
    easy: list[str]
    hard: list[str]
    fit_ids: list[str]
    held_out_ids: list[str]
    per_method: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shared = set(self.easy) & set(self.hard)
        if shared:
            raise DataError(f"easy and hard anchors overlap: {', '.join(sorted(shared))}")

    def sets_for(self, anchor_method: str | None) -> dict[str, dict[str, list[str]]]:
        """The (easy, hard) lists to build anchor circuits from, keyed by method name.

        `None` or `"combined"`: the top-level sets; a method name: that method's vote lists;
        `"mean"`: every method's lists (to be averaged), or the top-level sets when there are
        no per-method lists (bilevel, or a vote over one method).
        """
        combined = {"combined": {"easy": self.easy, "hard": self.hard}}
        if anchor_method in (None, "combined"):
            return combined
        if anchor_method == "mean":
            return dict(self.per_method) or combined
        if anchor_method not in self.per_method:
            known = ", ".join(sorted(self.per_method)) or "none (use 'combined' or 'mean')"
            raise DataError(f"anchors have no lists for method '{anchor_method}'; per-method "
                            f"lists: {known}", field="anchor_method")
        return {anchor_method: self.per_method[anchor_method]}


def write_anchors(out_dir: str | Path, anchors: AnchorSets) -> Path:
    """Write `out_dir/anchors.json` atomically; returns its path."""
    record = asdict(anchors)
    diagnostics = record.pop("diagnostics")
    path = Path(out_dir) / ANCHORS_FILE
    write_json(path, {**record, **diagnostics})
    return path


def read_anchors(path: str | Path) -> AnchorSets:
    """Read an `anchors.json` file (or the one in a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / ANCHORS_FILE
    if not path.is_file():
        raise DataError("anchors file not found", source=str(path))
    record = read_json(path)
    for key in REQUIRED_KEYS:
        if key not in record:
            raise DataError("missing key", source=str(path), field=key)
    for key in ("easy", "hard"):
        if not record[key]:
            raise DataError("empty anchor set", source=str(path), field=key)
    known = {"per_method", "options", *REQUIRED_KEYS}
    return AnchorSets(
        method=record["method"], k=int(record["k"]),
        easy=[str(i) for i in record["easy"]], hard=[str(i) for i in record["hard"]],
        fit_ids=[str(i) for i in record["fit_ids"]],
        held_out_ids=[str(i) for i in record["held_out_ids"]],
        per_method=record.get("per_method", {}), options=record.get("options", {}),
        diagnostics={k: v for k, v in record.items() if k not in known})


def split_fit(sample_ids: Sequence[str], fraction: float, seed: int = 0
              ) -> tuple[list[str], list[str]]:
    """Seeded split into (fit ids, held-out ids), each in the order of `sample_ids`.

    `round(fraction * n)` samples (at least one) are drawn by a permutation of the sorted ids,
    so the split depends only on the set of ids and the seed, not on their order.
    """
    if not 0 < fraction <= 1:
        raise DataError(f"fit fraction must be in (0, 1], got {fraction}", field="fit_fraction")
    if len(set(sample_ids)) != len(sample_ids):
        raise DataError("duplicate sample ids", field="sample_id")
    n_fit = max(1, round(fraction * len(sample_ids)))
    order = np.random.default_rng(seed).permutation(len(sample_ids))
    chosen = {sorted(sample_ids)[i] for i in order[:n_fit]}
    return ([i for i in sample_ids if i in chosen], [i for i in sample_ids if i not in chosen])


def check_k(k: int, n: int) -> None:
    """Easy and hard sets of `k` disjoint samples need `1 <= k` and `2k <= n`."""
    if k < 1 or 2 * k > n:
        raise DataError(f"k={k} disjoint easy and hard samples cannot be chosen from {n} "
                        "samples (need 1 <= k <= n/2)", field="k")

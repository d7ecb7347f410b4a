"""Shared helpers of the store-based CUD validation tests: a small circuit store, outcome tables
and run folders in both outcome layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.selection import edge_matrix
from unlearnscope.circuits.store import CircuitStore, ShardWriter, write_header, write_index
from unlearnscope.runs import write_json, write_parquet
from unlearnscope.scoring.cud import anchor_aggregate, cud_from_aggregates

LAYOUT = GraphLayout(2, 2)


def write_store(directory: Path, ids: list[str], edge_scores: torch.Tensor) -> CircuitStore:
    """A circuit store of `edge_scores` `[n, E]` (real edges) for `ids`."""
    write_header(directory, {"n_layers": LAYOUT.n_layers, "n_heads": LAYOUT.n_heads})
    writer = ShardWriter(directory, LAYOUT, shard_size=7)
    writer.add(ids, edge_matrix(edge_scores, LAYOUT))
    writer.close()
    write_index(directory)
    return CircuitStore.open(directory)


def outcome(ids: list[str], efficacy, delta_loss=None) -> pd.DataFrame:
    frame = pd.DataFrame({"sample_id": ids, "efficacy": np.asarray(efficacy, np.float64)})
    if delta_loss is not None:
        frame["delta_loss"] = np.asarray(delta_loss, np.float64)
    return frame


def write_run(root: Path, store_scores: torch.Tensor, ids: list[str],
              outcomes: dict[str, dict[int, pd.DataFrame]], *, per_seed: set[str],
              fit: list[str], held: list[str], k: int) -> Path:
    """A run folder: `circuits/`, `anchors/anchors.json`, and `unlearn/<method>/` in the
    per-seed layout for `per_seed`, else the single-seed one (seed in summary.json)."""
    write_store(root / "circuits", ids, store_scores)
    write_json(root / "anchors" / "anchors.json", {
        "method": "vote", "k": k, "easy": fit[:k], "hard": fit[-k:], "fit_ids": fit,
        "held_out_ids": held})
    for method, seeds in outcomes.items():
        for seed, table in seeds.items():
            folder = root / "unlearn" / method
            folder = folder / f"seed{seed}" if method in per_seed else folder
            write_parquet(folder / "outcomes.parquet", table)
            write_json(folder / "summary.json", {"method": method, "settings": {"seed": seed}})
    return root


def cud_scores(sample_edge_scores: torch.Tensor, easy_edge_scores: torch.Tensor,
               hard_edge_scores: torch.Tensor, **options) -> torch.Tensor:
    """CUD `[n]` of samples' edge scores `[n, E]` given the easy and hard anchor samples' edge
    scores `[n_e, E]`, `[n_h, E]`, each set aggregated by its mean (one method's anchors)."""
    return cud_from_aggregates(sample_edge_scores, anchor_aggregate([easy_edge_scores]),
                               anchor_aggregate([hard_edge_scores]), **options)

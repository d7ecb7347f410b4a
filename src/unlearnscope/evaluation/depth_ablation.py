"""Edge-depth ablation of CUD: CUD over the edges read in the first, middle or last third of
the layers only, each validated on the held-out samples (issue 11.3).

Band b of a model with L blocks holds the edges whose reader is in a layer l with
floor(3 l / L) = b; the logits reader belongs to the last band (so `last` is the
`last_third_fraction` band of `circuits.analysis`). Within a band, a circuit is the top-n edges
by |score| among the band's edges (`top_n` a count, or a fraction of the band's edges), not
pruned: a band alone holds no input -> logits path. The `all` row computes CUD the same way
over every edge, so the four rows differ only in the edges they see. Anchors are the run's
`anchors/anchors.json` easy and hard lists (each aggregated by the mean of its samples' edge
scores); validity is Spearman's rho of CUD with the measured difficulty (rank-averaged over
methods) on the anchors' held-out samples, with a bootstrap interval over samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from unlearnscope.anchors.sets import read_anchors
from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.selection import edge_count, edge_index
from unlearnscope.evaluation.anchored_cud import open_run_store, read_run_outcomes
from unlearnscope.evaluation.experiments import to_markdown, write_table
from unlearnscope.evaluation.validation import (
    MEAN_METHOD,
    bootstrap_spearman_interval,
    measured_difficulty,
)
from unlearnscope.layout import DEPTH_ABLATION_FILE, VALIDATION_DIR, anchors_file
from unlearnscope.scoring.cud import anchor_aggregate, circuit_vectors, cud

BANDS = ("first", "middle", "last")
DEPTH_COLUMNS = ["band", "reader_layers", "n_edges", "circuit_edges", "spearman",
                 "spearman_low", "spearman_high", "n"]


def reader_bands(layout: GraphLayout) -> dict[str, torch.Tensor]:
    """`{band: [n_edges] bool}` over the real edges (`selection.edge_index` order): `all`, then
    `first`, `middle`, `last` by the reader's layer (see the module docstring)."""
    _, readers = edge_index(layout)
    layer = layout.backward_layer[readers]
    band = torch.clamp(layer * 3 // layout.n_layers, max=2)
    return {"all": torch.ones_like(band, dtype=torch.bool),
            **{name: band == index for index, name in enumerate(BANDS)}}


def _layer_text(layout: GraphLayout, band: str) -> str:
    if band == "all":
        return f"0-{layout.n_layers - 1}+logits"
    index = BANDS.index(band)
    layers = [layer for layer in range(layout.n_layers) if min(layer * 3 // layout.n_layers, 2)
              == index]
    text = f"{layers[0]}-{layers[-1]}" if layers else "none"
    return text + "+logits" if band == "last" else text


def depth_ablation_table(edge_scores: torch.Tensor, sample_ids: list[str], layout: GraphLayout,
                         easy: list[str], hard: list[str], truth: pd.Series, *,
                         top_n: float = 0.05, vector: str = "binary",
                         similarity: str = "cosine", n_boot: int = 2000,
                         seed: int = 0) -> pd.DataFrame:
    """The ablation table (`DEPTH_COLUMNS`) from stored edge scores `[n, E]` of `sample_ids`,
    anchor id lists and `truth` (measured difficulty indexed by sample id; its samples are the
    ones validated on)."""
    position = {sample_id: i for i, sample_id in enumerate(sample_ids)}
    held = [i for i in truth.index if i in position]
    rows = []
    for band, edges in reader_bands(layout).items():
        scores = edge_scores[:, edges]
        if scores.shape[1] == 0:
            rows.append((band, _layer_text(layout, band), 0, 0, np.nan, np.nan, np.nan, 0))
            continue
        n = edge_count(top_n, scores.shape[1])
        anchors = circuit_vectors(torch.stack([
            anchor_aggregate([scores[[position[i] for i in ids]]]) for ids in (easy, hard)
        ]).float(), n, vector=vector)
        samples = circuit_vectors(scores[[position[i] for i in held]], n, vector=vector)
        values = cud(samples, anchors[0], anchors[1], similarity).numpy()
        measured = truth.loc[held].to_numpy(dtype=np.float64)
        rho = float(stats.spearmanr(values, measured).statistic)
        low, high = bootstrap_spearman_interval(values, measured, n_boot=n_boot, seed=seed)
        rows.append((band, _layer_text(layout, band), int(edges.sum()), n, rho, low, high,
                     len(held)))
    return pd.DataFrame(rows, columns=DEPTH_COLUMNS)


def write_depth_ablation(run_dir: str | Path, *, top_n: float = 0.05, vector: str = "binary",
                         similarity: str = "cosine", n_boot: int = 2000,
                         seed: int = 0) -> pd.DataFrame:
    """`validation/depth_ablation.csv` (and `.md`) of a finished run folder: its circuit store,
    `anchors/anchors.json` and the outcomes under `unlearn/`."""
    run_dir = Path(run_dir)
    anchors = read_anchors(anchors_file(run_dir))
    truth = measured_difficulty(read_run_outcomes(run_dir),
                                exclude_ids=anchors.fit_ids)[MEAN_METHOD]
    truth = truth[truth.index.isin(set(anchors.held_out_ids))]
    store = open_run_store(run_dir)
    ids = sorted(set(truth.index) | set(anchors.easy) | set(anchors.hard))
    table = depth_ablation_table(store.edge_scores(ids), ids, store.layout, anchors.easy,
                                 anchors.hard, truth, top_n=top_n, vector=vector,
                                 similarity=similarity, n_boot=n_boot, seed=seed)
    folder = run_dir / VALIDATION_DIR
    markdown = "\n".join([
        f"CUD over the edges read in each third of the layers ({vector} vectors, {similarity}, "
        f"top {top_n} of the band's edges, unpruned), Spearman with measured difficulty on "
        f"the {len(truth)} held-out samples, 95% bootstrap interval.", "",
        to_markdown(table)])
    write_table(table, folder / DEPTH_ABLATION_FILE, markdown=markdown)
    return table

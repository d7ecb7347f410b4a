"""Circuit signatures of easy vs hard samples, from a circuit store and two id sets.

Each sample's circuit is its top-n edges by |score| (then pruning, as `unlearnscope circuits
analyze`); the two sets are compared with `unlearnscope.circuits.analysis`: per-circuit
statistics with Mann-Whitney and permutation tests, per-edge frequencies with Fisher tests,
and the layer, depth and edge-frequency plots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from unlearnscope.circuits.analysis import (
    PNG_DPI,
    compare_edge_frequencies,
    compare_frequency_distributions,
    compare_statistics,
    group_circuits,
)
from unlearnscope.circuits.selection import edge_count
from unlearnscope.circuits.store import CircuitStore
from unlearnscope.errors import DataError
from unlearnscope.evaluation.anchored_cud import read_run_outcomes
from unlearnscope.evaluation.experiments import to_markdown, write_table
from unlearnscope.evaluation.validation import MEAN_METHOD, measured_difficulty
from unlearnscope.layout import CIRCUITS_DIR, CLAIMS_FILE, VALIDATION_DIR
from unlearnscope.report.plots import figure_uri

DEFAULT_TOP_N = 0.05  # as `unlearnscope circuits analyze`: 5% of the graph's edges


@dataclass
class CircuitSignatures:
    """The easy vs hard comparison: `statistics` has one row per circuit statistic (sizes,
    means, medians per side, e.g. `mean_easy`, `mean_hard`; Mann-Whitney and permutation
    p-values), `top_edges` the edges whose frequency differs most (`count_easy`, ...,
    `difference` = easy - hard), `n_empty` the circuits left without edges by pruning (their
    top-n edges do not connect the input to the logits), `edge_summary` the per-edge comparison's summary,
    `frequency_tests` the edge-frequency distribution tests
    (`analysis.compare_frequency_distributions`), `plots` name -> PNG data URI."""

    n_edges_selected: int
    n_edges_in_graph: int
    ids: dict[str, list[str]]
    not_stored: dict[str, list[str]]
    n_empty: dict[str, int]
    statistics: pd.DataFrame
    top_edges: pd.DataFrame
    edge_summary: dict[str, Any]
    frequency_tests: dict[str, Any]
    plots: dict[str, str]


def compare_easy_hard(store_dir: str | Path, easy: list[str], hard: list[str], *,
                      top_n: float = DEFAULT_TOP_N, top_edges: int = 15,
                      n_resamples: int = 9999, frequency_resamples: int = 2000,
                      seed: int = 0) -> CircuitSignatures:
    """Compare the stored circuits of `easy` and `hard` samples (ids without a stored circuit
    are listed in `not_stored` and left out). Raises `DataError` when a set has none."""
    store = CircuitStore.open(store_dir)
    layout = store.layout
    n = edge_count(top_n, layout.n_edges)
    circuits = group_circuits(store, {"easy": easy, "hard": hard}, "topn", n=n)
    masks = circuits.masks
    statistics = compare_statistics(circuits.tables["easy"], circuits.tables["hard"],
                                    n_resamples=n_resamples, seed=seed)
    edges, edge_summary = compare_edge_frequencies(masks["easy"], masks["hard"], layout)
    frequency_tests = compare_frequency_distributions(masks["easy"], masks["hard"], layout,
                                                      n_resamples=frequency_resamples,
                                                      seed=seed)
    plots = {name: figure_uri(figure, dpi=PNG_DPI)
             for name, figure in circuits.figures().items()}
    n_empty = {name: int((~mask.flatten(1).any(dim=1)).sum()) for name, mask in masks.items()}
    return CircuitSignatures(n, layout.n_edges, circuits.ids, circuits.not_stored, n_empty,
                             _named(statistics),
                             _named(edges.head(top_edges)),
                             {_easy_hard(key): value for key, value in edge_summary.items()},
                             {_easy_hard(key): value for key, value in frequency_tests.items()},
                             plots)


# (claim, statistic, the side the claim says is larger); effects are oriented so that a
# positive value is the claimed direction
CLAIMS = (
    ("hard circuits are later (more edges read in the last third of the layers)",
     "last_third_fraction", "hard"),
    ("hard circuits are deeper (longer input -> logits path)", "max_depth", "hard"),
    ("hard circuits are longer (edges span more layers)", "mean_depth", "hard"),
    ("easy circuits are compact (fewer nodes)", "n_nodes", "hard"),
)
CLAIM_COLUMNS = ["claim", "statistic", "value_easy", "value_hard", "effect", "effect_kind",
                 "p_value", "test", "n_easy", "n_hard", "holds"]


def claims_table(signatures: CircuitSignatures, alpha: float = 0.05) -> pd.DataFrame:
    """The CUD paper's mechanistic claims tested on an easy vs hard comparison, one row each
    (`CLAIM_COLUMNS`): per-circuit statistics by Mann-Whitney with the rank-biserial effect
    (positive = the claimed direction); the heavier head of high-frequency edges of easy
    circuits (`head_share`, permutation test; effect = easy - hard share); the difference of
    the edge-frequency distributions (Kolmogorov-Smirnov; effect = its statistic). `holds`:
    the effect is in the claimed direction and p < `alpha`."""
    rows = []
    table = signatures.statistics.set_index("statistic")
    for claim, name, larger in CLAIMS:
        row = table.loc[name]
        effect = -row["rank_biserial"] if larger == "hard" else row["rank_biserial"]
        rows.append((claim, name, row["mean_easy"], row["mean_hard"], effect, "rank-biserial",
                     row["mannwhitney_p"], "Mann-Whitney U, two-sided", int(row["n_easy"]),
                     int(row["n_hard"])))
    tests = signatures.frequency_tests
    n_easy, n_hard = len(signatures.ids["easy"]), len(signatures.ids["hard"])
    rows.append(("easy circuits have a heavier head of high-frequency edges",
                 f"head_share (top {tests['head_fraction']:.0%} of edges)",
                 tests["head_share_easy"], tests["head_share_hard"],
                 tests["head_share_easy"] - tests["head_share_hard"], "share difference",
                 tests["head_share_p"], "permutation of circuits, two-sided", n_easy, n_hard))
    rows.append(("easy and hard edge-frequency distributions differ", "edge_frequency",
                 float("nan"), float("nan"), tests["ks_statistic"], "KS statistic",
                 tests["ks_p"], "two-sample Kolmogorov-Smirnov", n_easy, n_hard))
    frame = pd.DataFrame(rows, columns=CLAIM_COLUMNS[:-1])
    frame["holds"] = (frame["effect"] > 0) & (frame["p_value"] < alpha)
    return frame


def _easy_hard(name: str) -> str:
    """The analysis functions' side suffixes `_a`, `_b` as `_easy`, `_hard`."""
    for side, group in (("_a", "_easy"), ("_b", "_hard")):
        if name.endswith(side):
            return name[: -len(side)] + group
    return name


def _named(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns=_easy_hard)


def easy_hard_by_measured(outcomes, quantile: float = 0.25) -> tuple[list[str], list[str]]:
    """(easiest, hardest) sample ids: the bottom and top `quantile` (at least 2 each) of the
    measured difficulty rank-averaged over methods (`measured_difficulty`), ties by id."""
    measured = measured_difficulty(outcomes)[MEAN_METHOD]
    ordered = (measured.rename("difficulty").rename_axis("sample_id").reset_index()
               .sort_values(["difficulty", "sample_id"], kind="mergesort").sample_id.tolist())
    n = max(2, int(len(ordered) * quantile))
    if 2 * n > len(ordered):
        raise DataError(f"{len(ordered)} samples with outcomes cannot give {n} easy and {n} "
                        "hard ones", field="quantile")
    return ordered[:n], ordered[-n:]


def write_claims(run_dir: str | Path, *, top_n: float = DEFAULT_TOP_N, quantile: float = 0.25,
                 n_resamples: int = 9999, seed: int = 0) -> pd.DataFrame:
    """`validation/claims.csv` (and `.md`) of a finished run folder: `claims_table` of the
    stored circuits (`run_dir/circuits`) of the easiest vs the hardest `quantile` of measured
    difficulty (outcomes under `run_dir/unlearn`)."""
    run_dir = Path(run_dir)
    easy, hard = easy_hard_by_measured(read_run_outcomes(run_dir), quantile)
    signatures = compare_easy_hard(run_dir / CIRCUITS_DIR, easy, hard, top_n=top_n,
                                   n_resamples=n_resamples, seed=seed)
    table = claims_table(signatures)
    folder = run_dir / VALIDATION_DIR
    write_table(table, folder / CLAIMS_FILE, markdown="\n".join([
        f"The CUD paper's circuit claims: the {len(easy)} easiest vs the {len(hard)} hardest "
        f"samples by measured difficulty (quantile {quantile}), each circuit its top "
        f"{signatures.n_edges_selected} of {signatures.n_edges_in_graph} edges, pruned; effect "
        "> 0 is the claimed direction; holds = effect > 0 and p < 0.05.", "",
        to_markdown(table)]))
    return table

"""Cross-method generalization of CUD: anchors voted from some methods' outcomes, CUD validated
against another method's measured difficulty.

The CUD paper reports its scores stable across the unlearning methods anchors come from. Here,
for every ordered pair of methods (A, B) of a run (`kind = pair`, A = B included): the `vote`
anchors from A's outcomes alone on the fit half, CUD of the held-out samples from the run's
circuit store (`anchored_cud.StoreCud`), and Spearman's rho of that CUD with B's measured
difficulty (-efficacy) on the held-out half only, with a bootstrap interval over samples. Then
leave-one-method-out (`kind = leave_one_out`): anchors voted from every other method, validated
on the method left out, whose outcomes the vote never reads.

Seeds. `--seed` fixes the data order, so two runs with the same seed share it and agree more
than their methods do. For a target run at seed t, each anchor method's outcome is its seed
mean over its seeds other than t; rho is the mean over the target's seeds t of those rhos, and
the interval resamples samples jointly for every t (`bootstrap_mean_spearman_interval`). Target
seeds for which some anchor method has no other seed are left out. Only when no target seed has
a different-seed counterpart (single-seed runs) are the anchor methods' runs at the same seed
used, and the row says so: `pairing` is `different seeds`, `same seed` (shared data order: may
be inflated) or `same run` (A = B, one seed: the two halves of one run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from unlearnscope.errors import DataError, UnknownNameError
from unlearnscope.evaluation.anchored_cud import (
    ANCHOR_METHODS,
    Halves,
    SeedOutcomes,
    StoreCud,
    open_run_store,
    read_run_outcomes,
    run_halves,
    seed_mean,
    vote_sets,
)
from unlearnscope.evaluation.experiments import to_markdown, write_table
from unlearnscope.layout import CROSS_METHOD_FILE, VALIDATION_DIR
from unlearnscope.runs import write_config

CROSS_METHOD_COLUMNS = ["kind", "anchors", "target", "pairing", "spearman", "spearman_low",
                        "spearman_high", "n", "target_seeds", "anchor_seeds", "note"]
PAIR, LEAVE_ONE_OUT = "pair", "leave_one_out"
DIFFERENT_SEEDS, SAME_SEED, SAME_RUN = "different seeds", "same seed", "same run"


def seed_plan(outcomes: SeedOutcomes, anchor_methods: Sequence[str], target: str
              ) -> tuple[str, dict[int, dict[str, list[int]]]]:
    """`(pairing, {target seed: {anchor method: the seeds whose mean votes}})`: each anchor
    method's seeds other than the target seed, for the target seeds where every anchor method
    has one; without any such target seed, every seed of each anchor method (see the module
    docstring)."""
    other = {t: {a: [s for s in sorted(outcomes[a]) if s != t] for a in anchor_methods}
             for t in sorted(outcomes[target])}
    plan = {t: seeds for t, seeds in other.items() if all(seeds.values())}
    if plan:
        return DIFFERENT_SEEDS, plan
    pairing = SAME_RUN if list(anchor_methods) == [target] else SAME_SEED
    return pairing, {t: {a: sorted(outcomes[a]) for a in anchor_methods}
                     for t in sorted(outcomes[target])}


def _rank_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Spearman of `[b, n]` arrays: Pearson correlation of the rows' ranks, `[b]`
    (NaN where a row's ranks are constant)."""
    rx, ry = stats.rankdata(x, axis=1), stats.rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=1) / np.sqrt((rx ** 2).sum(axis=1) * (ry ** 2).sum(axis=1))


def bootstrap_mean_spearman_interval(x: np.ndarray, y: np.ndarray, *, n_boot: int, seed: int,
                                     level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean over rows t of Spearman(x[t], y[t]), `x`, `y`
    `[T, n]` (T pairs over the same n samples): every resample draws n samples with replacement
    and applies them to all T pairs. With T = 1 it equals `bootstrap_spearman_interval` (same
    draws). Resamples where some pair's ranks are constant are left out."""
    x, y = np.atleast_2d(np.asarray(x, np.float64)), np.atleast_2d(np.asarray(y, np.float64))
    if x.shape != y.shape:
        raise DataError(f"paired arrays of shapes {x.shape} and {y.shape}")
    index = np.random.default_rng(seed).integers(0, x.shape[1], size=(n_boot, x.shape[1]))
    rho = np.stack([_rank_spearman(xt[index], yt[index]) for xt, yt in zip(x, y, strict=True)])
    mean = rho.mean(axis=0)
    mean = mean[np.isfinite(mean)]
    if mean.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2
    low, high = np.quantile(mean, [tail, 1.0 - tail])
    return float(low), float(high)


def _seeds_text(plan: Mapping[int, Mapping[str, Sequence[int]]]) -> str:
    """`t: s,s; ...`: per target seed, the anchor seeds used (union over anchor methods)."""
    return "; ".join(f"{t}: " + ",".join(str(s) for s in sorted({s for seeds in by_method.values()
                                                                  for s in seeds}))
                     for t, by_method in plan.items())


def _agreement_row(outcomes: SeedOutcomes, cud: StoreCud, halves: Halves, kind: str,
                   anchor_methods: Sequence[str], target: str, *, settings: dict,
                   n_boot: int, seed: int) -> dict:
    pairing, plan = seed_plan(outcomes, anchor_methods, target)
    target_ids = [set(outcomes[target][t]["sample_id"].astype(str)) for t in plan]
    held = [i for i in halves.held_out_ids
            if i in cud.position and all(i in ids for ids in target_ids)]
    xs, ys = [], []
    for t, by_method in plan.items():
        tables = {a: seed_mean(outcomes[a], seeds) for a, seeds in by_method.items()}
        sets = vote_sets(tables, halves.fit_ids, halves.k, settings["anchor_method"])
        xs.append(cud.values(sets, held, top_n=settings["top_n"], vector=settings["vector"],
                             similarity=settings["similarity"]))
        table = outcomes[target][t].assign(sample_id=outcomes[target][t]["sample_id"].astype(str))
        ys.append(-table.set_index("sample_id").loc[held, "efficacy"].to_numpy(np.float64))
    x, y = np.stack(xs), np.stack(ys)
    notes = []
    left_out = sorted(set(outcomes[target]) - set(plan))
    if left_out:
        notes.append("target seeds without a different anchor seed left out: "
                     + ",".join(map(str, left_out)))
    if pairing == SAME_SEED:
        notes.append("anchor and target runs share their seed (data order): agreement may be "
                     "inflated")
    elif pairing == SAME_RUN:
        notes.append("one run: anchors from its fit half, validated on its held-out half")
    rho = low = high = float("nan")
    if len(held) < 3:
        notes.append(f"only {len(held)} held-out samples")
    elif any(np.ptp(row) == 0 for row in x):
        notes.append("CUD is constant on the held-out samples")
    elif any(np.ptp(row) == 0 for row in y):
        notes.append("measured difficulty is constant on the held-out samples")
    else:
        rho = float(np.mean([stats.spearmanr(xt, yt).statistic
                             for xt, yt in zip(x, y, strict=True)]))
        low, high = bootstrap_mean_spearman_interval(x, y, n_boot=n_boot, seed=seed)
    return {"kind": kind,
            "anchors": "+".join(anchor_methods), "target": target, "pairing": pairing,
            "spearman": rho, "spearman_low": low, "spearman_high": high, "n": len(held),
            "target_seeds": ",".join(map(str, plan)), "anchor_seeds": _seeds_text(plan),
            "note": "; ".join(notes)}


def cross_method_table(outcomes: SeedOutcomes, cud: StoreCud, halves: Halves, *,
                       top_n: float = 0.05, vector: str = "binary",
                       similarity: str = "cosine", anchor_method: str = "mean",
                       n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """`CROSS_METHOD_COLUMNS`: one `pair` row per ordered pair of methods of `outcomes`
    (`{method: {seed: outcome table}}`), anchors row-major, then with two or more methods one
    `leave_one_out` row per method. `anchors` names the voting methods (`+`-joined), `target`
    the validated one; `n` counts the held-out samples the store and the target's runs cover.
    `anchor_method` (`mean` or `combined`) combines several voting methods' lists as the `cud`
    scorer does."""
    if anchor_method not in ANCHOR_METHODS:
        raise UnknownNameError("anchor method for cross-method validation", anchor_method,
                               list(ANCHOR_METHODS))
    methods = list(outcomes)
    if not methods:
        raise DataError("no outcome tables given", field="outcomes")
    settings = {"top_n": top_n, "vector": vector, "similarity": similarity,
                "anchor_method": anchor_method}
    specs = [(PAIR, [a], b) for a in methods for b in methods]
    if len(methods) >= 2:
        specs += [(LEAVE_ONE_OUT, [m for m in methods if m != b], b) for b in methods]
    rows = [_agreement_row(outcomes, cud, halves, kind, anchors, target, settings=settings,
                           n_boot=n_boot, seed=seed) for kind, anchors, target in specs]
    return pd.DataFrame(rows, columns=CROSS_METHOD_COLUMNS)


def cross_method_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """The `pair` rows' Spearman as a matrix `[anchor method, target method]` (rows: anchors
    from, columns: validated on), methods in table order."""
    pairs = table[table["kind"] == PAIR]
    order = list(dict.fromkeys([*pairs["anchors"], *pairs["target"]]))
    matrix = pairs.pivot(index="anchors", columns="target", values="spearman")
    matrix = matrix.reindex(index=order, columns=order).astype(float)
    matrix.index.name = matrix.columns.name = None
    return matrix


def _interval_text(row: Mapping) -> str:
    if not np.isfinite(row["spearman"]):
        return "nan"
    return f"{row['spearman']:.3f} [{row['spearman_low']:.3f}, {row['spearman_high']:.3f}]"


def cross_method_markdown(table: pd.DataFrame, header: Sequence[str]) -> str:
    """`header` lines, the pair matrix (`rho [low, high]`), then the whole table."""
    pairs = table[table["kind"] == PAIR]
    order = list(dict.fromkeys([*pairs["anchors"], *pairs["target"]]))
    cells = {(r["anchors"], r["target"]): _interval_text(r) for _, r in pairs.iterrows()}
    matrix = pd.DataFrame([[a, *(cells.get((a, b), "") for b in order)] for a in order],
                          columns=["anchors \\ target", *order])
    parts = [*header, "", "Pairs (rows: anchors from, columns: validated on), Spearman "
             "[95% CI]:", "", to_markdown(matrix)]
    loo = table[table["kind"] == LEAVE_ONE_OUT]
    if len(loo):
        shown = pd.DataFrame({"left out (target)": loo["target"],
                              "anchors from": loo["anchors"],
                              "spearman [95% CI]": [_interval_text(r) for _, r in loo.iterrows()],
                              "pairing": loo["pairing"], "n": loo["n"]})
        parts += ["Leave one method out:", "", to_markdown(shown)]
    parts += ["All rows:", "", to_markdown(table, floatfmt=".3f")]
    return "\n".join(parts)


def write_cross_method(run_dir: str | Path, *, top_n: float = 0.05, vector: str = "binary",
                       similarity: str = "cosine", anchor_method: str = "mean",
                       methods: Sequence[str] | None = None, k: int | None = None,
                       fit_fraction: float = 0.5, split_seed: int = 0, n_boot: int = 1000,
                       seed: int = 0, out_dir: str | Path | None = None) -> pd.DataFrame:
    """Compute the cross-method table of a run folder and write `validation/cross_method.csv`,
    `.md` and `validation/cross_method/config.json` under `out_dir` (default `run_dir`).

    Reads `unlearn/<method>/` outcomes (per seed where present; `methods` picks some), the
    circuit store `circuits/`, and the fit / held-out split and `k` of `anchors/anchors.json`
    (without it: `split_fit(fit_fraction, split_seed)` and `k` must be given). Returns the
    table (`CROSS_METHOD_COLUMNS`).
    """
    outcomes = read_run_outcomes(run_dir)
    if methods is not None:
        unknown = [m for m in methods if m not in outcomes]
        if unknown:
            raise UnknownNameError("method with outcomes in the run", unknown[0], list(outcomes))
        outcomes = {m: outcomes[m] for m in methods}
    store = open_run_store(run_dir)
    first = next(iter(next(iter(outcomes.values())).values()))
    ids = [i for i in first["sample_id"].astype(str) if i in store]
    halves = run_halves(run_dir, ids, k=k, fit_fraction=fit_fraction, seed=split_seed)
    wanted = [i for i in [*halves.fit_ids, *halves.held_out_ids] if i in store]
    table = cross_method_table(outcomes, StoreCud(store, wanted), halves, top_n=top_n,
                               vector=vector, similarity=similarity,
                               anchor_method=anchor_method, n_boot=n_boot, seed=seed)
    settings = {"top_n": top_n, "vector": vector, "similarity": similarity,
                "anchor_method": anchor_method, "k": halves.k, "split": halves.source,
                "n_fit": len(halves.fit_ids), "n_held_out": len(halves.held_out_ids),
                "methods": list(outcomes),
                "seeds": {m: sorted(seeds) for m, seeds in outcomes.items()},
                "store": str(store.directory), "n_boot": n_boot, "seed": seed}
    folder = Path(out_dir or run_dir) / VALIDATION_DIR
    write_config(folder / "cross_method", "validate cross-method", settings)
    header = [
        f"CUD (top_n={top_n}, vector={vector}, similarity={similarity}, anchor_method="
        f"{anchor_method}) from the circuit store {store.directory.name}/; anchors: vote "
        f"(k={halves.k}) on the {len(halves.fit_ids)} fit samples of {halves.source}; "
        f"Spearman with -efficacy on the {len(halves.held_out_ids)} held-out samples only "
        f"(bootstrap over samples, {n_boot} resamples).",
        "Seeds: per target seed, anchors from each voting method's seed mean over its other "
        "seeds, rho averaged over target seeds (pairing 'different seeds'); 'same seed' / "
        "'same run' where only single-seed runs with one seed exist (see note).",
    ]
    write_table(table, folder / CROSS_METHOD_FILE, markdown=cross_method_markdown(table, header))
    return table

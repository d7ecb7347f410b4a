"""Choosing a CUD configuration without peeking (DESIGN 5.9: samples used to choose a
configuration never enter the statistics that report it).

Candidates: every combination of circuit size (`top_n`), circuit vector (binary, weighted),
similarity (cosine, Jaccard, Hamming) and anchor method (`combined`, `mean`, or one method's
vote lists), computed from the run's circuit store (`anchored_cud.StoreCud`); plus every CUD
scorer already in the run's `scores.parquet` (for instance another preset, computed from its
own circuits) whose anchors were provably voted inside the fit half.

The choice reads the fit half only, and scores each candidate out of sample there, because
anchors voted on a sample's own outcome place it next to an anchor: a candidate that only
memorizes its anchors' circuits ranks the anchors (the extremes of the measured difficulty)
right and everything else at random, and its in-sample Spearman still looks good.

- Store candidates are cross-fitted (`fit_cv_spearman`): the fit samples are cut into K folds
  (`fit_folds`: a permutation of the sorted ids seeded by `fold_seed`, cut into K parts whose
  sizes differ by at most one; K = `folds`, default 5, lowered so that every fold holds at
  least 3 samples). For each fold, anchors are voted on the other K - 1 folds with k scaled to
  that pool (`fold_k`: round(k n_pool / n_fit), n_pool the smallest such pool, at least 1), so
  that they are the same share of their pool, as extreme, as the reported anchors are of the
  fit half; the candidate's CUD of the fold's samples is correlated (Spearman) with their
  measured difficulty (`target`, ranked within the fold); the score is the mean over folds. A
  fold whose measured difficulty is constant is left out for every candidate; a fold where the
  candidate's CUD is constant counts 0 (it ranks nothing there). `fit_cv_folds` counts the
  folds scored, `fit_n` their samples.
- A scored candidate's anchors are fixed, so it is scored on the fit samples outside its
  anchors' fit samples (whose outcomes its vote never read); when fewer than 3 remain it has no
  out-of-sample score and is never chosen.
- `fit_in_sample_spearman` (for comparison only, never used to choose): the Spearman on the
  whole fit half with anchors voted on the whole fit half, so anchor samples are among the
  scored ones.

`target` is `mean` (the average over methods of each method's rank of its seed-mean
-efficacy) or one method. The highest `fit_cv_spearman` is chosen (ties: the first candidate
in order, store candidates first). Only then is the held-out half read: the chosen
configuration (anchors voted on the whole fit half with k) gets its held-out Spearman with a
bootstrap interval; every other candidate gets its held-out Spearman too, for one check of the
criterion (`criterion_check`): over candidates, the Spearman between the cross-fitted fit score
and the held-out Spearman (does the criterion predict held-out validity?), beside the same for
the in-sample score. Candidates share circuits and anchors, so they are not independent draws.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from unlearnscope.anchors.sets import read_anchors
from unlearnscope.errors import DataError
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
from unlearnscope.evaluation.holdout import uses_anchors
from unlearnscope.evaluation.validation import (
    MEAN_METHOD,
    bootstrap_spearman_interval,
    measured_difficulty,
)
from unlearnscope.layout import (
    CUD_CHOICE_FILE,
    SCORES_FILE,
    VALIDATION_DIR,
    anchors_file,
    read_scores,
)
from unlearnscope.runs import write_config
from unlearnscope.scoring.cud import SIMILARITIES, VECTORS
from unlearnscope.scoring.runner import read_scorer_configs

CHOICE_COLUMNS = ["candidate", "source", "top_n", "vector", "similarity", "anchor_method",
                  "fit_cv_spearman", "fit_cv_folds", "fit_n", "fit_in_sample_spearman",
                  "chosen", "held_out_spearman", "held_out_low", "held_out_high", "held_out_n",
                  "note"]
TOP_N = (0.02, 0.05, 0.1)
FOLDS = 5
MIN_FOLD = 3  # samples a fold needs for a Spearman
STORE_SOURCE, SCORES_SOURCE = "circuit store", SCORES_FILE


@dataclass(frozen=True)
class CudConfig:
    """One CUD configuration computed from the circuit store."""

    top_n: float
    vector: str
    similarity: str
    anchor_method: str

    @property
    def label(self) -> str:
        return (f"cud[top_n={self.top_n:g}, {self.vector}, {self.similarity}, "
                f"anchors={self.anchor_method}]")


@dataclass
class ScoredCandidate:
    """A CUD scorer's difficulties `[n]` (indexed by sample id) from a score table, its
    resolved config and the samples its anchors were fitted on (`None`: unknown)."""

    name: str
    difficulty: pd.Series
    fit_ids: list[str] | None
    config: dict[str, Any]


@dataclass
class CudChoice:
    """The candidates' table (`CHOICE_COLUMNS`), the cross-fitting folds of the fit half (each
    in fit order) and the anchor set size voted on each fold's complement (`fold_k`)."""

    table: pd.DataFrame
    folds: list[list[str]]
    fold_k: int


def candidate_grid(top_n: Sequence[float] = TOP_N, vectors: Sequence[str] = VECTORS,
                   similarities: Sequence[str] = SIMILARITIES,
                   anchor_methods: Sequence[str] = ANCHOR_METHODS) -> list[CudConfig]:
    """Every combination, in the order top_n, vector, similarity, anchor method."""
    return [CudConfig(float(n), v, s, a) for n, v, s, a in
            itertools.product(top_n, vectors, similarities, anchor_methods)]


def fit_folds(fit_ids: Sequence[str], folds: int = FOLDS, seed: int = 0) -> list[list[str]]:
    """K disjoint folds covering `fit_ids`, K = min(`folds`, len // `MIN_FOLD`): a permutation
    of the sorted ids seeded by `seed`, cut into K consecutive parts (sizes differ by at most
    one), each fold in the order of `fit_ids`; so the folds depend only on the set of ids and
    the seed. Raises `DataError` when `folds` < 2 or fewer than 2 folds of `MIN_FOLD` fit."""
    if folds < 2:
        raise DataError(f"cross-fitting needs at least 2 folds, got {folds}", field="folds")
    if len(set(fit_ids)) != len(fit_ids):
        raise DataError("duplicate sample ids", field="fit_ids")
    count = min(folds, len(fit_ids) // MIN_FOLD)
    if count < 2:
        raise DataError(f"{len(fit_ids)} fit samples cannot be cut into 2 folds of at least "
                        f"{MIN_FOLD}", field="fit_ids")
    ordered = sorted(fit_ids)
    parts = np.array_split(np.random.default_rng(seed).permutation(len(ordered)), count)
    fold_of = {ordered[j]: f for f, part in enumerate(parts) for j in part}
    return [[i for i in fit_ids if fold_of[i] == f] for f in range(count)]


def fold_k(k: int, n_pool: int, n_fit: int) -> int:
    """Anchor set size for a vote on `n_pool` of the `n_fit` fit samples: k scaled to the pool,
    round(k n_pool / n_fit) (halves up), at least 1."""
    return max(1, int(k * n_pool / n_fit + 0.5))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def _truth(tables: Mapping[str, pd.DataFrame], keep: Sequence[str], target: str) -> pd.Series:
    """Measured difficulty (`target` column of `measured_difficulty`) of the samples in `keep`
    only: every other row is excluded before the ranks are taken."""
    everything = set().union(*(set(t["sample_id"].astype(str)) for t in tables.values()))
    measured = measured_difficulty(tables, exclude_ids=everything - set(keep))
    if target not in measured.columns:
        raise DataError(f"no measured difficulty '{target}'; known: "
                        f"{', '.join(measured.columns)}", field="target")
    return measured[target]


def _paired_spearman(x: pd.Series, truth: pd.Series) -> tuple[float, int, np.ndarray,
                                                               np.ndarray]:
    """Spearman of `x` and `truth` over the samples both have (NaN dropped), their count and
    the paired arrays."""
    pair = pd.concat([x.rename("x"), truth.rename("y")], axis=1, join="inner").dropna()
    xs, ys = pair["x"].to_numpy(np.float64), pair["y"].to_numpy(np.float64)
    return _spearman(xs, ys), len(pair), xs, ys


def _cross_fitted(cud: StoreCud, config: CudConfig, plan: Sequence[tuple[list[str], pd.Series]],
                  fold_sets: Mapping[tuple[str, int], Mapping]) -> float:
    """Mean over the folds of `plan` (`(fold ids, their measured difficulty)`, constant ones
    already left out) of Spearman(CUD against the anchors voted without the fold, difficulty),
    0 where the CUD is constant on the fold; NaN when it is constant on every fold."""
    rhos = []
    for f, (ids, truth) in enumerate(plan):
        x = cud.values(fold_sets[config.anchor_method, f], ids, top_n=config.top_n,
                       vector=config.vector, similarity=config.similarity)
        rhos.append(_spearman(x, truth.to_numpy()) if np.ptp(x) > 0 else None)
    if all(rho is None for rho in rhos):
        return float("nan")
    return float(np.mean([0.0 if rho is None else rho for rho in rhos]))


def _scored_row(candidate: ScoredCandidate, tables: Mapping[str, pd.DataFrame],
                fit_truth: pd.Series, fit_set: set[str], target: str) -> dict[str, Any]:
    """A scored candidate's row: with anchors fitted inside the fit half, scored on the fit
    samples outside its anchors' fit samples (ranked among themselves) and in sample."""
    row = {"candidate": candidate.name, "source": SCORES_SOURCE,
           **{key: candidate.config.get(key) for key in
              ("top_n", "vector", "similarity", "anchor_method")},
           "fit_cv_spearman": float("nan"), "fit_cv_folds": 0, "fit_n": 0,
           "fit_in_sample_spearman": float("nan"), "note": ""}
    if candidate.fit_ids is None:
        row["note"] = ("not a candidate: the samples its anchors were fitted on are unknown "
                       "(no anchor_fit_ids or readable anchors file in its scorer config)")
        return row
    if outside := sorted(set(candidate.fit_ids) - fit_set):
        row["note"] = (f"not a candidate: its anchors were fitted on {len(outside)} "
                       "sample(s) outside the fit half")
        return row
    row["fit_in_sample_spearman"] = _paired_spearman(candidate.difficulty, fit_truth)[0]
    anchored, known = set(candidate.fit_ids), set(candidate.difficulty.dropna().index)
    unseen = [i for i in fit_truth.index if i not in anchored and i in known]
    row["fit_n"] = len(unseen)
    if len(unseen) < MIN_FOLD:
        row["note"] = (f"not a candidate: {len(unseen)} fit sample(s) outside its anchors' fit "
                       "samples, too few to score it out of sample")
        return row
    row["fit_cv_spearman"] = _paired_spearman(candidate.difficulty,
                                              _truth(tables, unseen, target))[0]
    row["note"] = (f"fixed anchors (fitted on {len(anchored)} fit samples): scored on the "
                   f"{len(unseen)} other fit samples")
    return row


def choose_cud(outcomes: SeedOutcomes, cud: StoreCud, halves: Halves,
               candidates: Sequence[CudConfig], *, scored: Sequence[ScoredCandidate] = (),
               vote_methods: Sequence[str] | None = None, target: str = MEAN_METHOD,
               folds: int = FOLDS, fold_seed: int = 0, n_boot: int = 1000, seed: int = 0
               ) -> CudChoice:
    """One `CHOICE_COLUMNS` row per candidate (store candidates, then `scored`): its
    cross-fitted fit-half Spearman (the criterion, see the module docstring) with the folds it
    was scored on and their samples (`fit_n`), its in-sample one, `chosen` (the highest
    criterion), then, read after the choice, its held-out Spearman over `held_out_n` samples,
    with a bootstrap interval for the chosen row only.

    `outcomes`: `{method: {seed: outcome table}}`, each method entering as its seed mean;
    anchors are voted from `vote_methods` (default: all). Folds: `fit_folds` (`folds`,
    `fold_seed`) of the fit samples that have a stored circuit and a measured difficulty. A
    scored candidate whose anchors' fit samples are unknown or reach outside the fit half is
    listed with a note and never chosen. Raises `DataError` when no candidate ranks the fit
    half out of sample.
    """
    tables = {m: seed_mean(seeds) for m, seeds in outcomes.items()}
    voters = {m: tables[m] for m in (vote_methods or list(tables))}
    fit_truth = _truth(tables, halves.fit_ids, target)
    fit_ids = [i for i in fit_truth.index if i in cud.position]
    fold_ids = fit_folds(fit_ids, folds, fold_seed)
    k_fold = fold_k(halves.k, len(fit_ids) - max(map(len, fold_ids)), len(fit_ids))
    plan = []
    for ids in fold_ids:
        truth = _truth(tables, ids, target).loc[ids]
        if np.ptp(truth.to_numpy()) > 0:
            plan.append((ids, truth))
    methods = list(dict.fromkeys(c.anchor_method for c in candidates))
    fold_sets = {}
    for f, (ids, _) in enumerate(plan):
        pool = [i for i in fit_ids if i not in set(ids)]
        fold_sets.update({(a, f): vote_sets(voters, pool, k_fold, a) for a in methods})
    anchor_sets = {a: vote_sets(voters, halves.fit_ids, halves.k, a) for a in methods}
    rows = []
    for config in candidates:
        x = cud.values(anchor_sets[config.anchor_method], fit_ids, top_n=config.top_n,
                       vector=config.vector, similarity=config.similarity)
        rows.append({"candidate": config.label, "source": STORE_SOURCE, "top_n": config.top_n,
                     "vector": config.vector, "similarity": config.similarity,
                     "anchor_method": config.anchor_method,
                     "fit_cv_spearman": _cross_fitted(cud, config, plan, fold_sets),
                     "fit_cv_folds": len(plan), "fit_n": sum(len(ids) for ids, _ in plan),
                     "fit_in_sample_spearman": _spearman(x, fit_truth.loc[fit_ids].to_numpy()),
                     "note": ""})
    fit_set = set(halves.fit_ids)
    rows += [_scored_row(c, tables, fit_truth, fit_set, target) for c in scored]
    table = pd.DataFrame(rows, columns=CHOICE_COLUMNS).assign(chosen=False, held_out_n=0)
    criterion = table["fit_cv_spearman"].to_numpy(np.float64)
    if not np.isfinite(criterion).any():
        raise DataError("no candidate CUD configuration ranks the fit half out of sample "
                        "(constant CUD or measured difficulty on every fold)", field="fit_ids")
    best = int(np.nanargmax(criterion))
    table.loc[best, "chosen"] = True
    held_truth = _truth(tables, halves.held_out_ids, target)
    held_ids = [i for i in held_truth.index if i in cud.position]
    held_values = [pd.Series(cud.values(anchor_sets[c.anchor_method], held_ids, top_n=c.top_n,
                                        vector=c.vector, similarity=c.similarity),
                             index=held_ids) for c in candidates]
    held_values += [c.difficulty for c in scored]
    inside = [True] * len(candidates) + [c.fit_ids is not None and set(c.fit_ids) <= fit_set
                                          for c in scored]
    for index, x in enumerate(held_values):
        if inside[index]:
            table.loc[index, ["held_out_spearman", "held_out_n"]] = _paired_spearman(
                x, held_truth)[:2]
    table["held_out_n"] = table["held_out_n"].astype(int)
    rho, _, xs, ys = _paired_spearman(held_values[best], held_truth)
    table.loc[best, ["held_out_low", "held_out_high"]] = (
        bootstrap_spearman_interval(xs, ys, n_boot=n_boot, seed=seed)
        if np.isfinite(rho) else (float("nan"), float("nan")))
    return CudChoice(table, fold_ids, k_fold)


def criterion_check(table: pd.DataFrame) -> dict[str, float | int]:
    """Over the candidates of a choice table that have both figures: `n`, `cv_vs_held_out`,
    the Spearman between the cross-fitted fit score and the held-out Spearman, and
    `in_sample_vs_held_out`, the same for the in-sample fit score (over the candidates that
    have it and a held-out Spearman; `n_in_sample` of them). NaN where fewer than 3 or
    constant."""
    held = table["held_out_spearman"].astype(float)
    out: dict[str, float | int] = {}
    for key, count, column in (("cv_vs_held_out", "n", "fit_cv_spearman"),
                               ("in_sample_vs_held_out", "n_in_sample",
                                "fit_in_sample_spearman")):
        both = np.isfinite(held) & np.isfinite(table[column].astype(float))
        out[count] = int(both.sum())
        out[key] = _spearman(table.loc[both, column].to_numpy(np.float64),
                             held[both].to_numpy(np.float64))
    return out


def _anchor_fit_ids(config: Mapping[str, Any]) -> list[str] | None:
    """The samples a CUD scorer's anchors were fitted on: its `anchor_fit_ids`, else the
    `fit_ids` of its `anchors` file; `None` when neither can be read."""
    if isinstance(config.get("anchor_fit_ids"), list):
        return [str(i) for i in config["anchor_fit_ids"]]
    path = config.get("anchors")
    if isinstance(path, str) and Path(path).exists():
        try:
            return read_anchors(path).fit_ids
        except DataError:
            return None
    return None


def scored_candidates(run_dir: str | Path) -> list[ScoredCandidate]:
    """The `cud*` scorers of the run's `scores.parquet` (none without it), with the fit samples
    of their anchors as far as the run's scorer configs tell."""
    run_dir = Path(run_dir)
    if not (run_dir / SCORES_FILE).is_file():
        return []
    scores = read_scores(run_dir / SCORES_FILE)
    configs = read_scorer_configs(run_dir)
    out = []
    for name in dict.fromkeys(scores["scorer"]):
        config = configs.get(str(name), {})
        if not uses_anchors(str(name), config):
            continue
        rows = scores[scores["scorer"] == name]
        out.append(ScoredCandidate(str(name), rows.set_index("sample_id")["difficulty"],
                                   _anchor_fit_ids(config), config))
    return out


def criterion_sentence(table: pd.DataFrame) -> str:
    """One sentence giving `criterion_check` of a choice table."""
    check = criterion_check(table)
    return (f"Criterion check (held-out figures computed after the choice): over "
            f"{check['n']} candidates, Spearman(cross-fitted fit score, held-out Spearman) = "
            f"{check['cv_vs_held_out']:.3f}; for comparison, Spearman(in-sample fit score, "
            f"held-out Spearman) = {check['in_sample_vs_held_out']:.3f} over "
            f"{check['n_in_sample']}. Candidates share circuits and anchors, so they are not "
            "independent.")


def cud_choice_markdown(table: pd.DataFrame, header: Sequence[str]) -> str:
    """`header` lines, the chosen configuration's line (with its held-out figures), the
    criterion check, then every candidate by cross-fitted fit score."""
    chosen = table[table["chosen"]].iloc[0]
    line = (f"Chosen: {chosen['candidate']} (cross-fitted fit-half Spearman "
            f"{chosen['fit_cv_spearman']:.3f}, n={int(chosen['fit_n'])}; in-sample "
            f"{chosen['fit_in_sample_spearman']:.3f}); held-out Spearman "
            f"{chosen['held_out_spearman']:.3f} [{chosen['held_out_low']:.3f}, "
            f"{chosen['held_out_high']:.3f}], n={int(chosen['held_out_n'])}.")
    ordered = table.sort_values("fit_cv_spearman", ascending=False, kind="mergesort",
                                na_position="last")
    shown = ordered.drop(columns=["held_out_low", "held_out_high"])
    return "\n".join([*header, "", line, "", criterion_sentence(table), "",
                      to_markdown(shown, floatfmt=".3f")])


def write_cud_choice(run_dir: str | Path, *, top_n: Sequence[float] = TOP_N,
                     vectors: Sequence[str] = VECTORS,
                     similarities: Sequence[str] = SIMILARITIES,
                     anchor_methods: Sequence[str] | None = None,
                     vote_methods: Sequence[str] | None = None, target: str = MEAN_METHOD,
                     include_scored: bool = True, k: int | None = None,
                     fit_fraction: float = 0.5, split_seed: int = 0, folds: int = FOLDS,
                     fold_seed: int = 0, n_boot: int = 1000, seed: int = 0,
                     out_dir: str | Path | None = None) -> pd.DataFrame:
    """Choose a CUD configuration on the fit half of a run folder and write
    `validation/cud_choice.csv`, `.md` and `validation/cud_choice/config.json` (with the
    folds) under `out_dir` (default `run_dir`).

    Candidates: `candidate_grid(top_n, vectors, similarities, anchor_methods)` over the run's
    circuit store (`anchor_methods` default: `combined`, `mean` and each voting method), plus,
    with `include_scored`, the `cud*` scorers of `scores.parquet`. Voting methods: `vote_methods`,
    else the `options.methods` of `anchors/anchors.json` that have outcomes, else every method.
    The split and `k` as in `cross_method.write_cross_method`; the cross-fitting folds:
    `fit_folds(folds, fold_seed)`. Returns the table.
    """
    run_dir = Path(run_dir)
    outcomes = read_run_outcomes(run_dir)
    store = open_run_store(run_dir)
    first = next(iter(next(iter(outcomes.values())).values()))
    halves = run_halves(run_dir, [i for i in first["sample_id"].astype(str) if i in store],
                        k=k, fit_fraction=fit_fraction, seed=split_seed)
    if vote_methods is None:
        anchors_path = anchors_file(run_dir)
        listed = (read_anchors(anchors_path).options.get("methods")
                  if anchors_path.is_file() else None) or []
        vote_methods = [m for m in listed if m in outcomes] or list(outcomes)
    if anchor_methods is None:
        anchor_methods = [*ANCHOR_METHODS, *vote_methods]
    candidates = candidate_grid(top_n, vectors, similarities, anchor_methods)
    scored = scored_candidates(run_dir) if include_scored else []
    wanted = [i for i in [*halves.fit_ids, *halves.held_out_ids] if i in store]
    choice = choose_cud(outcomes, StoreCud(store, wanted), halves, candidates, scored=scored,
                        vote_methods=vote_methods, target=target, folds=folds,
                        fold_seed=fold_seed, n_boot=n_boot, seed=seed)
    table = choice.table
    folder = Path(out_dir or run_dir) / VALIDATION_DIR
    write_config(folder / "cud_choice", "validate cud-choice", {
        "top_n": list(top_n), "vectors": list(vectors), "similarities": list(similarities),
        "anchor_methods": list(anchor_methods), "vote_methods": list(vote_methods),
        "target": target, "k": halves.k, "split": halves.source,
        "fit_ids": halves.fit_ids, "held_out_ids": halves.held_out_ids,
        "folds": folds, "fold_seed": fold_seed, "fold_ids": choice.folds,
        "fold_k": choice.fold_k, "criterion_check": criterion_check(table),
        "seeds": {m: sorted(s) for m, s in outcomes.items()}, "store": str(store.directory),
        "scored_candidates": [c.name for c in scored], "n_boot": n_boot, "seed": seed})
    sizes = sorted({len(f) for f in choice.folds})
    header = [
        f"{len(table)} candidate CUD configurations ({len(candidates)} from the circuit store "
        f"{store.directory.name}/: top_n {', '.join(f'{n:g}' for n in top_n)} x vector "
        f"{', '.join(vectors)} x similarity {', '.join(similarities)} x anchors "
        f"{', '.join(anchor_methods)}; {len(scored)} CUD scorer(s) of scores.parquet).",
        f"Chosen on the fit half only (the {len(halves.fit_ids)} fit samples of "
        f"{halves.source}), by a cross-fitted score: {len(choice.folds)} folds of "
        f"{'-'.join(map(str, sizes))} samples (seed {fold_seed}); for each fold, anchors "
        f"(k={choice.fold_k}, k={halves.k} scaled to the other folds' samples) voted on the "
        f"other folds from {', '.join(vote_methods)}, Spearman of CUD with measured "
        f"difficulty '{target}' (seed means) on the fold; the mean over folds. No sample's "
        "score comes from anchors voted on its own outcome. fit_in_sample_spearman (anchors "
        f"voted on the whole fit half with k={halves.k}, scored on the same samples) is shown "
        "for comparison only.",
        f"Reported on the {len(halves.held_out_ids)} held-out samples, read only after the "
        f"choice, with anchors (k={halves.k}) voted on the whole fit half (bootstrap interval "
        f"over samples, {n_boot} resamples).",
    ]
    write_table(table, folder / CUD_CHOICE_FILE, markdown=cud_choice_markdown(table, header))
    return table

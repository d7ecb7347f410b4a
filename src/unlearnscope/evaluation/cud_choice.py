"""Choosing a CUD configuration without peeking (DESIGN 5.9: samples used to choose a
configuration never enter the statistics that report it).

Candidates: every combination of circuit size (`top_n`), circuit vector (binary, weighted),
similarity (cosine, Jaccard, Hamming) and anchor method (`combined`, `mean`, or one method's
vote lists), computed from the run's circuit store (`anchored_cud.StoreCud`); plus every CUD
scorer already in the run's `scores.parquet` (for instance another preset, computed from its
own circuits) whose anchors were provably voted inside the fit half.

The choice reads the fit half only: anchors are voted on the fit half's outcomes, and each
candidate's score is the Spearman of its CUD with the measured difficulty of the fit-half
samples (`target`: `mean`, the average over methods of each method's rank of its seed-mean
-efficacy, or one method). Voting anchors and choosing a configuration on the same samples is
legitimate: both are choices made before validation, and the held-out half is read only after
the choice, to report the chosen configuration (Spearman with a bootstrap interval). Fit-half
scores are in-sample for the anchors (anchor samples are among the scored ones), so they
flatter every candidate; only the held-out figure estimates the chosen one's validity.
Ties on the fit half go to the first candidate in order (store candidates first).
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
from unlearnscope.evaluation.experiments import to_markdown
from unlearnscope.evaluation.validation import (
    MEAN_METHOD,
    bootstrap_spearman_interval,
    measured_difficulty,
    read_scores,
)
from unlearnscope.runs import read_json, write_config, write_text
from unlearnscope.scoring.cud import SIMILARITIES, VECTORS

CHOICE_COLUMNS = ["candidate", "source", "top_n", "vector", "similarity", "anchor_method",
                  "fit_spearman", "fit_n", "chosen", "held_out_spearman", "held_out_low",
                  "held_out_high", "held_out_n", "note"]
TOP_N = (0.02, 0.05, 0.1)
STORE_SOURCE, SCORES_SOURCE = "circuit store", "scores.parquet"
CSV_FILE, MD_FILE = "cud_choice.csv", "cud_choice.md"


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


def candidate_grid(top_n: Sequence[float] = TOP_N, vectors: Sequence[str] = VECTORS,
                   similarities: Sequence[str] = SIMILARITIES,
                   anchor_methods: Sequence[str] = ANCHOR_METHODS) -> list[CudConfig]:
    """Every combination, in the order top_n, vector, similarity, anchor method."""
    return [CudConfig(float(n), v, s, a) for n, v, s, a in
            itertools.product(top_n, vectors, similarities, anchor_methods)]


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


def choose_cud(outcomes: SeedOutcomes, cud: StoreCud, halves: Halves,
               candidates: Sequence[CudConfig], *, scored: Sequence[ScoredCandidate] = (),
               vote_methods: Sequence[str] | None = None, target: str = MEAN_METHOD,
               n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """`CHOICE_COLUMNS`, one row per candidate (store candidates, then `scored`): its fit-half
    Spearman, `chosen` (the highest), and for the chosen row only, the held-out Spearman with
    its bootstrap interval.

    `outcomes`: `{method: {seed: outcome table}}`, each method entering as its seed mean;
    anchors are voted from `vote_methods` (default: all). A scored candidate whose anchors'
    fit samples are unknown or reach outside the fit half is listed with a note and never
    chosen. Raises `DataError` when no candidate ranks the fit half.
    """
    tables = {m: seed_mean(seeds) for m, seeds in outcomes.items()}
    voters = {m: tables[m] for m in (vote_methods or list(tables))}
    fit_truth = _truth(tables, halves.fit_ids, target)
    fit_ids = [i for i in fit_truth.index if i in cud.position]
    anchor_sets = {}
    rows = []
    for config in candidates:
        if config.anchor_method not in anchor_sets:
            anchor_sets[config.anchor_method] = vote_sets(voters, halves.fit_ids, halves.k,
                                                          config.anchor_method)
        x = cud.values(anchor_sets[config.anchor_method], fit_ids, top_n=config.top_n,
                       vector=config.vector, similarity=config.similarity)
        rows.append({"candidate": config.label, "source": STORE_SOURCE, "top_n": config.top_n,
                     "vector": config.vector, "similarity": config.similarity,
                     "anchor_method": config.anchor_method,
                     "fit_spearman": _spearman(x, fit_truth.loc[fit_ids].to_numpy()),
                     "fit_n": len(fit_ids), "note": ""})
    fit_set = set(halves.fit_ids)
    for candidate in scored:
        row = {"candidate": candidate.name, "source": SCORES_SOURCE,
               **{key: candidate.config.get(key) for key in
                  ("top_n", "vector", "similarity", "anchor_method")},
               "fit_spearman": float("nan"), "fit_n": 0, "note": ""}
        if candidate.fit_ids is None:
            row["note"] = ("not a candidate: the samples its anchors were fitted on are unknown "
                           "(no anchor_fit_ids or readable anchors file in its scorer config)")
        elif outside := sorted(set(candidate.fit_ids) - fit_set):
            row["note"] = (f"not a candidate: its anchors were fitted on {len(outside)} "
                           "sample(s) outside the fit half")
        else:
            pair = pd.concat([candidate.difficulty.rename("x"), fit_truth.rename("y")], axis=1,
                             join="inner").dropna()
            row["fit_spearman"] = _spearman(pair["x"].to_numpy(), pair["y"].to_numpy())
            row["fit_n"] = len(pair)
        rows.append(row)
    table = pd.DataFrame(rows, columns=CHOICE_COLUMNS).assign(chosen=False)
    finite = table["fit_spearman"].to_numpy(np.float64)
    if not np.isfinite(finite).any():
        raise DataError("no candidate CUD configuration ranks the fit half (constant CUD or "
                        "measured difficulty)", field="fit_ids")
    best = int(np.nanargmax(finite))
    table.loc[best, "chosen"] = True
    held_truth = _truth(tables, halves.held_out_ids, target)
    if best < len(candidates):
        config = candidates[best]
        held_ids = [i for i in held_truth.index if i in cud.position]
        x = pd.Series(cud.values(anchor_sets[config.anchor_method], held_ids,
                                 top_n=config.top_n, vector=config.vector,
                                 similarity=config.similarity), index=held_ids)
    else:
        x = scored[best - len(candidates)].difficulty
    pair = pd.concat([x.rename("x"), held_truth.rename("y")], axis=1, join="inner").dropna()
    rho = _spearman(pair["x"].to_numpy(), pair["y"].to_numpy())
    low, high = (bootstrap_spearman_interval(pair["x"].to_numpy(), pair["y"].to_numpy(),
                                             n_boot=n_boot, seed=seed)
                 if np.isfinite(rho) else (float("nan"), float("nan")))
    table.loc[best, ["held_out_spearman", "held_out_low", "held_out_high", "held_out_n"]] = [
        rho, low, high, len(pair)]
    return table


def _scorer_configs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """`{scorer name: config}` from the run's `scorers.json`, else from the `scorer_configs`
    list of its `config.json` (written by `unlearnscope score`); `{}` when neither has them."""
    if (run_dir / "scorers.json").is_file():
        return {str(k): v for k, v in read_json(run_dir / "scorers.json").items()
                if isinstance(v, dict)}
    if (run_dir / "config.json").is_file():
        listed = (read_json(run_dir / "config.json").get("options") or {}).get("scorer_configs")
        return {str(c["name"]): c for c in listed or [] if isinstance(c, dict) and "name" in c}
    return {}


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
    if not (run_dir / "scores.parquet").is_file():
        return []
    scores = read_scores(run_dir / "scores.parquet")
    configs = _scorer_configs(run_dir)
    out = []
    for name in dict.fromkeys(scores["scorer"]):
        if not str(name).startswith("cud"):
            continue
        rows = scores[scores["scorer"] == name]
        config = configs.get(str(name), {})
        out.append(ScoredCandidate(str(name), rows.set_index("sample_id")["difficulty"],
                                   _anchor_fit_ids(config), config))
    return out


def cud_choice_markdown(table: pd.DataFrame, header: Sequence[str]) -> str:
    """`header` lines, the chosen configuration's line (with its held-out figures), then every
    candidate by fit score."""
    chosen = table[table["chosen"]].iloc[0]
    line = (f"Chosen: {chosen['candidate']} (fit-half Spearman {chosen['fit_spearman']:.3f}, "
            f"n={chosen['fit_n']}); held-out Spearman {chosen['held_out_spearman']:.3f} "
            f"[{chosen['held_out_low']:.3f}, {chosen['held_out_high']:.3f}], "
            f"n={int(chosen['held_out_n'])}.")
    ordered = table.sort_values("fit_spearman", ascending=False, kind="mergesort",
                                na_position="last")
    shown = ordered.drop(columns=["held_out_spearman", "held_out_low", "held_out_high",
                                  "held_out_n"])
    return "\n".join([*header, "", line, "", to_markdown(shown, floatfmt=".3f")])


def write_cud_choice(run_dir: str | Path, *, top_n: Sequence[float] = TOP_N,
                     vectors: Sequence[str] = VECTORS,
                     similarities: Sequence[str] = SIMILARITIES,
                     anchor_methods: Sequence[str] | None = None,
                     vote_methods: Sequence[str] | None = None, target: str = MEAN_METHOD,
                     include_scored: bool = True, k: int | None = None,
                     fit_fraction: float = 0.5, split_seed: int = 0, n_boot: int = 1000,
                     seed: int = 0, out_dir: str | Path | None = None) -> pd.DataFrame:
    """Choose a CUD configuration on the fit half of a run folder and write
    `validation/cud_choice.csv`, `.md` and `validation/cud_choice/config.json` under `out_dir`
    (default `run_dir`).

    Candidates: `candidate_grid(top_n, vectors, similarities, anchor_methods)` over the run's
    circuit store (`anchor_methods` default: `combined`, `mean` and each voting method), plus,
    with `include_scored`, the `cud*` scorers of `scores.parquet`. Voting methods: `vote_methods`,
    else the `options.methods` of `anchors/anchors.json` that have outcomes, else every method.
    The split and `k` as in `cross_method.write_cross_method`. Returns the table.
    """
    run_dir = Path(run_dir)
    outcomes = read_run_outcomes(run_dir)
    store = open_run_store(run_dir)
    first = next(iter(next(iter(outcomes.values())).values()))
    halves = run_halves(run_dir, [i for i in first["sample_id"].astype(str) if i in store],
                        k=k, fit_fraction=fit_fraction, seed=split_seed)
    if vote_methods is None:
        anchors_file = run_dir / "anchors" / "anchors.json"
        listed = (read_anchors(anchors_file).options.get("methods")
                  if anchors_file.is_file() else None) or []
        vote_methods = [m for m in listed if m in outcomes] or list(outcomes)
    if anchor_methods is None:
        anchor_methods = [*ANCHOR_METHODS, *vote_methods]
    candidates = candidate_grid(top_n, vectors, similarities, anchor_methods)
    scored = scored_candidates(run_dir) if include_scored else []
    wanted = [i for i in [*halves.fit_ids, *halves.held_out_ids] if i in store]
    table = choose_cud(outcomes, StoreCud(store, wanted), halves, candidates, scored=scored,
                       vote_methods=vote_methods, target=target, n_boot=n_boot, seed=seed)
    folder = Path(out_dir or run_dir) / "validation"
    write_config(folder / "cud_choice", "validate cud-choice", {
        "top_n": list(top_n), "vectors": list(vectors), "similarities": list(similarities),
        "anchor_methods": list(anchor_methods), "vote_methods": list(vote_methods),
        "target": target, "k": halves.k, "split": halves.source,
        "fit_ids": halves.fit_ids, "held_out_ids": halves.held_out_ids,
        "seeds": {m: sorted(s) for m, s in outcomes.items()}, "store": str(store.directory),
        "scored_candidates": [c.name for c in scored], "n_boot": n_boot, "seed": seed})
    header = [
        f"{len(table)} candidate CUD configurations ({len(candidates)} from the circuit store "
        f"{store.directory.name}/: top_n {', '.join(f'{n:g}' for n in top_n)} x vector "
        f"{', '.join(vectors)} x similarity {', '.join(similarities)} x anchors "
        f"{', '.join(anchor_methods)}; {len(scored)} CUD scorer(s) of scores.parquet).",
        f"Chosen on the fit half only: the {len(halves.fit_ids)} fit samples of "
        f"{halves.source}; anchors (k={halves.k}) voted there from "
        f"{', '.join(vote_methods)}; score: Spearman of CUD with measured difficulty "
        f"'{target}' (seed means) on those samples.",
        f"Reported on the {len(halves.held_out_ids)} held-out samples, read only after the "
        f"choice (bootstrap interval over samples, {n_boot} resamples).",
    ]
    write_text(folder / CSV_FILE, table.to_csv(index=False))
    write_text(folder / MD_FILE, cud_choice_markdown(table, header))
    return table

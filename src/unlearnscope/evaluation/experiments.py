"""Experiments that test a difficulty metric by unlearning: easy/hard sets and schedules.

- **Easy/hard sets** (the CUD paper's experiment): for each scorer, select the k easiest and the
  k hardest samples by its difficulty, unlearn each set alone from the target model with each
  method, and compare the set's mean efficacy (x100) with k random samples (several seeds).
  A metric that predicts difficulty gives hard sets below random and easy sets above. Each
  delta carries the random sets' spread and two permutation p-values (`easy_hard_sets`).
- **Schedules**: at the same step budget, compare uniform sampling with MRD-weighted sampling
  and easy-to-hard / hard-to-easy curricula: efficacy, forget quality, model utility and the
  steps until a target mean efficacy is reached.

Every arm's row says how many forget slots its run drew (steps x global batch, equal for the
arms of one experiment) and how many distinct samples those slots reached.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from unlearnscope.data.sample import Sample
from unlearnscope.errors import DataError
from unlearnscope.evaluation.tofu import RetainReference, evaluate_tofu, retain_reference
from unlearnscope.layout import SCHEDULE_COLUMNS, SET_COLUMNS
from unlearnscope.models.generation import DEFAULT_MAX_NEW_TOKENS
from unlearnscope.progress import progress_bar
from unlearnscope.runs import write_text
from unlearnscope.unlearning.trainer import run_unlearning

PERMUTATIONS = 10_000
DEFAULT_SCHEDULES = (("uniform", None), ("weighted", "mrd"), ("easy-to-hard", "cud"),
                     ("hard-to-easy", "cud"), ("easy-to-hard", "mrd"), ("hard-to-easy", "mrd"))


def method_settings(settings: dict, per_method: dict, method: str) -> dict:
    """The run settings of `method`: `settings` with its `per_method[method]` overrides."""
    return {**settings, **per_method.get(method, {})}


@dataclass
class CachedUnlearning:
    """Unlearns a sample set from a fresh copy of the target model, with fixed settings.

    `per_method` overrides `settings` for one method (e.g. `{"simnpo": {"lr": 2e-3}}`).
    Outcomes are cached by (method, sample ids, schedule, scorer), so scorers that pick the
    same set share one run; the cache drops the unlearned model, which only the first call
    returns.
    """

    target: object
    tokenizer: object
    retain: Sequence[Sample]
    settings: dict
    per_method: dict = field(default_factory=dict)

    def settings_for(self, method: str) -> dict:
        """The run settings of `method` (`method_settings`)."""
        return method_settings(self.settings, self.per_method, method)

    def __post_init__(self) -> None:
        self._cache: dict[tuple, object] = {}

    def run(self, samples: Sequence[Sample], method: str, *, schedule: str = "uniform",
            difficulty: pd.DataFrame | None = None, scorer: str | None = None, **extra):
        key = (method, tuple(s.id for s in samples), schedule, scorer,
               tuple(sorted(extra.items())))
        if key in self._cache:
            return self._cache[key]
        model = copy.deepcopy(self.target)
        result = run_unlearning(
            model, self.tokenizer, list(samples), list(self.retain), method, save=False,
            schedule=schedule, difficulty=difficulty, scorer=scorer,
            **{**self.settings_for(method), **extra})
        self._cache[key] = dataclasses.replace(result, model=None)
        return result


def select_sets(scores: pd.DataFrame, scorer: str, k: int,
                eligible_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """(easiest k, hardest k) sample ids by `difficulty`; ties broken by sample id."""
    table = scores[(scores.scorer == scorer) & scores.sample_id.isin(set(eligible_ids))]
    if len(table) < 2 * k:
        raise ValueError(f"scorer '{scorer}' has {len(table)} eligible samples, fewer than "
                         f"2k = {2 * k}")
    ordered = table.sort_values(["difficulty", "sample_id"], kind="mergesort")
    return list(ordered.sample_id[:k]), list(ordered.sample_id[-k:])


def permutation_p_value(chosen: np.ndarray, reference: np.ndarray, *,
                        permutations: int = PERMUTATIONS, seed: int = 0) -> float:
    """Two-sided permutation p-value of the difference of means `mean(chosen) -
    mean(reference)` (`chosen [k]`, `reference [m]`).

    The k + m values are pooled and k of them relabelled as chosen. When the C(k + m, k)
    relabellings number at most `permutations`, all are enumerated and p = #{|D*| >= |D|} /
    C(k + m, k) (the observed labelling is one of them); otherwise `permutations` uniformly
    random relabellings (seeded) give p = (1 + #{|D*| >= |D|}) / (1 + permutations).
    """
    chosen = np.asarray(chosen, dtype=np.float64)
    pooled = np.concatenate([chosen, np.asarray(reference, dtype=np.float64)])
    k, size = len(chosen), len(pooled)
    if k == 0 or k == size:
        raise ValueError("a permutation test needs values on both sides")
    total = pooled.sum()

    def difference(sums: np.ndarray) -> np.ndarray:
        return sums / k - (total - sums) / (size - k)

    observed = abs(float(difference(np.array(chosen.sum()))))
    threshold = observed - 1e-9 * max(1.0, observed)  # ties in floating point count as >=
    if math.comb(size, k) <= permutations:
        sums = pooled[np.array(list(combinations(range(size), k)))].sum(axis=1)
        return float(np.mean(np.abs(difference(sums)) >= threshold))
    rng = np.random.default_rng(seed)
    extreme, left = 0, permutations
    while left:
        batch = min(left, 1000)
        picks = rng.random((batch, size)).argsort(axis=1)[:, :k]
        extreme += int((np.abs(difference(pooled[picks].sum(axis=1))) >= threshold).sum())
        left -= batch
    return (1 + extreme) / (1 + permutations)


def set_rank_p_value(chosen: float, random: np.ndarray) -> float:
    """Two-sided rank p-value of one set's efficacy among `random [m]` random sets' ones.

    With values v = (chosen, *random) and S_i = |v_i - mean(v)|, p = #{i : S_i >= S_0} /
    (m + 1). Exact when the chosen set is exchangeable with the random ones (the scorer picks
    like a random draw), however the samples of one run depend on each other; it cannot go
    below 1 / (m + 1).
    """
    values = np.concatenate([[float(chosen)], np.asarray(random, dtype=np.float64)])
    spread = np.abs(values - values.mean())
    return float(np.mean(spread >= spread[0] - 1e-9 * max(1.0, spread[0])))


@dataclass
class _SetRun:
    """One unlearning run of a sample set: per-sample efficacy x 100 `[k]` (in the set's id
    order), the forget slots it drew and the distinct samples they reached."""

    efficacy: np.ndarray
    forget_slots: int
    distinct: int


def _set_run(result, ids: Sequence[str]) -> _SetRun:
    by_id = result.outcomes.set_index("sample_id")["efficacy"]
    return _SetRun(100.0 * by_id.loc[list(ids)].to_numpy(dtype=np.float64),
                   int(result.summary["forget_slots"]),
                   int(result.summary["distinct_forget_samples_drawn"]))


def _over_methods(runs: Sequence[_SetRun]) -> _SetRun:
    """The method-averaged run of one set: per-sample efficacy averaged over methods, the
    smallest slot and distinct-sample counts."""
    return _SetRun(np.mean([r.efficacy for r in runs], axis=0),
                   min(r.forget_slots for r in runs), min(r.distinct for r in runs))


def _set_rows(method: str, k: int, random: Sequence[_SetRun],
              chosen: dict[str, tuple[_SetRun, _SetRun]], permutations: int) -> list[tuple]:
    """The `SET_COLUMNS` rows of one method (or of the method average): the random row, then
    each scorer's easy and hard rows."""
    set_means = np.array([r.efficacy.mean() for r in random])
    baseline = float(set_means.mean())
    spread = (float(np.std(set_means, ddof=1)) if len(random) > 1 else float("nan"),
              float(set_means.min()), float(set_means.max()), len(random))
    pooled = np.concatenate([r.efficacy for r in random])
    rows = [("random", method, "random", k, baseline, 0.0, *spread, float("nan"),
             float("nan"), min(r.forget_slots for r in random), min(r.distinct for r in random))]
    for name, pair in chosen.items():
        for label, run in zip(("easy", "hard"), pair, strict=True):
            value = float(run.efficacy.mean())
            rows.append((name, method, label, k, value, value - baseline, *spread,
                         permutation_p_value(run.efficacy, pooled, permutations=permutations),
                         set_rank_p_value(value, set_means), run.forget_slots, run.distinct))
    return rows


def easy_hard_sets(unlearner: CachedUnlearning, forget: Sequence[Sample], scores: pd.DataFrame, *,
                   scorers: Sequence[str], methods: Sequence[str], k: int,
                   random_seeds: Sequence[int] = (0, 1, 2),
                   eligible_ids: Sequence[str] | None = None,
                   permutations: int = PERMUTATIONS) -> pd.DataFrame:
    """The easy/hard set table (`SET_COLUMNS`); method `mean` averages over methods.

    `efficacy` is the set's mean per-sample efficacy x 100; `delta_vs_random` subtracts the mean
    over the `random_seeds` random k-sets drawn from the same eligible samples (the same sets
    for every method). Uncertainty of each delta:

    - `random_std` (ddof 1; NaN with one random set), `random_min`, `random_max`: the spread of
      the random sets' efficacies, `n_random` of them;
    - `p_value`: sample-level permutation test (`permutation_p_value`), two-sided on the
      difference of means, of the set's k per-sample efficacies against the pooled per-sample
      efficacies of the random sets' runs (k x `n_random` values). Its null hypothesis is that
      the set's samples fare like random samples of the pool, each sample's efficacy taken as
      one draw; it has resolution with few random sets, but it ignores that the samples of one
      run share that run (a whole run doing better or worse makes it too small).
    - `p_value_sets`: set-level rank test (`set_rank_p_value`) of the set's efficacy among the
      random sets' ones: exact whatever the dependence within a run, but never below 1 /
      (`n_random` + 1) (19 random sets are needed to reach 0.05).

    The `random` rows carry the spread and NaN p-values. `forget_slots` and
    `distinct_samples_drawn` are the run's (for `random`, the smallest over its sets).
    The `mean` rows apply the same definitions to the per-sample efficacies averaged over
    methods (each set is unlearned by every method, so a sample's method-averaged efficacy is
    well defined): their efficacy and delta are the means of the methods' ones, their spread
    is that of the random sets' method-averaged efficacies, and their p-values test the
    method-averaged effect. Their slot and distinct-sample counts are the smallest over
    methods.
    """
    by_id = {s.id: s for s in forget}
    eligible = list(eligible_ids) if eligible_ids is not None else list(by_id)
    random_sets = []
    for seed in random_seeds:
        order = np.random.default_rng(seed).permutation(len(eligible))
        random_sets.append(sorted(eligible[i] for i in order[:k]))
    if not random_sets or not methods:
        raise ValueError("the easy/hard set experiment needs at least one random set and one "
                         "method")
    chosen = {name: select_sets(scores, name, k, eligible) for name in scorers}
    runs = [(m, "random", ids) for m in methods for ids in random_sets]
    runs += [(m, name, ids) for m in methods for name in scorers for ids in chosen[name]]
    done: dict[tuple[str, tuple[str, ...]], _SetRun] = {}
    for method, _, ids in progress_bar(runs, desc="easy/hard sets", unit="run"):
        done[(method, tuple(ids))] = _set_run(unlearner.run([by_id[i] for i in ids], method),
                                              ids)

    def rows_for(method: str, run_of: Callable[[Sequence[str]], _SetRun]) -> list[tuple]:
        return _set_rows(method, k, [run_of(ids) for ids in random_sets],
                         {name: (run_of(easy), run_of(hard))
                          for name, (easy, hard) in chosen.items()}, permutations)

    rows = []
    for method in methods:
        rows += rows_for(method, lambda ids, method=method: done[(method, tuple(ids))])
    rows += rows_for("mean", lambda ids: _over_methods([done[(m, tuple(ids))]
                                                        for m in methods]))
    return pd.DataFrame(rows, columns=SET_COLUMNS)


def steps_to_target(trajectory: pd.DataFrame, target_efficacy: float) -> float:
    """First tracked step where the mean efficacy (1 - p_t / p_0, clipped to [0, 1]) reaches
    `target_efficacy`; NaN if never within the run."""
    start = trajectory[trajectory.step == 0].set_index("sample_id").prob
    for step, group in trajectory[trajectory.step > 0].groupby("step", sort=True):
        ratio = group.set_index("sample_id").prob / start.loc[group.sample_id].to_numpy()
        if float(np.clip(1.0 - ratio, 0.0, 1.0).mean()) >= target_efficacy:
            return float(step)
    return float("nan")


def schedule_comparison(unlearner: CachedUnlearning, forget: Sequence[Sample], scores: pd.DataFrame,
                        *, methods: Sequence[str], budget_steps: int, target_efficacy: float,
                        evaluate: Callable[[object], tuple[float | None, float | None]]
                        | None,
                        schedules: Sequence[tuple[str, str | None]] = DEFAULT_SCHEDULES,
                        track_every: int = 1) -> pd.DataFrame:
    """The schedule table (`SCHEDULE_COLUMNS`), all runs at `budget_steps` optimizer steps, so
    every arm draws the same `forget_slots`; `distinct_samples_drawn` is how many forget samples
    each arm's slots reached (all of them for uniform and curricula once the slots are at least
    the forget set's size; weighted sampling draws with replacement and may miss some).

    `evaluate(model) -> (forget_quality, model_utility)` scores each unlearned model (e.g.
    `ScheduleMetrics`); None leaves both empty.
    Schedules whose scorer is missing from `scores` are skipped.
    """
    if track_every < 1:
        raise DataError(f"track_every must be at least 1 step, got {track_every}",
                        field="track_every")
    available = set(scores.scorer)
    runnable = [(s, name) for s, name in schedules if name is None or name in available]
    rows = []
    for method in methods:
        for schedule, scorer in progress_bar(runnable, desc=f"schedules {method}", unit="run"):
            result = unlearner.run(forget, method, schedule=schedule,
                                   difficulty=scores if scorer else None, scorer=scorer,
                                   max_steps=budget_steps, track_every=track_every)
            quality, utility = (None, None) if evaluate is None else evaluate(result.model)
            rows.append((method, schedule, scorer or "-", result.summary["forget_slots"],
                         result.summary["distinct_forget_samples_drawn"],
                         100.0 * float(result.outcomes.efficacy.mean()), quality, utility,
                         steps_to_target(result.trajectory, target_efficacy)))
    return pd.DataFrame(rows, columns=SCHEDULE_COLUMNS)


class ScheduleMetrics:
    """`schedule_comparison`'s `evaluate`: `(forget_quality, model_utility)` of an unlearned
    model from the TOFU evaluation on `forget` and `retain` (greedy answers of at most
    `max_new_tokens`, no membership attacks), forget quality against the forget truth ratios
    of the retain model that `load_retain() -> (model, tokenizer)` gives, evaluated once, on
    first use (`reference`), and then released."""

    def __init__(self, tokenizer, forget: Sequence[Sample], retain: Sequence[Sample],
                 load_retain: Callable[[], tuple[object, object]], *,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> None:
        self.tokenizer = tokenizer
        self.forget = forget
        self.retain = retain
        self.max_new_tokens = max_new_tokens
        self._load_retain = load_retain
        self._reference: RetainReference | None = None

    def reference(self) -> RetainReference:
        """The retain model's per-sample forget truth ratios (computed on the first call)."""
        if self._reference is None:
            model, tokenizer = self._load_retain()
            self._reference = retain_reference(model, tokenizer, forget=self.forget)
        return self._reference

    def __call__(self, model) -> tuple[float | None, float | None]:
        metrics = evaluate_tofu(model, self.tokenizer, forget=self.forget, retain=self.retain,
                                retain_truth_ratios=self.reference().truth_ratios,
                                max_new_tokens=self.max_new_tokens, gradnorm=False)["metrics"]
        return metrics["forget_quality"], metrics["model_utility"]


def to_markdown(table: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub markdown table (no extra dependency)."""
    def cell(value) -> str:
        if isinstance(value, float):
            return "nan" if np.isnan(value) else format(value, floatfmt)
        return str(value)

    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join([header, rule, *body]) + "\n"


def write_table(table: pd.DataFrame, csv_path: str | Path, *, markdown: str | None = None
                ) -> None:
    """`table` as CSV (no index) at `csv_path` and as markdown beside it (`.md`): `markdown`
    when given (a table with its header lines), else `to_markdown(table)`; each written
    atomically."""
    write_text(csv_path, table.to_csv(index=False))
    write_text(Path(csv_path).with_suffix(".md"),
               to_markdown(table) if markdown is None else markdown)

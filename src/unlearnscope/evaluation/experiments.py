"""Experiments that test a difficulty metric by unlearning: easy/hard sets and schedules.

- **Easy/hard sets** (the CUD paper's experiment): for each scorer, select the k easiest and the
  k hardest samples by its difficulty, unlearn each set alone from the target model with each
  method, and compare the set's mean efficacy (x100) with k random samples (several seeds).
  A metric that predicts difficulty gives hard sets below random and easy sets above.
- **Schedules**: at the same step budget, compare uniform sampling with MRD-weighted sampling
  and easy-to-hard / hard-to-easy curricula: efficacy, forget quality, model utility and the
  steps until a target mean efficacy is reached.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from unlearnscope.data.sample import Sample
from unlearnscope.progress import progress_bar
from unlearnscope.unlearning.trainer import run_unlearning

SET_COLUMNS = ["scorer", "method", "set", "k", "efficacy", "delta_vs_random"]
SCHEDULE_COLUMNS = ["method", "schedule", "scorer", "efficacy", "forget_quality",
                    "model_utility", "steps_to_target"]
DEFAULT_SCHEDULES = (("uniform", None), ("weighted", "mrd"), ("easy-to-hard", "cud"),
                     ("hard-to-easy", "cud"), ("easy-to-hard", "mrd"), ("hard-to-easy", "mrd"))


@dataclass
class Unlearner:
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
        """The run settings of `method`: `settings` with its `per_method` overrides."""
        return {**self.settings, **self.per_method.get(method, {})}

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


def easy_hard_sets(unlearner: Unlearner, forget: Sequence[Sample], scores: pd.DataFrame, *,
                   scorers: Sequence[str], methods: Sequence[str], k: int,
                   random_seeds: Sequence[int] = (0, 1, 2),
                   eligible_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The easy/hard set table (`SET_COLUMNS`); method `mean` averages over methods.

    `efficacy` is the set's mean per-sample efficacy x 100; `delta_vs_random` subtracts the mean
    over `random_seeds` of random k-sets drawn from the same eligible samples.
    """
    by_id = {s.id: s for s in forget}
    eligible = list(eligible_ids) if eligible_ids is not None else list(by_id)
    random_sets = []
    for seed in random_seeds:
        order = np.random.default_rng(seed).permutation(len(eligible))
        random_sets.append(sorted(eligible[i] for i in order[:k]))
    chosen = {name: select_sets(scores, name, k, eligible) for name in scorers}
    runs = [(m, "random", ids) for m in methods for ids in random_sets]
    runs += [(m, name, ids) for m in methods for name in scorers for ids in chosen[name]]
    efficacy: dict[tuple[str, tuple[str, ...]], float] = {}
    for method, _, ids in progress_bar(runs, desc="easy/hard sets", unit="run"):
        result = unlearner.run([by_id[i] for i in ids], method)
        efficacy[(method, tuple(ids))] = 100.0 * float(result.outcomes.efficacy.mean())
    rows = []
    for method in methods:
        baseline = float(np.mean([efficacy[(method, tuple(ids))] for ids in random_sets]))
        rows.append(("random", method, "random", k, baseline, 0.0))
        for name in scorers:
            for label, ids in zip(("easy", "hard"), chosen[name], strict=True):
                value = efficacy[(method, tuple(ids))]
                rows.append((name, method, label, k, value, value - baseline))
    table = pd.DataFrame(rows, columns=SET_COLUMNS)
    mean = (table.groupby(["scorer", "set", "k"], sort=False)[["efficacy", "delta_vs_random"]]
            .mean().reset_index())
    mean.insert(1, "method", "mean")
    return pd.concat([table, mean[SET_COLUMNS]], ignore_index=True)


def steps_to_target(trajectory: pd.DataFrame, target_efficacy: float) -> float:
    """First tracked step where the mean efficacy (1 - p_t / p_0, clipped to [0, 1]) reaches
    `target_efficacy`; NaN if never within the run."""
    start = trajectory[trajectory.step == 0].set_index("sample_id").prob
    for step, group in trajectory[trajectory.step > 0].groupby("step", sort=True):
        ratio = group.set_index("sample_id").prob / start.loc[group.sample_id].to_numpy()
        if float(np.clip(1.0 - ratio, 0.0, 1.0).mean()) >= target_efficacy:
            return float(step)
    return float("nan")


def schedule_comparison(unlearner: Unlearner, forget: Sequence[Sample], scores: pd.DataFrame,
                        *, methods: Sequence[str], budget_steps: int, target_efficacy: float,
                        evaluate: Callable[[object], tuple[float | None, float | None]],
                        schedules: Sequence[tuple[str, str | None]] = DEFAULT_SCHEDULES,
                        track_every: int = 1) -> pd.DataFrame:
    """The schedule table (`SCHEDULE_COLUMNS`), all runs at `budget_steps` optimizer steps.

    `evaluate(model) -> (forget_quality, model_utility)` scores each unlearned model.
    Schedules whose scorer is missing from `scores` are skipped.
    """
    available = set(scores.scorer)
    runnable = [(s, name) for s, name in schedules if name is None or name in available]
    rows = []
    for method in methods:
        for schedule, scorer in progress_bar(runnable, desc=f"schedules {method}", unit="run"):
            result = unlearner.run(forget, method, schedule=schedule,
                                   difficulty=scores if scorer else None, scorer=scorer,
                                   max_steps=budget_steps, track_every=track_every)
            quality, utility = evaluate(result.model)
            rows.append((method, schedule, scorer or "-",
                         100.0 * float(result.outcomes.efficacy.mean()), quality, utility,
                         steps_to_target(result.trajectory, target_efficacy)))
    return pd.DataFrame(rows, columns=SCHEDULE_COLUMNS)


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

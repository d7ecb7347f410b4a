"""How noisy the ground truth is: seed-to-seed reliability and noise ceilings (DESIGN 5.9).

Measured difficulty of a sample under one method is -efficacy (DESIGN 5.4), and it moves with
the seed: `--seed` fixes the forget order and the retain batches. With a method run under R
seeds (a per-sample table `[n_samples, R]` of -efficacy, one column per seed):

- **seed-to-seed agreement**: Spearman's rho between the columns of every pair of seeds;
- **reliability of the seed mean** (the per-sample mean over seeds of -efficacy) by
  Spearman-Brown, r_R = R r / (1 + (R - 1) r), r the mean pairwise rho: the expected
  correlation of this R-seed mean with an independent one, the seeds taken as parallel
  measurements;
- **noise ceiling** sqrt(r_R): the correlation of the seed mean with its noise-free value, so
  the most any score can be expected to reach against it. NaN with one seed (unknown) and
  where r_R <= 0 (the seeds do not agree on any ranking);
- a scorer's rho against the seed mean, raw and as a **fraction of the ceiling** (rho /
  ceiling; above 1 only by noise).

Bootstrap intervals resample samples with replacement (`[n_boot, n]` indices, seeded, the same
draws for every statistic of one table). In each resample the ranks, every seed pair's rho, the
reliability and the ceiling are recomputed, so the interval of rho / ceiling carries the noise
of the ceiling as well as that of rho. Percentile intervals over the resamples in which the
statistic is defined.

**Seed pairing.** Two runs with the same seed share their data order, and that inflates their
agreement (measured on a reduced TOFU run: same-seed NPO-GradDiff pairs rho 0.66-0.92,
different-seed pairs 0.46-0.77). A statistic comparing two methods (or anchors from one method
with the difficulty measured under another) should therefore pair different seeds:
`seed_pairing(seeds_a, seeds_b)` gives every pair (s_a, s_b) with s_a != s_b, or, when no such
pair exists (both ran only one and the same seed), the same-seed pairs marked as sharing their
data order; `mean_over_seed_pairs` averages any statistic over those pairs and returns the
pairing, whose `describe()` is the sentence to print beside the number.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd
from scipy import stats

T = TypeVar("T")
LEVEL = 0.95


def rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row of `x` with the same row of `y` (`[b, n]` each): the Pearson
    correlation of average ranks along axis 1. `[b]`; NaN for a row whose ranks are constant."""
    rx = stats.rankdata(np.asarray(x, dtype=np.float64), axis=1)
    ry = stats.rankdata(np.asarray(y, dtype=np.float64), axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    denominator = np.sqrt((rx ** 2).sum(axis=1) * (ry ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=1) / denominator
    return np.where(denominator > 0, rho, np.nan)


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """`[n_boot, n]` sample indices drawn with replacement from a generator seeded by `seed`."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the finite entries of `values` (`[b]`); NaNs when none is."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def spearman_brown(r: float | np.ndarray, n_seeds: int) -> float | np.ndarray:
    """Reliability of the mean of `n_seeds` parallel measurements whose pairwise correlation is
    `r`: R r / (1 + (R - 1) r). NaN for one seed (nothing to compare)."""
    r = np.asarray(r, dtype=np.float64)
    if n_seeds < 2:
        return np.full(r.shape, np.nan)[()]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (n_seeds * r / (1.0 + (n_seeds - 1) * r))[()]


def noise_ceiling(reliability: float | np.ndarray) -> float | np.ndarray:
    """sqrt(reliability) where the reliability is positive, else NaN."""
    reliability = np.asarray(reliability, dtype=np.float64)
    return np.sqrt(np.where(reliability > 0, reliability, np.nan))[()]


def noise_ceilings(per_seed: np.ndarray) -> np.ndarray:
    """The noise ceiling of each of `b` sample sets: difficulties `[b, n, R]` (R seeds) ->
    `[b]` (NaN everywhere with one seed)."""
    n_seeds = per_seed.shape[2]
    if n_seeds < 2:
        return np.full(per_seed.shape[0], np.nan)
    pairs = [rowwise_spearman(per_seed[:, :, a], per_seed[:, :, b])
             for a, b in itertools.combinations(range(n_seeds), 2)]
    return noise_ceiling(spearman_brown(np.mean(pairs, axis=0), n_seeds))


@dataclass
class SeedReliability:
    """Agreement between the seeds of one method on `n` samples."""

    seeds: tuple[int, ...]
    n: int
    pair_spearman: dict[tuple[int, int], float]
    mean_spearman: float  # NaN with one seed
    reliability: float
    ceiling: float
    ceiling_low: float
    ceiling_high: float

    @property
    def note(self) -> str:
        """Why the ceiling is missing, or ''."""
        if len(self.seeds) < 2:
            return (f"one seed ({self.seeds[0]}): seed-to-seed agreement and the noise "
                    "ceiling are unknown")
        if not np.isfinite(self.mean_spearman):
            return "a seed ranks nothing (constant difficulty): reliability undefined"
        if not np.isfinite(self.ceiling):
            return (f"seeds disagree (mean rho {self.mean_spearman:.3f}): reliability <= 0, "
                    "no ceiling")
        return ""


def seed_reliability(per_seed: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0,
                     level: float = LEVEL) -> SeedReliability:
    """Pairwise seed Spearman, Spearman-Brown reliability and noise ceiling (with its bootstrap
    interval) of `per_seed` `[n_samples, R]`, one column of difficulty per seed."""
    values = per_seed.to_numpy(np.float64)
    seeds = tuple(int(s) for s in per_seed.columns)
    pairs = {(seeds[a], seeds[b]): float(rowwise_spearman(values[None, :, a],
                                                          values[None, :, b])[0])
             for a, b in itertools.combinations(range(len(seeds)), 2)}
    mean = float(np.mean(list(pairs.values()))) if pairs else float("nan")
    reliability = float(spearman_brown(mean, len(seeds)))
    low = high = float("nan")
    if len(seeds) >= 2 and len(values) >= 3:
        index = bootstrap_indices(len(values), n_boot, seed)
        low, high = percentile_interval(noise_ceilings(values[index]), level)
    return SeedReliability(seeds, len(values), pairs, mean, reliability,
                           float(noise_ceiling(reliability)), low, high)


def versus_seed_mean(score: np.ndarray, per_seed: np.ndarray, *, n_boot: int = 1000,
                     seed: int = 0, level: float = LEVEL) -> dict[str, float]:
    """A score `[n]` against the seed mean of `per_seed` `[n, R]`: Spearman with its interval,
    the ceiling of these `n` samples with its interval, and rho / ceiling with an interval
    whose resamples (the same as rho's) each recompute the ceiling. Keys: `spearman`,
    `spearman_low`, `spearman_high`, `ceiling`, `ceiling_low`, `ceiling_high`,
    `fraction_of_ceiling`, `fraction_low`, `fraction_high`."""
    score = np.asarray(score, dtype=np.float64)
    per_seed = np.asarray(per_seed, dtype=np.float64)
    mean = per_seed.mean(axis=1)
    rho = float(rowwise_spearman(score[None], mean[None])[0])
    ceiling = float(noise_ceilings(per_seed[None])[0])
    nan = float("nan")
    result = {"spearman": rho, "spearman_low": nan, "spearman_high": nan, "ceiling": ceiling,
              "ceiling_low": nan, "ceiling_high": nan, "fraction_of_ceiling": rho / ceiling,
              "fraction_low": nan, "fraction_high": nan}
    if len(score) < 3 or not np.isfinite(rho):
        return result
    index = bootstrap_indices(len(score), n_boot, seed)
    rhos = rowwise_spearman(score[index], mean[index])
    result["spearman_low"], result["spearman_high"] = percentile_interval(rhos, level)
    if per_seed.shape[1] >= 2:
        ceilings = noise_ceilings(per_seed[index])
        result["ceiling_low"], result["ceiling_high"] = percentile_interval(ceilings, level)
        result["fraction_low"], result["fraction_high"] = percentile_interval(
            rhos / ceilings, level)
    return result


def resolution(values: Sequence[float] | np.ndarray) -> tuple[int, int]:
    """(distinct values, tied samples) of a ground truth `[n]`: a sample is tied when another
    sample has the same value. A ground truth with few distinct values cannot rank."""
    counts = pd.Series(np.asarray(values)).value_counts()
    return len(counts), int(counts[counts > 1].sum())


@dataclass(frozen=True)
class SeedPairing:
    """The (seed of A, seed of B) pairs a statistic comparing two runs' sets averages over.

    `shared_data_order`: no pair of different seeds exists, so the pairs share their data
    order and the statistic is inflated."""

    pairs: tuple[tuple[int, int], ...]
    shared_data_order: bool

    def describe(self) -> str:
        listed = ", ".join(f"{a}-{b}" for a, b in self.pairs)
        if self.shared_data_order:
            return (f"same seed ({listed}): the runs share their data order, so agreement is "
                    "inflated; run another seed to pair different seeds")
        return f"different seeds, mean over {len(self.pairs)} pair(s) ({listed})"


def seed_pairing(seeds_a: Sequence[int], seeds_b: Sequence[int]) -> SeedPairing:
    """Every (s_a, s_b) with s_a != s_b; when there is none (both ran the same single seed),
    the same-seed pairs, marked `shared_data_order`."""
    a, b = sorted(set(seeds_a)), sorted(set(seeds_b))
    if not a or not b:
        raise ValueError("seed_pairing needs at least one seed on each side")
    different = tuple((x, y) for x in a for y in b if x != y)
    if different:
        return SeedPairing(different, False)
    return SeedPairing(tuple((x, x) for x in a if x in b), True)


def mean_over_seed_pairs(a: Mapping[int, T], b: Mapping[int, T],
                         statistic: Callable[[T, T], float]) -> tuple[float, SeedPairing]:
    """The mean of `statistic(a[s_a], b[s_b])` over `seed_pairing(a, b)`, and that pairing.

    `a`, `b` map seed -> whatever the statistic compares (an outcome table, a difficulty
    series, anchors voted from that seed's outcomes ...)."""
    pairing = seed_pairing(list(a), list(b))
    values = [statistic(a[x], b[y]) for x, y in pairing.pairs]
    return float(np.mean(values)), pairing

"""Circuit-guided unlearning against global updates and a random control (issue 11.1).

The CUD paper's open question: do updates localized to the circuit components of hard samples
erase them better? Each method unlearns the whole forget set from the target model, at the
same step budget and learning rate, in these arms (`unlearning.circuit_mask`):

- `global`: every parameter (today's unlearning);
- `hard-anchors`: only the heads and MLPs of the hard anchors' circuits;
- `batch`: per step only those of the step's samples' circuits;
- `random`: a seeded control of random components with the hard-anchor mask's parameter count.

Per arm: the mean efficacy (x100) on the `n_hard` hardest held-out samples (measured difficulty
of the run's outcomes, rank-averaged over methods, on the samples the anchors were not
discovered on), on every forget sample, the retain loss change, the model utility when an
`evaluate` callback is given, and how many parameter entries the arm could update per step
(`global`: every parameter of the model). `p_hard_vs_random`
is a paired sign-flip permutation test on the hard samples' per-sample efficacy difference
between the arm and the random control (exact for up to 16 samples).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd

from unlearnscope.anchors.sets import read_anchors
from unlearnscope.data.sample import Sample
from unlearnscope.errors import DataError
from unlearnscope.evaluation.anchored_cud import read_run_outcomes
from unlearnscope.evaluation.experiments import CachedUnlearning, to_markdown, write_table
from unlearnscope.evaluation.validation import MEAN_METHOD, measured_difficulty
from unlearnscope.layout import CIRCUIT_GUIDED_FILE, VALIDATION_DIR, anchors_file
from unlearnscope.progress import progress_bar

ARMS = ("global", "hard-anchors", "batch", "random")
CIRCUIT_GUIDED_COLUMNS = ["method", "arm", "steps", "forget_slots", "distinct_samples_drawn",
                          "update_params", "update_fraction", "n_hard", "efficacy_hard",
                          "efficacy_all", "p_hard_vs_random", "retain_loss_change",
                          "model_utility"]
PERMUTATIONS = 10_000


def paired_sign_flip_p(differences: np.ndarray, *, permutations: int = PERMUTATIONS,
                       seed: int = 0) -> float:
    """Two-sided sign-flip p-value of the mean of paired differences `[n]`: every sign pattern
    when 2^n <= `permutations` (p = #{|mean*| >= |mean|} / 2^n), else `permutations` random
    ones (p = (1 + #) / (1 + permutations))."""
    diff = np.asarray(differences, dtype=np.float64)
    if len(diff) == 0:
        return float("nan")
    observed = abs(diff.mean())
    threshold = observed - 1e-9 * max(1.0, observed)
    if 2 ** len(diff) <= permutations:
        signs = np.array(list(product((1.0, -1.0), repeat=len(diff))))
        return float(np.mean(np.abs(signs @ diff / len(diff)) >= threshold))
    signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(permutations, len(diff)))
    return (1 + int((np.abs(signs @ diff / len(diff)) >= threshold).sum())) / (1 + permutations)


def hardest_held_out(outcomes, held_out_ids: Sequence[str], n: int) -> list[str]:
    """The `n` hardest of `held_out_ids` by measured difficulty (`measured_difficulty`'s
    `mean`, the methods' ranks among the held-out samples averaged, higher = harder; ties
    broken by sample id), hardest first."""
    held = set(held_out_ids)
    others = {str(i) for tables in outcomes.values() for table in tables.values()
              for i in table["sample_id"]} - held
    table = measured_difficulty(outcomes, exclude_ids=others)[MEAN_METHOD]
    if len(table) < n:
        raise DataError(f"{len(table)} held-out samples with outcomes, fewer than the {n} "
                        "hardest asked for", field="n_hard")
    ordered = (table.rename("difficulty").rename_axis("sample_id").reset_index()
               .sort_values(["difficulty", "sample_id"], ascending=[False, True],
                            kind="mergesort"))
    return list(ordered.sample_id[:n])


def circuit_guided_comparison(unlearner: CachedUnlearning, forget: Sequence[Sample], *,
                              circuits: str | Path, hard_ids: Sequence[str],
                              methods: Sequence[str], budget_steps: int,
                              top_n: float = 0.05, anchors: str | Path | None = None,
                              arms: Sequence[str] = ARMS, mask_seed: int = 0,
                              evaluate: Callable[[object], float | None] | None = None
                              ) -> pd.DataFrame:
    """The table (`CIRCUIT_GUIDED_COLUMNS`) of every method x arm, each run on all of `forget`
    for `budget_steps` steps with the unlearner's settings (the same lr in every arm);
    efficacy on `hard_ids` and on every forget sample (x100). `evaluate(model)` gives the
    model utility (NaN without it)."""
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        raise DataError(f"unknown arm '{unknown[0]}' (known: {', '.join(ARMS)})", field="arms")
    rows, per_sample = [], {}
    for method, arm in progress_bar([(m, a) for m in methods for a in arms],
                                    desc="circuit-guided", unit="run"):
        extra = {} if arm == "global" else {
            "circuit_mask": arm, "circuits": str(circuits), "mask_top_n": top_n,
            "mask_anchors": None if anchors is None else str(anchors), "mask_seed": mask_seed}
        result = unlearner.run(forget, method, max_steps=budget_steps, **extra)
        efficacy = 100.0 * result.outcomes.set_index("sample_id")["efficacy"]
        per_sample[(method, arm)] = efficacy.loc[list(hard_ids)].to_numpy(dtype=np.float64)
        summary = result.summary
        mask = summary.get("circuit_mask")
        if mask:
            total, update = mask["parameters_total"], float(mask["update_params_mean"])
        else:
            total = sum(p.numel() for p in result.model.parameters())
            update = float(total)
        retain = summary.get("retain")
        rows.append({
            "method": method, "arm": arm, "steps": summary["steps"],
            "forget_slots": summary["forget_slots"],
            "distinct_samples_drawn": summary["distinct_forget_samples_drawn"],
            "update_params": update, "update_fraction": update / total,
            "n_hard": len(hard_ids), "efficacy_hard": float(per_sample[(method, arm)].mean()),
            "efficacy_all": float(efficacy.mean()), "p_hard_vs_random": np.nan,
            "retain_loss_change": (retain["loss_after"] - retain["loss_before"]) if retain
            else np.nan,
            "model_utility": np.nan if evaluate is None or result.model is None
            else evaluate(result.model)})
    table = pd.DataFrame(rows, columns=CIRCUIT_GUIDED_COLUMNS)
    if "random" in arms:
        for index, row in table.iterrows():
            if row.arm != "random":
                table.loc[index, "p_hard_vs_random"] = paired_sign_flip_p(
                    per_sample[(row.method, row.arm)] - per_sample[(row.method, "random")])
    return table


def circuit_guided_markdown(table: pd.DataFrame, header: Sequence[str] = ()) -> str:
    lines = [*header, "", to_markdown(table)] if header else [to_markdown(table)]
    return "\n".join(lines)


def write_circuit_guided(run_dir: str | Path, unlearner: CachedUnlearning, forget: Sequence[Sample],
                         *, methods: Sequence[str], budget_steps: int, top_n: float = 0.05,
                         n_hard: int | None = None, arms: Sequence[str] = ARMS, seed: int = 0,
                         evaluate: Callable[[object], float | None] | None = None
                         ) -> pd.DataFrame:
    """Run `circuit_guided_comparison` on a finished run folder and write
    `validation/circuit_guided.csv` and `.md`.

    Reads the circuit store `run_dir/circuits`, the anchors `run_dir/anchors/anchors.json`
    (masks from its `hard` list; the hard samples are the `n_hard` hardest of its
    `held_out_ids`, default a quarter of them, at least 2) and the outcomes under
    `run_dir/unlearn` (measured difficulty). `unlearner` holds the target model and the
    run settings.
    """
    run_dir = Path(run_dir)
    anchors_path = anchors_file(run_dir)
    anchors = read_anchors(anchors_path)
    if not anchors.held_out_ids:
        raise DataError("the anchors have no held-out samples to evaluate on",
                        source=str(anchors_path), field="held_out_ids")
    n_hard = n_hard or max(2, len(anchors.held_out_ids) // 4)
    hard = hardest_held_out(read_run_outcomes(run_dir), anchors.held_out_ids, n_hard)
    table = circuit_guided_comparison(unlearner, forget, circuits=run_dir, hard_ids=hard,
                                      methods=methods, budget_steps=budget_steps, top_n=top_n,
                                      anchors=anchors_path, arms=arms, mask_seed=seed,
                                      evaluate=evaluate)
    folder = run_dir / VALIDATION_DIR
    header = [f"Circuit-guided unlearning: {budget_steps} steps per run, the same lr in every "
              f"arm; circuits = each sample's top {top_n} edges, pruned; masks from the "
              f"{len(anchors.hard)} hard anchors (fit half). efficacy x100 on the {n_hard} "
              f"hardest held-out samples ({', '.join(hard)}) and on all {len(forget)} forget "
              "samples; p_hard_vs_random: paired sign-flip test against the random control."]
    write_table(table, folder / CIRCUIT_GUIDED_FILE,
                markdown=circuit_guided_markdown(table, header))
    return table

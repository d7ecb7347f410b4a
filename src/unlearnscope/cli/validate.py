"""`unlearnscope validate`: does a difficulty score predict measured unlearning outcomes?

    unlearnscope validate [correlations] --run DIR
    unlearnscope validate [correlations] --scores FILE --outcomes PATH [PATH ...]
                          [--methods NAME ...] [--exclude-ids anchors.json]
                          [--steps-to-forget PATH ...] [--allow-unverified-holdout] --out DIR
    unlearnscope validate sets --run DIR --model M --forget D --retain D [--k K ...]
    unlearnscope validate schedules --run DIR --model M --forget D --retain D
                          --retain-model R [--budget N ...]

Each action is one entry of `ACTIONS` (name -> handler of the parsed arguments).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from unlearnscope.anchors import read_anchors
from unlearnscope.cli._common import (
    add_data_args,
    add_model_args,
    output_folder,
    positive_float,
    positive_int,
    samples_from,
)
from unlearnscope.errors import DataError
from unlearnscope.evaluation import cross_method, cud_choice
from unlearnscope.evaluation.experiments import (
    CachedUnlearning,
    ScheduleMetrics,
    easy_hard_sets,
    schedule_comparison,
    to_markdown,
    write_table,
)
from unlearnscope.evaluation.holdout import resolve_holdout
from unlearnscope.evaluation.validation import correlation_markdown, read_fit_ids, write_validation
from unlearnscope.layout import (
    CROSS_METHOD_FILE,
    CUD_CHOICE_FILE,
    SCHEDULES_FILE,
    SCORES_FILE,
    SEED_DIR,
    SETS_FILE,
    VALIDATION_DIR,
    anchors_file,
    read_method_outcomes,
    read_outcomes,
    read_run_steps_to_forget,
    read_scores,
    read_seed_outcomes,
    read_steps_to_forget,
    run_seed,
)
from unlearnscope.models import load_model
from unlearnscope.runs import write_config
from unlearnscope.scoring import read_scorer_configs
from unlearnscope.scoring.cud import SIMILARITIES, VECTORS
from unlearnscope.unlearning.trainer import UnlearnConfig

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "validate", help="validate difficulty scores against measured unlearning outcomes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="actions:\n"
                    "  correlations (default)  per scorer and method (and 'mean', the rank-\n"
                    "      average over methods): Spearman with a bootstrap 95% interval,\n"
                    "      Kendall, AUROC of the hardest vs easiest quartile of measured\n"
                    "      difficulty (-efficacy, its seed mean when a method ran several\n"
                    "      seeds), n, the noise ceiling and rho / ceiling; Spearman between\n"
                    "      scorers; CUD stability across anchor methods; the reliability table\n"
                    "      (per method: seed-to-seed Spearman, Spearman-Brown reliability of\n"
                    "      the seed mean, noise ceiling, each scorer raw and as a fraction of\n"
                    "      the ceiling with bootstrap intervals, steps-to-forget as a second\n"
                    "      ground truth). Writes OUT/validation/correlations.csv/.md,\n"
                    "      reliability.csv/.md, scorer_correlations.csv/.md (cud_stability\n"
                    "      .csv/.md with 2+ CUD scorers).\n\n"
                    "held out: the samples every anchor-based scorer's anchors were fitted on\n"
                    "(read from scorers.json or config.json beside the score table) are left\n"
                    "out of every statistic, as are --exclude-ids and the run's anchors.json.\n"
                    "Where a scorer's fit samples cannot be found, validate refuses unless\n"
                    "--allow-unverified-holdout; then every table says so.\n\n"
                    "inputs: --run DIR reads DIR/scores.parquet, DIR/unlearn/<method>/outcomes"
                    ".parquet\n(or DIR/unlearn/<method>/seed<s>/outcomes.parquet), DIR/"
                    "steps_to_forget/<method>/\nand DIR/anchors/anchors.json (if present), and "
                    "writes into DIR; or give the files.",
    )
    parser.add_argument("action", nargs="?", default="correlations", choices=sorted(ACTIONS),
                        help="what to validate (default: correlations)")
    parser.add_argument("--run", default=None, help="run folder of the pipeline")
    parser.add_argument("--scores", default=None,
                        help="scores.parquet (its folder's scorers.json or config.json says "
                             "which samples anchor-based scorers were fitted on)")
    parser.add_argument("--outcomes", nargs="+", default=None,
                        help="outcomes.parquet of one or more unlearning runs, or their folders "
                             "(an `unlearn --seeds` folder holds one per seed)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="a method name per outcomes path (default: its folder's name)")
    parser.add_argument("--exclude-ids", default=None,
                        help="anchors.json whose fit_ids are also left out of every statistic")
    parser.add_argument("--steps-to-forget", nargs="+", default=None,
                        help="steps_to_forget.parquet files or folders (a second ground truth; "
                             "the method is read from their config.json)")
    parser.add_argument("--allow-unverified-holdout", action="store_true",
                        help="validate anchor-based scorers whose anchor-fit samples cannot be "
                             "found (they may be included); every table then says so")
    parser.add_argument("--out", default=None, type=output_folder,
                        help="output folder (default: --run)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap and unlearning seed")
    experiments = parser.add_argument_group("sets and schedules")
    add_model_args(experiments, required=False)
    add_data_args(experiments, flag="--forget", required=False,
                  max_samples_help="use only the first N samples of --forget, and the first N "
                                   "of --retain (sets, schedules)")
    add_data_args(experiments, flag="--retain", required=False)
    experiments.add_argument("--scorers", default="cud,mrd,loss",
                             help="scorers whose easy/hard sets are unlearned (sets)")
    experiments.add_argument("--unlearn-methods", default="grad_diff,npo,simnpo,undial,rmu",
                             help="unlearning methods to run")
    experiments.add_argument("--k", type=int, default=8, help="set size (sets)")
    experiments.add_argument("--seeds", type=int, default=3, help="random sets (sets)")
    experiments.add_argument("--epochs", type=positive_int, default=5,
                             help="training epochs (default: %(default)s)")
    experiments.add_argument("--lr", type=positive_float, default=1e-5,
                             help="peak learning rate (default: %(default)s)")
    experiments.add_argument("--batch-size", type=positive_int, default=4,
                             help="samples per batch (default: %(default)s)")
    experiments.add_argument("--grad-accum", type=positive_int, default=1,
                             help="micro-batches per optimizer step (default: %(default)s)")
    experiments.add_argument("--warmup-epochs", type=float,
                             default=UnlearnConfig.warmup_epochs,
                             help="learning-rate warm-up in epochs (default: %(default)s)")
    experiments.add_argument("--retain-model", default=None,
                             help="retain model for forget quality (schedules)")
    experiments.add_argument("--budget", type=int, default=20,
                             help="optimizer steps per run (schedules)")
    experiments.add_argument("--target-efficacy", type=float, default=0.3,
                             help="mean efficacy whose first step is reported (schedules)")
    add_cud_validation_args(parser)
    parser.set_defaults(func=run)


def add_cud_validation_args(parser: argparse.ArgumentParser) -> None:
    """Options of the `cross-method` and `cud-choice` actions."""
    group = parser.add_argument_group(
        "cross-method and cud-choice",
        "CUD recomputed from --run's circuit store for anchors voted on the fit half of its "
        "anchors/anchors.json. cross-method: for every ordered pair of methods, anchors from "
        "one method, Spearman with the other's -efficacy on the held-out half, plus leave-one-"
        "method-out (different seeds paired where per-seed outcomes exist) -> validation/"
        "cross_method.csv/.md. cud-choice: every candidate configuration scored on the fit "
        "half by K-fold cross-fitting (anchors voted on the other folds; folds seeded by "
        "--seed), the best reported on the held-out half -> validation/cud_choice.csv/.md.")
    group.add_argument("--cud-top-n", default=None,
                       help="circuit size: an edge count or a fraction of the edges "
                            "(cross-method: one, default 0.05; cud-choice: comma-separated, "
                            "default 0.02,0.05,0.1)")
    group.add_argument("--cud-vector", default=None,
                       help="binary or weighted (cross-method default binary; cud-choice "
                            "default both)")
    group.add_argument("--cud-similarity", default=None,
                       help="cosine, jaccard or hamming (cross-method default cosine; "
                            "cud-choice default all three)")
    group.add_argument("--cud-anchor-method", default=None,
                       help="how several methods' anchors combine: mean or combined "
                            "(cross-method default mean; cud-choice: comma-separated, also "
                            "method names, default combined, mean and each voting method)")
    group.add_argument("--vote-methods", default=None,
                       help="cud-choice: methods whose outcomes vote the anchors (default: "
                            "those of anchors.json, else all)")
    group.add_argument("--cud-folds", type=int, default=cud_choice.FOLDS,
                       help="cud-choice: cross-fitting folds within the fit half (default "
                            f"{cud_choice.FOLDS}; fewer when a fold would hold under "
                            f"{cud_choice.MIN_FOLD} samples)")
    group.add_argument("--anchor-k", type=int, default=None,
                       help="anchor set size (default: k of the run's anchors.json)")
    group.add_argument("--fit-fraction", type=float, default=0.5,
                       help="fit half when the run has no anchors.json (split seeded by --seed)")


def _outcome_tables(path: Path) -> tuple[str, dict]:
    """(default method name, {seed: outcome table}) of an outcomes file or unlearning folder;
    a file in `seed<s>/` is seed s of the folder above, another file the seed its run used."""
    if path.is_dir():
        return path.name, read_seed_outcomes(path)
    match = SEED_DIR.match(path.parent.name)
    if match:
        return path.parent.parent.name, {int(match.group(1)): read_outcomes(path)}
    return path.parent.name, {run_seed(path.parent): read_outcomes(path)}


def _method_outcomes(args: argparse.Namespace) -> dict[str, dict]:
    """`{method: {seed: outcome table}}` from --outcomes (and --methods), else from --run."""
    if not args.outcomes:
        return read_method_outcomes(args.run)
    paths = [Path(p) for p in args.outcomes]
    if args.methods and len(args.methods) != len(paths):
        raise DataError(f"{len(args.methods)} method names for {len(paths)} outcomes paths",
                        field="--methods")
    outcomes: dict[str, dict] = {}
    for index, path in enumerate(paths):
        default, tables = _outcome_tables(path)
        name = args.methods[index] if args.methods else default
        repeated = sorted(set(tables) & set(outcomes.get(name, {})))
        if repeated:
            raise DataError(f"method '{name}' seed {repeated[0]} given twice ({path}): name the "
                            "paths with --methods", field="--methods")
        outcomes.setdefault(name, {}).update(tables)
    return outcomes


def _inputs(args: argparse.Namespace):
    if args.run is None and (args.scores is None or args.outcomes is None or args.out is None):
        raise DataError("give --run DIR, or --scores, --outcomes and --out", field="--run")
    scores_path = Path(args.scores) if args.scores else Path(args.run, SCORES_FILE)
    outcomes = _method_outcomes(args)
    anchors = [Path(args.exclude_ids)] if args.exclude_ids else []
    if args.run and anchors_file(args.run).is_file():
        anchors.append(anchors_file(args.run))
    fit_ids = {path: read_fit_ids(path) for path in anchors}
    extra = set().union(*fit_ids.values())
    scores = read_scores(scores_path)
    if args.exclude_ids:
        given = fit_ids[Path(args.exclude_ids)]
        if given and not given & set(scores["sample_id"]):
            log.warning("--exclude-ids %s: none of its %d ids is a sample of %s, so it leaves "
                        "nothing out (the anchors of another run?)", args.exclude_ids,
                        len(given), scores_path)
    holdout = resolve_holdout(scores, read_scorer_configs(scores_path.parent), extra_ids=extra,
                              allow_unverified=args.allow_unverified_holdout)
    steps = read_run_steps_to_forget(args.run) if args.run else {}
    for path in args.steps_to_forget or []:
        method, table = read_steps_to_forget(path)
        steps[method] = table
    return scores, outcomes, holdout, anchors, steps


def run_correlations(args: argparse.Namespace) -> int:
    scores, outcomes, holdout, anchors, steps = _inputs(args)
    out = Path(args.out or args.run)
    write_config(out / VALIDATION_DIR, "validate correlations",
                 {"scores": args.scores or str(Path(args.run, SCORES_FILE)),
                  "methods": {m: sorted(seeds) for m, seeds in outcomes.items()},
                  "steps_to_forget": sorted(steps), "exclude_ids": anchors,
                  **holdout.record(), "n_boot": args.n_boot, "seed": args.seed})
    table = write_validation(out, scores, outcomes, exclude_ids=holdout.exclude_ids,
                             steps_to_forget=steps, unverified_holdout=holdout.unverified,
                             n_boot=args.n_boot, seed=args.seed)
    print(correlation_markdown(table), end="")
    print(f"-> {out / VALIDATION_DIR}")
    return 0


def _experiment_inputs(args: argparse.Namespace, action: str):
    missing = [flag for flag, value in (("--run", args.run), ("--model", args.model),
                                        ("--forget", args.forget), ("--retain", args.retain))
               if value is None]
    if missing:
        raise DataError(f"validate {action} needs {', '.join(missing)}", field=missing[0])
    scores = read_scores(Path(args.run, SCORES_FILE))
    anchors = anchors_file(args.run)
    held_out = read_anchors(anchors).held_out_ids if anchors.is_file() else None
    forget = samples_from(args, args.forget)
    retain = samples_from(args, args.retain)
    model, tokenizer = load_model(args.model, dtype=args.dtype,
                                  trust_remote_code=args.trust_remote_code)
    settings = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                "grad_accum": args.grad_accum, "warmup_epochs": args.warmup_epochs,
                "seed": args.seed}
    methods = [m.strip() for m in args.unlearn_methods.split(",") if m.strip()]
    unlearner = CachedUnlearning(model, tokenizer, retain, settings)
    return scores, held_out, forget, retain, unlearner, methods


def _write_table(args: argparse.Namespace, file_name: str, table) -> None:
    """`table` as `validation/<file_name>` (and its markdown), with the action's config in
    `validation/<stem>/`."""
    folder = Path(args.out or args.run) / VALIDATION_DIR
    name = Path(file_name).stem
    write_config(folder / name, f"validate {name}",
                 {k: v for k, v in vars(args).items() if k != "func"})
    write_table(table, folder / file_name)
    print(to_markdown(table), end="")
    print(f"-> {folder / file_name}")


def run_sets(args: argparse.Namespace) -> int:
    scores, held_out, forget, _, unlearner, methods = _experiment_inputs(args, "sets")
    scorers = [s.strip() for s in args.scorers.split(",") if s.strip()]
    table = easy_hard_sets(unlearner, forget, scores, scorers=scorers, methods=methods,
                           k=args.k, random_seeds=range(args.seeds), eligible_ids=held_out)
    _write_table(args, SETS_FILE, table)
    return 0


def run_schedules(args: argparse.Namespace) -> int:
    if args.retain_model is None:
        raise DataError("validate schedules needs --retain-model (forget quality compares "
                        "truth ratios with the retain model's)", field="--retain-model")
    scores, _, forget, retain, unlearner, methods = _experiment_inputs(args, "schedules")
    evaluate = ScheduleMetrics(unlearner.tokenizer, forget, retain,
                               lambda: load_model(args.retain_model, dtype=args.dtype))
    evaluate.reference()  # the retain model now: a bad --retain-model fails before unlearning
    table = schedule_comparison(unlearner, forget, scores, methods=methods,
                                budget_steps=args.budget, target_efficacy=args.target_efficacy,
                                evaluate=evaluate)
    _write_table(args, SCHEDULES_FILE, table)
    return 0


def _names(value: str | None, default: Sequence[str]) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else list(default)


def _one(value: str | None, default: str, flag: str) -> str:
    values = _names(value, [default])
    if len(values) != 1:
        raise DataError(f"validate cross-method takes one value, got {value}", field=flag)
    return values[0]


def _top_n(values: Sequence[str], flag: str = "--cud-top-n") -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError:
        raise DataError(f"not a number: {', '.join(values)}", field=flag) from None


def _require_run(args: argparse.Namespace, action: str) -> Path:
    if args.run is None:
        raise DataError(f"validate {action} needs --run DIR (a run folder with unlearn/, "
                        "circuits/ and anchors/anchors.json)", field="--run")
    return Path(args.run)


def run_cross_method(args: argparse.Namespace) -> int:
    run_dir = _require_run(args, "cross-method")
    table = cross_method.write_cross_method(
        run_dir, top_n=_top_n([_one(args.cud_top_n, "0.05", "--cud-top-n")])[0],
        vector=_one(args.cud_vector, "binary", "--cud-vector"),
        similarity=_one(args.cud_similarity, "cosine", "--cud-similarity"),
        anchor_method=_one(args.cud_anchor_method, "mean", "--cud-anchor-method"),
        k=args.anchor_k, fit_fraction=args.fit_fraction, split_seed=args.seed,
        n_boot=args.n_boot, seed=args.seed, out_dir=args.out)
    folder = Path(args.out or run_dir) / VALIDATION_DIR
    print((folder / CROSS_METHOD_FILE).with_suffix(".md").read_text(encoding="utf-8"), end="")
    print(f"-> {(folder / CROSS_METHOD_FILE).with_suffix('.md')} ({len(table)} rows)")
    return 0


def run_cud_choice(args: argparse.Namespace) -> int:
    run_dir = _require_run(args, "cud-choice")
    table = cud_choice.write_cud_choice(
        run_dir, top_n=_top_n(_names(args.cud_top_n, [str(n) for n in cud_choice.TOP_N])),
        vectors=_names(args.cud_vector, VECTORS),
        similarities=_names(args.cud_similarity, SIMILARITIES),
        anchor_methods=_names(args.cud_anchor_method, []) or None,
        vote_methods=_names(args.vote_methods, []) or None, k=args.anchor_k,
        fit_fraction=args.fit_fraction, split_seed=args.seed, folds=args.cud_folds,
        fold_seed=args.seed, n_boot=args.n_boot, seed=args.seed, out_dir=args.out)
    folder = Path(args.out or run_dir) / VALIDATION_DIR
    print((folder / CUD_CHOICE_FILE).with_suffix(".md").read_text(encoding="utf-8"), end="")
    print(f"-> {(folder / CUD_CHOICE_FILE).with_suffix('.md')} ({len(table)} candidates)")
    return 0


ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "correlations": run_correlations, "sets": run_sets, "schedules": run_schedules,
    "cross-method": run_cross_method, "cud-choice": run_cud_choice}


def run(args: argparse.Namespace) -> int:
    return ACTIONS[args.action](args)

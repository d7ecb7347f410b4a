"""`unlearnscope demo`: the whole pipeline offline on synthetic authors and the tiny model."""

from __future__ import annotations

import argparse
import copy

from unlearnscope.cli._common import named_key_values, positive_float, positive_int
from unlearnscope.cli.unlearn import parse_seeds
from unlearnscope.errors import UnlearnscopeError
from unlearnscope.pipeline import PHASE_NAMES, PipelineConfig, load_pipeline_config, run_demo
from unlearnscope.runs import output_folder_problem
from unlearnscope.unlearning.methods import METHODS


def register(subparsers) -> None:
    defaults = PipelineConfig()
    parser = subparsers.add_parser(
        "demo", help="run the whole pipeline offline on the embedded default",
        description="Synthetic authors + the tiny model: target and retain models, baseline, "
                    "MRD and CUD scores, circuits, six unlearning methods (some under several "
                    "seeds, see --seeds), steps-to-forget, validation with noise ceilings, "
                    "easy/hard set and schedule experiments, report.html. Stages already "
                    "finished in OUT are skipped; the options make it larger.",
    )
    parser.add_argument("--out", default="runs/demo", help="run folder")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="a JSON object of the run's settings (PipelineConfig fields, e.g. a "
                             "study's run.json); combines only with --out, --tofu-dir and "
                             "--stop-after")
    parser.add_argument("--stop-after", default=None, choices=PHASE_NAMES,
                        help="end the run after this phase (in this order: "
                             f"{', '.join(PHASE_NAMES)}); rerun with the same --out to go on")
    parser.add_argument("--model", default=None,
                        help="fine-tune this model instead of building the tiny one "
                             "(e.g. smollm2-135m)")
    parser.add_argument("--tofu-dir", default=None,
                        help="run on TOFU authors from this folder instead of synthetic ones")
    parser.add_argument("--forget-split", default=defaults.forget_split,
                        help="TOFU forget split (forget01, forget05, forget10)")
    parser.add_argument("--retain-authors", type=int, default=defaults.retain_authors,
                        help="TOFU retain authors (20 questions each) to train and keep")
    parser.add_argument("--lr", type=positive_float, default=defaults.lr, help="fine-tuning peak learning rate")
    parser.add_argument("--max-epochs", type=positive_int, default=defaults.max_epochs,
                        help="fine-tuning epochs at most (stops at --target-prob)")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                        help="samples per batch (default: %(default)s)")
    parser.add_argument("--unlearn-lr", type=positive_float, default=defaults.unlearn["lr"],
                        help="unlearning learning rate (default: %(default)s)")
    parser.add_argument("--unlearn-epochs", type=int, default=defaults.unlearn["epochs"],
                        help="unlearning epochs of every method")
    parser.add_argument("--methods", default=",".join(defaults.methods),
                        help="unlearning methods run on the whole forget set")
    parser.add_argument("--seeds", action="append", default=[], metavar="METHOD=S,S,...",
                        help="unlearning seeds of a method, repeatable, e.g. npo=0,1,2 (two or "
                             "more give its noise ceiling; default: "
                             + "; ".join(f"{m}={','.join(map(str, s))}"
                                         for m, s in defaults.seeds.items())
                             + "; other methods --seed)")
    parser.add_argument("--steps-to-forget-methods",
                        default=",".join(defaults.steps_to_forget_methods),
                        help="methods whose steps-to-forget is measured (each sample unlearned "
                             "alone; '' for none)")
    parser.add_argument("--set-methods", default=",".join(defaults.set_methods),
                        help="methods of the easy/hard set experiment")
    parser.add_argument("--schedule-methods", default=",".join(defaults.schedule_methods),
                        help="methods of the schedule experiment")
    parser.add_argument("--method-setting", action="append", default=[],
                        metavar="METHOD.KEY=VALUE",
                        help="a per-method setting, repeatable: training keys ("
                             f"{', '.join(defaults.unlearn)}) or any method option, e.g. "
                             "simnpo.lr=5e-4, rmu.steering_coeff=20 (the tiny model's defaults: "
                             f"{defaults.method_settings})")
    parser.add_argument("--n-authors", type=int, default=defaults.n_authors,
                        help="synthetic authors to generate")
    parser.add_argument("--questions-per-author", type=int, default=defaults.questions_per_author,
                        help="questions per synthetic author")
    parser.add_argument("--forget-fraction", type=float, default=defaults.forget_fraction,
                        help="fraction of the synthetic authors in the forget set")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed of the synthetic data, fine-tuning, unlearning (methods "
                             "without --seeds) and the anchor fit split")
    parser.add_argument("--target-prob", type=float, default=defaults.target_prob,
                        help="fine-tuning stops after the first epoch where the forget "
                             "answers' mean probability reaches this")
    parser.add_argument("--mrd-draws", type=int, default=defaults.mrd_draws,
                        help="Monte Carlo noise draws K of the mrd scorer")
    parser.add_argument("--ig-steps", type=int, default=defaults.ig_steps,
                        help="EAP-IG integration steps of the circuits")
    parser.add_argument("--set-k", type=int, default=defaults.set_k,
                        help="size of the easy/hard/random sets")
    parser.add_argument("--schedule-budget", type=int, default=defaults.schedule_budget,
                        help="optimizer steps per run in the schedule experiment")
    # every option's default, to tell which ones a --config run was given besides the file
    parser.set_defaults(func=run, parser_defaults=vars(parser.parse_args([])))


def method_settings(pairs: list[str], base: dict) -> dict:
    """Per-method settings: `base` with each `METHOD.KEY=VALUE` of `pairs` merged in, training
    keys at the top, method options under `method_options`."""
    parsed = named_key_values(pairs, sorted(METHODS), "--method-setting", "method")
    training_keys = set(PipelineConfig().unlearn)
    settings = copy.deepcopy(base)
    for method, options in parsed.items():
        if not options:
            continue
        entry = settings.setdefault(method, {})
        for key, value in options.items():
            if key in training_keys:
                entry[key] = value
            else:
                entry.setdefault("method_options", {})[key] = value
    return settings


def method_seeds(pairs: list[str], base: dict[str, tuple[int, ...]]
                 ) -> dict[str, tuple[int, ...]]:
    """`base` with each `METHOD=S,S,...` of `pairs` replacing that method's seeds."""
    seeds = dict(base)
    for pair in pairs:
        method, sep, text = pair.partition("=")
        if not sep or method not in METHODS:
            raise UnlearnscopeError(f"--seeds '{pair}': expected METHOD=S,S,... with a method "
                                    f"of {', '.join(sorted(METHODS))}")
        seeds[method] = tuple(parse_seeds(text))
    return seeds


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _from_file(args: argparse.Namespace, parser_defaults: dict) -> PipelineConfig:
    """The run config of `--config`, refusing other options that would be ignored."""
    combined = [f"--{key.replace('_', '-')}" for key, value in vars(args).items()
                if key in parser_defaults and key not in {"out", "tofu_dir", "config", "stop_after"}
                and value != parser_defaults[key]]
    if combined:
        raise UnlearnscopeError(f"--config {args.config}: the file holds the run's settings; "
                                f"drop {', '.join(combined)} (or put them in the file)")
    overrides = {"tofu_dir": args.tofu_dir} if args.tofu_dir is not None else {}
    return load_pipeline_config(args.config, **overrides)


def run(args: argparse.Namespace) -> int:
    problem = output_folder_problem(args.out)
    if problem is not None:
        raise UnlearnscopeError(f"--out {args.out}: {problem}")
    if args.config is not None:
        run_demo(args.out, _from_file(args, args.parser_defaults), stop_after=args.stop_after)
        return 0
    defaults = PipelineConfig()
    methods = _names(args.methods)
    config = PipelineConfig(model=args.model, tofu_dir=args.tofu_dir,
                            forget_split=args.forget_split, retain_authors=args.retain_authors,
                            lr=args.lr, max_epochs=args.max_epochs, batch_size=args.batch_size,
                            unlearn={**defaults.unlearn, "lr": args.unlearn_lr,
                                     "epochs": args.unlearn_epochs},
                            method_settings=method_settings(
                                args.method_setting,
                                defaults.method_settings if args.model is None else {}),
                            methods=methods,
                            seeds=method_seeds(args.seeds, defaults.seeds),
                            steps_to_forget_methods=_names(args.steps_to_forget_methods),
                            anchor_methods=tuple(m for m in methods if m != "grad_ascent"),
                            set_methods=_names(args.set_methods),
                            schedule_methods=_names(args.schedule_methods),
                            n_authors=args.n_authors, questions_per_author=args.questions_per_author,
                            forget_fraction=args.forget_fraction, seed=args.seed,
                            target_prob=args.target_prob, mrd_draws=args.mrd_draws,
                            ig_steps=args.ig_steps, set_k=args.set_k,
                            schedule_budget=args.schedule_budget)
    run_demo(args.out, config, stop_after=args.stop_after)
    return 0

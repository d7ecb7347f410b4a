"""`unlearnscope score`: per-sample difficulty scores before any unlearning."""

from __future__ import annotations

import argparse

from unlearnscope import distributed
from unlearnscope.cli._common import (
    add_data_args,
    add_model_args,
    add_run_args,
    load_args_model,
    named_key_values,
    options_of,
    positive_int,
    samples_from,
)
from unlearnscope.models.inputs import count_truncated
from unlearnscope.runs import write_config
from unlearnscope.scoring import BASELINES, SCORERS, get_scorer, score_samples
from unlearnscope.scoring.runner import check_resume_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score", help="score samples with difficulty metrics",
        description="Write OUT/scores.parquet (sample_id, scorer, value, difficulty; higher "
                    "difficulty = harder to unlearn), OUT/scorers.json (each scorer's resolved "
                    "options) and OUT/config.json. Shards samples across processes under "
                    "torchrun / accelerate launch. --resume continues a run with the scorers' "
                    "recorded options (a changed option is refused, naming it; scorers new to "
                    "the folder may join).",
    )
    add_model_args(parser)
    add_data_args(parser)
    add_run_args(parser)
    parser.add_argument("--scorers", default=",".join(BASELINES),
                        help=f"comma-separated scorer names (known: {', '.join(sorted(SCORERS))}"
                             "); cud_paper is CUD in the CUD authors' configuration, beside "
                             "cud, on circuits from `unlearnscope circuits --preset paper`")
    parser.add_argument("--scorer-option", action="append", default=[], metavar="NAME.KEY=VALUE",
                        help="an option of one scorer, e.g. mrd.k=50, mrd.sigma=1e-5, "
                             "cud.anchors=runs/x/anchors/anchors.json, cud.circuits=runs/x "
                             "(repeatable; values are read as JSON when they parse, else text)")
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="samples per batch (default: %(default)s)")
    parser.add_argument("--chunk-size", type=positive_int, default=64,
                        help="samples per progress record (the most a kill can lose)")
    parser.add_argument("--merge", action="store_true",
                        help="keep other scorers' rows of an existing OUT/scores.parquet")
    parser.add_argument("--max-length", type=positive_int, default=None,
                        help="truncate sequences to this many tokens (default: model context)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = [name.strip() for name in args.scorers.split(",") if name.strip()]
    options = named_key_values(args.scorer_option, names, "--scorer-option", "scorer")
    scorers = [get_scorer(name, **options[name]) for name in names]
    if args.resume:
        check_resume_options(args.out, scorers)
    samples = samples_from(args, args.data)
    model, tokenizer = load_args_model(args)
    if distributed.is_main():
        write_config(args.out, "score", {**options_of(args),
                                         "scorer_configs": [s.config() for s in scorers]},
                     n_truncated=count_truncated(model, tokenizer, samples, args.max_length))
    table = score_samples(model, tokenizer, samples, scorers, args.out,
                          batch_size=args.batch_size, chunk_size=args.chunk_size,
                          resume=args.resume, max_length=args.max_length, merge=args.merge)
    if distributed.is_main():
        summary = table.groupby("scorer", sort=False)["value"].agg(["mean", "std", "min", "max"])
        print(f"scored {len(samples)} samples -> {args.out}/scores.parquet")
        print(summary.to_string(float_format=lambda v: f"{v:.4g}"))
    return 0

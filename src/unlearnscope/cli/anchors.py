"""`unlearnscope anchors`: reference easy and hard sets of forget samples (DESIGN 5.7).

    unlearnscope anchors --method vote --k K --outcomes RUN1/outcomes.parquet RUN2 ... --out DIR
    unlearnscope anchors --method bilevel --k K --model M --data D [--retain D] --out DIR
"""

from __future__ import annotations

import argparse

from unlearnscope.anchors import (
    AnchorSets,
    BilevelSettings,
    bilevel_anchors,
    split_fit,
    vote_anchor_sets,
    write_anchors,
)
from unlearnscope.anchors.bilevel import SOLVERS
from unlearnscope.anchors.gradient_sketch import SKETCH_KINDS
from unlearnscope.cli._common import (
    add_data_args,
    add_model_args,
    load_args_model,
    options_of,
    output_folder,
    positive_int,
    samples_from,
)
from unlearnscope.data import load_samples
from unlearnscope.errors import UnlearnscopeError
from unlearnscope.layout import read_outcome_files
from unlearnscope.runs import write_config

DEFAULTS = BilevelSettings()


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "anchors", help="reference easy/hard sets: vote over unlearning runs, or bilevel",
        description="Write OUT/anchors.json (easy, hard, fit_ids, held_out_ids, method, k, "
                    "per_method, options) and OUT/config.json. vote: samples in the top (bottom) "
                    "k by measured efficacy for at least half of the runs, filled up by mean "
                    "rank. bilevel: sample weights optimized through T unrolled unlearning "
                    "steps, or for T = 1 through the Gram-matrix closed form (sketched with "
                    "--sketch-dim for large models).")
    parser.add_argument("--method", required=True, choices=("vote", "bilevel"),
                        help="vote over unlearning outcomes, or bilevel optimization on the "
                             "model")
    parser.add_argument("--k", type=int, required=True, help="samples per anchor set")
    parser.add_argument("--out", required=True, type=output_folder, help="output folder")
    parser.add_argument("--fit-fraction", type=float, default=1.0,
                        help="discover anchors on this seeded fraction of the forget samples; "
                             "the rest is held out for validation (default: %(default)s, all)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the fit split and the gradient sketch")
    vote = parser.add_argument_group("vote")
    vote.add_argument("--outcomes", nargs="+", default=None,
                      help="outcomes.parquet files (or run folders) of `unlearnscope unlearn`")
    vote.add_argument("--method-names", nargs="+", default=None,
                      help="a name per outcomes file (default: each run's summary.json method)")
    bilevel = parser.add_argument_group("bilevel")
    add_model_args(bilevel, required=False)
    add_data_args(bilevel, required=False)
    bilevel.add_argument("--retain", default=None, help="retain dataset spec (optional)")
    bilevel.add_argument("--max-retain", type=int, default=None,
                         help="use only the first N retain samples")
    bilevel.add_argument("--steps", type=int, default=DEFAULTS.steps,
                         help="inner unlearning steps T")
    bilevel.add_argument("--inner-lr", type=float, default=DEFAULTS.inner_lr,
                         help="inner gradient-descent learning rate eta")
    bilevel.add_argument("--retain-weight", type=float, default=DEFAULTS.retain_weight,
                         help="weight alpha of the retain loss in the inner problem")
    bilevel.add_argument("--retain-penalty", type=float, default=DEFAULTS.retain_penalty,
                         help="outer penalty on the retain loss increase")
    bilevel.add_argument("--sparsity-penalty", type=float, default=DEFAULTS.sparsity_penalty,
                         help="outer penalty sum w(1-w) pushing weights to 0 or 1")
    bilevel.add_argument("--outer-steps", type=int, default=DEFAULTS.outer_steps,
                         help="projected-gradient steps on the sample weights")
    bilevel.add_argument("--outer-lr", type=float, default=DEFAULTS.outer_lr,
                         help="largest weight change per projected-gradient step")
    bilevel.add_argument("--solver", choices=SOLVERS, default="auto",
                         help="gram (T=1 closed form), unrolled, or auto (gram when T=1)")
    bilevel.add_argument("--sketch-dim", type=int, default=None,
                         help="project per-sample gradients to this many dimensions (gram "
                              "solver; default: exact gradients)")
    bilevel.add_argument("--sketch-kind", choices=SKETCH_KINDS, default="rademacher",
                         help="dense +-1 or Gaussian projection (fast on a GPU), or a count "
                              "sketch (O(parameters) per batch, for large models on a CPU)")
    bilevel.add_argument("--batch-size", type=positive_int, default=8,
                         help="samples per batch (default: %(default)s)")
    bilevel.add_argument("--max-length", type=positive_int, default=None,
                         help="truncate sequences to this many tokens (default: model context)")
    parser.set_defaults(func=run, dtype="float32")


def _require(args: argparse.Namespace, flags: dict[str, object]) -> None:
    missing = [flag for flag, value in flags.items() if not value]
    if missing:
        raise UnlearnscopeError(f"--method {args.method} needs {', '.join(missing)}")


def _vote(args: argparse.Namespace) -> AnchorSets:
    _require(args, {"--outcomes": args.outcomes})
    tables = read_outcome_files(args.outcomes, args.method_names)
    first = next(iter(tables.values()))
    return vote_anchor_sets(tables, args.k, first["sample_id"].astype(str).tolist(),
                            fit_fraction=args.fit_fraction, seed=args.seed,
                            options=options_of(args),
                            diagnostics={"methods": list(tables), "data": args.data})


def _bilevel(args: argparse.Namespace) -> tuple[AnchorSets, int]:
    """The bilevel anchor sets and how many samples were cut to the length limit."""
    _require(args, {"--model": args.model, "--data": args.data})
    forget = samples_from(args, args.data)
    retain = None
    if args.retain:
        retain = load_samples(args.retain, data_dir=args.data_dir)[: args.max_retain]
    fit_ids, held_out = split_fit([s.id for s in forget], args.fit_fraction, args.seed)
    chosen = set(fit_ids)
    model, tokenizer = load_args_model(args)
    settings = BilevelSettings(
        steps=args.steps, inner_lr=args.inner_lr, retain_weight=args.retain_weight,
        retain_penalty=args.retain_penalty, sparsity_penalty=args.sparsity_penalty,
        outer_steps=args.outer_steps, outer_lr=args.outer_lr)
    result = bilevel_anchors(model, tokenizer, [s for s in forget if s.id in chosen], retain,
                             args.k, settings=settings, solver=args.solver,
                             sketch_dim=args.sketch_dim, sketch_kind=args.sketch_kind,
                             seed=args.seed, batch_size=args.batch_size,
                             max_length=args.max_length)
    return AnchorSets("bilevel", args.k, result.easy, result.hard, fit_ids, held_out,
                      options=options_of(args),
                      diagnostics={"weights": result.weights, "objective": result.objective,
                                   "data": args.data}), result.n_truncated


def run(args: argparse.Namespace) -> int:
    anchors, n_truncated = (_vote(args), None) if args.method == "vote" else _bilevel(args)
    write_config(args.out, "anchors", options_of(args), n_truncated=n_truncated)
    path = write_anchors(args.out, anchors)
    print(f"{args.method} anchors from {len(anchors.fit_ids)} samples "
          f"({len(anchors.held_out_ids)} held out) -> {path}")
    print(f"easy: {', '.join(anchors.easy)}")
    print(f"hard: {', '.join(anchors.hard)}")
    return 0

"""`unlearnscope finetune`: make the target model (or a retain model) by fine-tuning."""

from __future__ import annotations

import argparse
from pathlib import Path

from unlearnscope.cli._common import (
    add_data_args,
    add_model_args,
    add_run_args,
    check_max_length,
    load_args_model,
    options_of,
    positive_float,
    positive_int,
)
from unlearnscope.data import load_samples
from unlearnscope.errors import UnlearnscopeError
from unlearnscope.layout import FINETUNE_FILE
from unlearnscope.models.finetune import FinetuneConfig, build_tiny, finetune, finished_run
from unlearnscope.models.precision import PRECISIONS
from unlearnscope.models.tiny import TinyConfig
from unlearnscope.runs import read_json, record_truncation, write_config


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a model on QA data (target or retain model)",
        description="Train answer tokens only; saves with save_pretrained plus the tokenizer. "
                    "--model tiny builds a small Llama with its own tokenizer trained on the data.",
    )
    add_model_args(parser)
    add_data_args(parser, max_samples_help="use only the first N training samples: those of "
                                           "--data, then of each --extra-data, in that order "
                                           "(not --target-data)")
    parser.add_argument("--extra-data", action="append", default=[],
                        help="more dataset specs to train on (e.g. the retain split)")
    add_run_args(parser)
    parser.add_argument("--epochs", type=positive_int, default=3,
                        help="training epochs (default: %(default)s)")
    parser.add_argument("--lr", type=positive_float, default=1e-5,
                        help="peak learning rate (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="samples per batch (default: %(default)s)")
    parser.add_argument("--grad-accum", type=positive_int, default=1,
                        help="micro-batches per optimizer step (default: %(default)s)")
    parser.add_argument("--warmup-ratio", type=float, default=0.1,
                        help="fraction of the optimizer updates in linear warm-up (then linear "
                             "decay to 0)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="also checkpoint every N batches (every epoch always ends with a "
                             "checkpoint; --resume continues from the last one)")
    parser.add_argument("--target-prob", type=float, default=None,
                        help="stop after the first epoch where the mean answer probability on "
                             "the --target-data samples reaches this (default: on all the "
                             "training data, --data and --extra-data)")
    parser.add_argument("--target-data", action="append", default=[], metavar="SPEC",
                        help="dataset spec whose samples --target-prob is measured on, e.g. "
                             "tofu:forget05 when training on forget05 + retain95 (repeatable; "
                             "taken whole, --max-samples does not apply)")
    parser.add_argument("--max-length", type=positive_int, default=None,
                        help="truncate sequences to this many tokens (default: model context)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="float32, or bf16-autocast: each batch's forward and loss in "
                             "bfloat16 autocast, weights, gradients and AdamW state float32 "
                             "(faster on CPUs with AVX-512 BF16 and on GPUs; evaluations stay "
                             "float32)")
    parser.add_argument("--tokenizer-texts", default=None,
                        help="for --model tiny: dataset spec whose texts train the tokenizer "
                             "(default: the training data)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    samples = [s for spec in [args.data, *args.extra_data]
               for s in load_samples(spec, data_dir=args.data_dir)]
    if args.max_samples is not None:
        samples = samples[: args.max_samples]
    if args.target_data and args.target_prob is None:
        raise UnlearnscopeError("--target-data names the samples --target-prob is measured "
                                "on: give --target-prob too")
    target = [s for spec in args.target_data for s in load_samples(spec, data_dir=args.data_dir)]
    config = FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                            grad_accum=args.grad_accum, warmup_ratio=args.warmup_ratio,
                            weight_decay=args.weight_decay, seed=args.seed,
                            checkpoint_every=args.checkpoint_every, target_prob=args.target_prob,
                            max_length=args.max_length, precision=args.precision)
    if args.resume:  # a finished run with other settings is refused before anything is written
        finished_run(args.out, config, len(samples), len(target or samples))
    if args.model == "tiny":
        vocab_source = (load_samples(args.tokenizer_texts, data_dir=args.data_dir)
                        if args.tokenizer_texts else samples)
        model, tokenizer = build_tiny(vocab_source, seed=args.seed, config=TinyConfig())
        check_max_length(args, tokenizer, model)
    else:
        model, tokenizer = load_args_model(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_config(args.out, "finetune", options_of(args))
    finetune(model, tokenizer, samples, args.out, config, resume=args.resume,
             target_samples=target or None)
    recorded = read_json(Path(args.out) / FINETUNE_FILE)
    if "n_truncated" in recorded:  # absent from runs finished by an older version
        record_truncation(args.out, recorded["n_truncated"])
    return 0

"""`unlearnscope steps-to-forget`: unlearn each sample alone and count steps to forget it."""

from __future__ import annotations

import argparse

from unlearnscope import distributed
from unlearnscope.cli._common import (
    add_data_args,
    add_model_args,
    add_run_args,
    key_values,
    load_args_model,
    options_of,
    samples_from,
)
from unlearnscope.cli.unlearn import add_training_args
from unlearnscope.unlearning.steps_to_forget import StepsToForgetConfig, steps_to_forget


def register(subparsers) -> None:
    defaults = StepsToForgetConfig()
    parser = subparsers.add_parser(
        "steps-to-forget", help="per sample: optimizer steps until its probability halves",
        description="Unlearns every sample on its own copy of the model and writes "
                    "OUT/steps_to_forget.parquet (sample_id, steps_to_forget, "
                    "interpolated_steps: the step at which the loss, linear between steps, "
                    "crosses the threshold, capped, prob_before, prob_final, loss_before, "
                    "loss_final). Copies are trained "
                    "together with torch.func.vmap; samples are split across processes under "
                    "torchrun / accelerate launch; --resume skips finished samples.",
    )
    add_model_args(parser)
    add_data_args(parser, max_samples_help="use only the first N samples of --data, and the "
                                           "first N of --retain")
    add_data_args(parser, flag="--retain", required=False)
    add_run_args(parser)
    add_training_args(parser)
    parser.add_argument("--tau", type=float, default=defaults.tau,
                        help="forgotten when prob < tau * prob_before")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps,
                        help="cap; capped samples report it with capped=true")
    parser.add_argument("--copies", type=int, default=None,
                        help="samples trained at once (default: as many as fit the budget)")
    parser.add_argument("--memory-budget-gb", type=float, default=defaults.memory_budget_gb,
                        help="memory for the copies trained at once (trainable parameters, "
                             "gradients, Adam moments); sets --copies when not given")
    parser.add_argument("--retain-batch-size", type=int, default=defaults.retain_batch_size,
                        help="retain samples per step (methods with a retain loss)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    samples = samples_from(args, args.data)
    retain = samples_from(args, args.retain) if args.retain else None
    config = StepsToForgetConfig(
        method=args.method, method_options=key_values(args.method_option, "--method-option"), lr=args.lr,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm or None, tau=args.tau,
        max_steps=args.max_steps, copies=args.copies, memory_budget_gb=args.memory_budget_gb,
        retain_batch_size=args.retain_batch_size, seed=args.seed, max_length=args.max_length)
    model, tokenizer = load_args_model(args)
    table = steps_to_forget(model, tokenizer, samples, retain_samples=retain, config=config,
                            out_dir=args.out, run_options=options_of(args), resume=args.resume)
    if distributed.is_main():
        print(f"{(~table['capped']).sum()} of {len(table)} samples forgotten within "
              f"{config.max_steps} steps; median steps {table['steps_to_forget'].median():g} "
              f"-> {args.out}/steps_to_forget.parquet")
    return 0

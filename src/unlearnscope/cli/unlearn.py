"""`unlearnscope unlearn`: run one unlearning method and record per-sample outcomes.

With `--seeds 0,1,2` the method runs once per seed, each from a fresh copy of the model, into
`OUT/seed<s>/` (the layout `layout.read_seed_outcomes` reads), so validation can
measure how much the outcomes move with the seed (which fixes the forget order and the retain
batches).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from pathlib import Path

from unlearnscope import distributed
from unlearnscope.cli._common import (
    add_data_args,
    add_model_args,
    add_run_args,
    key_values,
    load_args_model,
    options_of,
    positive_float,
    positive_int,
    samples_from,
)
from unlearnscope.errors import UnlearnscopeError
from unlearnscope.layout import OUTCOMES_FILE, seed_folder
from unlearnscope.models.precision import PRECISIONS
from unlearnscope.runs import write_config
from unlearnscope.unlearning.circuit_mask import CIRCUIT_MASKS
from unlearnscope.unlearning.methods import METHODS, NLL_WEIGHTINGS, RMU_SETTINGS
from unlearnscope.unlearning.samplers import SCHEDULES
from unlearnscope.unlearning.trainer import (
    UnlearnConfig,
    check_resume,
    plan_steps,
    run_unlearning,
)

METHOD_OPTIONS_HELP = (
    "override a method setting; values are JSON (e.g. trainable_layers=[1,2]) or plain "
    "strings. Every method: gamma (forget weight), alpha (retain weight), retain_loss (nll|kl), "
    f"nll_weighting ({'|'.join(NLL_WEIGHTINGS)}: answer-NLL terms are means over the batch's "
    "answer tokens, or over samples). npo, undial: beta; simnpo: beta, delta. rmu: setting "
    f"({'|'.join(RMU_SETTINGS)}: the defaults of the options not given), layer (the steered "
    "block), steering_coeff (a number, or auto: steering_scale times the mean hidden-state "
    "norm at that block on the forget answers), steering_scale, trainable_layers (all, or a "
    "list of block indices), trainable_params (a regex inside those blocks), seed; its "
    "retain_loss is hidden_mse (or nll|kl)")


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by `unlearn` and `steps-to-forget`."""
    parser.add_argument("--method", required=True, choices=sorted(METHODS),
                        help="unlearning method")
    parser.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                        help=METHOD_OPTIONS_HELP)
    parser.add_argument("--lr", type=positive_float, default=1e-5,
                        help="peak learning rate (default: %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    parser.add_argument("--max-grad-norm", type=float, default=1.0,
                        help="clip the gradient norm (0 = no clipping)")
    parser.add_argument("--max-length", type=positive_int, default=None,
                        help="truncate sequences to this many tokens (default: model context)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "unlearn", help="unlearn a forget set with one method; write per-sample outcomes",
        description="Writes OUT/outcomes.parquet (per forget sample: loss, prob before/after, "
                    "efficacy, delta_loss[, rouge]), OUT/summary.json, OUT/training.parquet, "
                    "OUT/trajectory.parquet (--track-every) and the model in OUT/model "
                    "(unless --no-save). With several --seeds, the same files per seed in "
                    "OUT/seed<s>/ (models only with --save-models). Data parallel under "
                    "torchrun / accelerate launch.",
    )
    add_model_args(parser)
    add_data_args(parser, flag="--forget",
                  max_samples_help="use only the first N samples of --forget, and the first N "
                                   "of --retain")
    add_data_args(parser, flag="--retain", required=False)
    add_run_args(parser)
    add_training_args(parser)
    defaults = UnlearnConfig()
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs,
                        help="training epochs (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                        help="forget samples per batch, per process and micro-step; as many "
                             "retain samples")
    parser.add_argument("--grad-accum", type=positive_int, default=defaults.grad_accum,
                        help="micro-batches per optimizer step (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="optimizer steps (overrides --epochs)")
    parser.add_argument("--warmup-epochs", type=float, default=defaults.warmup_epochs,
                        help="linear learning-rate warm-up, in epochs (fractions allowed); "
                             "one that leaves no optimizer step above lr 0 is refused (the "
                             "steps above 0 are recorded as steps_with_lr)")
    parser.add_argument("--lr-scheduler", default=defaults.lr_scheduler,
                        help="transformers scheduler name: linear, constant_with_warmup, cosine")
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="checkpoint every N optimizer steps into OUT/checkpoint")
    parser.add_argument("--no-save", action="store_true", help="do not save the model")
    parser.add_argument("--seeds", default=None, metavar="S,S,...",
                        help="run once per seed (e.g. 0,1,2), each from a fresh copy of the "
                             "model, into OUT/seed<s>/; one seed is the same as --seed")
    parser.add_argument("--save-models", action="store_true",
                        help="with several --seeds, also save each seed's model in "
                             "OUT/seed<s>/model (not saved by default)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="uniform",
                        help="which forget samples each step draws: uniform, weighted (by "
                             "ease, annealed to uniform) or a curriculum; all but uniform "
                             "read --difficulty")
    parser.add_argument("--difficulty", default=None,
                        help="score table (scores.parquet) for weighted / curriculum schedules")
    parser.add_argument("--scorer", default=None,
                        help="which scorer of the table (needed when it holds several)")
    parser.add_argument("--curriculum-chunks", type=int, default=None,
                        help="curriculum chunks; the pool grows by one at each equal "
                             "fraction of the run's sample slots, steps x global batch "
                             "(default: --epochs, one per epoch without --max-steps)")
    parser.add_argument("--track-every", type=int, default=0,
                        help="record every forget sample's loss every N steps")
    parser.add_argument("--rouge", action="store_true",
                        help="also ROUGE-L recall of greedy answers before and after")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="for --rouge (default: the longest reference answer of a batch)")
    parser.add_argument("--eval-batch-size", type=int, default=defaults.eval_batch_size,
                        help="samples per batch of the before/after evaluations")
    parser.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                        help="float32, or bf16-autocast: each step's forward and loss (the "
                             "reference model's too) in bfloat16 autocast, weights, gradients "
                             "and AdamW state float32; the before/after evaluations stay "
                             "float32")
    parser.add_argument("--retain-eval-limit", type=int, default=None,
                        help="evaluate at most N retain samples (a seeded random subset)")
    parser.add_argument("--circuit-mask", choices=CIRCUIT_MASKS, default=None,
                        help="update only the attention heads and MLPs of circuits: "
                             "hard-anchors (the union of the hard anchors' circuits), batch "
                             "(each step the union of its forget samples' circuits) or random "
                             "(random components with the hard-anchor mask's parameter count)")
    parser.add_argument("--circuits", default=None, metavar="RUN_DIR",
                        help="for --circuit-mask: a circuit store, or a run folder holding "
                             "circuits/ (and anchors/anchors.json)")
    parser.add_argument("--mask-top-n", type=float, default=defaults.mask_top_n,
                        help="edges of each sample's circuit (a count, or a fraction of the "
                             "edges below 1), pruned")
    parser.add_argument("--mask-anchors", default=None,
                        help="anchors.json of the hard anchors (default: RUN_DIR/anchors/)")
    parser.add_argument("--mask-seed", type=int, default=None,
                        help="seed of the random control (default: --seed)")
    parser.set_defaults(func=run)


def parse_seeds(text: str) -> list[int]:
    """`"0,1,2"` -> `[0, 1, 2]`: distinct integers in the given order."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UnlearnscopeError(f"--seeds '{text}': expected comma-separated integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UnlearnscopeError(f"--seeds '{text}': expected distinct seeds, e.g. 0,1,2")
    return seeds


def _print_summary(summary: dict, where: Path, prefix: str = "") -> None:
    for part in ("forget", "retain"):
        if part in summary:
            s = summary[part]
            print(f"{prefix}{part}: loss {s['loss_before']:.4f} -> {s['loss_after']:.4f}, "
                  f"prob {s['prob_before']:.4f} -> {s['prob_after']:.4f}")
    print(f"{prefix}mean efficacy {summary['mean_efficacy']:.4f} -> {where}/outcomes.parquet")


def run(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds) if args.seeds else [args.seed]
    forget = samples_from(args, args.forget)
    retain = samples_from(args, args.retain) if args.retain else []
    config = UnlearnConfig(
        method=args.method, method_options=key_values(args.method_option, "--method-option"),
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
        warmup_epochs=args.warmup_epochs, lr_scheduler=args.lr_scheduler,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm or None,
        max_steps=args.max_steps, seed=seeds[0], schedule=args.schedule,
        curriculum_chunks=args.curriculum_chunks, checkpoint_every=args.checkpoint_every,
        track_every=args.track_every, rouge=args.rouge, max_new_tokens=args.max_new_tokens,
        eval_batch_size=args.eval_batch_size, retain_eval_limit=args.retain_eval_limit,
        max_length=args.max_length, precision=args.precision, circuit_mask=args.circuit_mask,
        circuits=args.circuits, mask_top_n=args.mask_top_n, mask_anchors=args.mask_anchors,
        mask_seed=args.mask_seed)
    plan_steps(config, len(forget), distributed.process_state().num_processes)  # refuses early
    out = Path(args.out)
    folders = {seed: seed_folder(out, seed, seeds) for seed in seeds}
    if args.resume:
        for seed, folder in folders.items():
            check_resume(folder, dataclasses.replace(config, seed=seed))
    model, tokenizer = load_args_model(args)
    if len(seeds) == 1:
        result = run_unlearning(model, tokenizer, forget, retain, config=config,
                                difficulty=args.difficulty, scorer=args.scorer, out_dir=args.out,
                                save=not args.no_save, resume=args.resume,
                                run_options=options_of(args))
        if distributed.is_main():
            _print_summary(result.summary, Path(args.out))
        return 0
    if distributed.is_main():
        write_config(out, "unlearn", {**options_of(args), "seeds": seeds})
    pristine = model.to("cpu")  # each seed trains its own copy; this one stays untouched
    for seed, folder in folders.items():
        if args.resume and (folder / OUTCOMES_FILE).is_file():
            if distributed.is_main():
                print(f"seed {seed}: finished earlier, kept")
            continue
        result = run_unlearning(copy.deepcopy(pristine), tokenizer, forget, retain,
                                config=dataclasses.replace(config, seed=seed),
                                difficulty=args.difficulty, scorer=args.scorer, out_dir=folder,
                                save=args.save_models, resume=args.resume,
                                run_options={**options_of(args), "seed": seed})
        if distributed.is_main():
            _print_summary(result.summary, folder, prefix=f"seed {seed}: ")
        del result
    return 0

"""`unlearnscope evaluate`: TOFU metrics of a model (forget quality, utility, MIA, privleak)."""

from __future__ import annotations

import argparse
from pathlib import Path

from unlearnscope.cli._common import (
    add_model_args,
    check_max_length,
    load_args_model,
    options_of,
    output_folder,
    positive_int,
)
from unlearnscope.data import load_samples
from unlearnscope.data.tofu import evaluation_splits
from unlearnscope.evaluation.mia import DEFAULT_K
from unlearnscope.evaluation.open_unlearning import read_retain_logs
from unlearnscope.evaluation.tofu import (
    RetainReference,
    evaluate_tofu,
    metrics_report,
    retain_reference,
)
from unlearnscope.layout import METRICS_FILE, PER_SAMPLE_FILE
from unlearnscope.models import load_model
from unlearnscope.models.generation import DEFAULT_MAX_NEW_TOKENS
from unlearnscope.runs import record_truncation, write_config, write_json, write_parquet

BENCHMARKS = ("tofu", "synthetic")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="TOFU metrics: forget quality, model utility, MIA AUCs, privleak",
        description="Write OUT/metrics.json (aggregate metrics; null with a reason under "
                    "'missing' when a metric cannot be computed), OUT/per_sample.parquet and "
                    "OUT/config.json. Forget quality and privleak need a retain model: "
                    "--retain-model evaluates one here, --retain-logs reads the metrics.json "
                    "this command wrote for it (or an open-unlearning TOFU_EVAL.json).",
    )
    add_model_args(parser)
    parser.add_argument("--benchmark", choices=BENCHMARKS, default="tofu",
                        help="tofu (local TOFU files or the hub) or synthetic (the built-in "
                             "made-up authors: retain numbers only for utility)")
    parser.add_argument("--forget-split", default="forget10",
                        help="TOFU forget split: forget01, forget05 or forget10")
    parser.add_argument("--data-options", default="",
                        help="query string for the synthetic generator, e.g. 'n_authors=40'")
    retain = parser.add_mutually_exclusive_group()
    retain.add_argument("--retain-model", default=None,
                        help="model trained without the forget set (for forget quality, privleak)")
    retain.add_argument("--retain-logs", default=None,
                        help="metrics.json of this command on the retain model, or "
                             "open-unlearning's TOFU_EVAL.json")
    parser.add_argument("--data-dir", default=None,
                        help="local TOFU folder (else $UNLEARNSCOPE_TOFU_DIR, else the hub)")
    parser.add_argument("--max-samples", type=positive_int, default=None,
                        help="use only the first N samples of every split")
    parser.add_argument("--batch-size", type=positive_int, default=16,
                        help="samples per batch (default: %(default)s)")
    parser.add_argument("--max-length", type=positive_int, default=None,
                        help="cut sequences to this many tokens (default: the model's "
                             "context size); the cut samples are counted in config.json")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help="greedy generation length for ROUGE")
    parser.add_argument("--k", type=float, default=DEFAULT_K,
                        help="fraction of tokens for the min-k and min-k++ attacks")
    parser.add_argument("--no-gradnorm", action="store_true",
                        help="skip the gradient-norm attack (one backward pass per sample)")
    parser.add_argument("--out", required=True, type=output_folder, help="output folder")
    parser.set_defaults(func=run)


def _split_specs(args: argparse.Namespace) -> dict[str, str]:
    """Dataset spec of each evaluation set."""
    if args.benchmark == "synthetic":
        query = f"?{args.data_options}" if args.data_options else ""
        return {name: f"synthetic:authors/{name}{query}"
                for name in ("forget", "holdout", "retain")}
    return {name: f"tofu:{split}" for name, split in
            evaluation_splits(args.forget_split, field="--forget-split").items()}


def _load_sets(args: argparse.Namespace) -> tuple[dict[str, list], list]:
    """The evaluation sets (cut to --max-samples) and the whole forget split."""
    sets, full_forget = {}, []
    for name, spec in _split_specs(args).items():
        samples = load_samples(spec, data_dir=args.data_dir)
        if name == "forget":
            full_forget = samples
        sets[name] = samples if args.max_samples is None else samples[: args.max_samples]
    return sets, full_forget


def _retain_reference(args: argparse.Namespace, sets: dict[str, list], full_forget: list
                      ) -> tuple[RetainReference, str | None]:
    """Forget truth ratios and min-k AUC of the retain model (None without one), and where
    they came from."""
    if args.retain_logs:
        reference = read_retain_logs(args.retain_logs, [s.id for s in full_forget],
                                     args.forget_split if args.benchmark == "tofu" else None)
        return reference, f"logs:{args.retain_logs}"
    if args.retain_model:
        model, tokenizer = load_model(args.retain_model, dtype=args.dtype,
                                      trust_remote_code=args.trust_remote_code)
        check_max_length(args, tokenizer, model)
        reference = retain_reference(model, tokenizer, forget=sets["forget"],
                                     holdout=sets.get("holdout"), batch_size=args.batch_size,
                                     k=args.k, max_length=args.max_length)
        del model
        return reference, f"model:{args.retain_model}"
    return RetainReference(), None


def run(args: argparse.Namespace) -> int:
    sets, full_forget = _load_sets(args)
    reference, reference_source = _retain_reference(args, sets, full_forget)
    model, tokenizer = load_args_model(args)
    write_config(args.out, "evaluate", options_of(args))
    result = evaluate_tofu(
        model, tokenizer, forget=sets["forget"], holdout=sets.get("holdout"),
        retain=sets.get("retain"), retain_perturbed=sets.get("retain_perturbed"),
        real_authors=sets.get("real_authors"), world_facts=sets.get("world_facts"),
        retain_truth_ratios=reference.truth_ratios, retain_mia_auc=reference.mia_auc,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, k=args.k,
        gradnorm=not args.no_gradnorm, max_length=args.max_length,
    )
    record_truncation(args.out, result["n_truncated"])
    report = metrics_report(
        result, benchmark=args.benchmark, model=args.model, retain_reference=reference_source,
        forget_split=args.forget_split,
        n_samples={name: len(samples) for name, samples in sets.items()},
    )
    out = Path(args.out)
    write_json(out / METRICS_FILE, report)
    write_parquet(out / PER_SAMPLE_FILE, result["per_sample"])
    _print_summary(result["metrics"], result["missing"], out)
    return 0


def _print_summary(metrics: dict[str, float | None], missing: dict[str, str], out: Path) -> None:
    for name in ("forget_quality", "model_utility", "forget_truth_ratio", "forget_prob",
                 "forget_rouge", "extraction_strength", "exact_memorization", "privleak"):
        value = metrics.get(name)
        text = f"{value:.4g}" if value is not None else f"missing ({missing.get(name, '?')})"
        print(f"{name:>20}: {text}")
    print(f"-> {out}/metrics.json, {out}/per_sample.parquet")

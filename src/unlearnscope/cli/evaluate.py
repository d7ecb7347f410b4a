"""`unlearnscope evaluate`: TOFU metrics of a model (forget quality, utility, MIA, privleak)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from unlearnscope.cli._common import add_model_args, options_of, output_folder, positive_int
from unlearnscope.data import load_samples
from unlearnscope.errors import DataError
from unlearnscope.evaluation.mia import DEFAULT_K
from unlearnscope.evaluation.tofu import (
    PRIVLEAK_ATTACK,
    evaluate_tofu,
    metrics_report,
    retain_reference,
)
from unlearnscope.layout import METRICS_FILE, PER_SAMPLE_FILE
from unlearnscope.models import load_model
from unlearnscope.models.generation import DEFAULT_MAX_NEW_TOKENS
from unlearnscope.runs import write_config, write_json, write_parquet

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
    match = re.fullmatch(r"forget(\d\d)", args.forget_split)
    if match is None:
        raise DataError(f"TOFU forget split '{args.forget_split}' is not forgetXX "
                        "(forget01, forget05, forget10)", field="--forget-split")
    return {"forget": f"tofu:{args.forget_split}_perturbed",
            "holdout": f"tofu:holdout{match.group(1)}",
            "retain_perturbed": "tofu:retain_perturbed",
            "real_authors": "tofu:real_authors_perturbed",
            "world_facts": "tofu:world_facts_perturbed"}


def _load_sets(args: argparse.Namespace) -> tuple[dict[str, list], list]:
    """The evaluation sets (cut to --max-samples) and the whole forget split."""
    sets, full_forget = {}, []
    for name, spec in _split_specs(args).items():
        samples = load_samples(spec, data_dir=args.data_dir)
        if name == "forget":
            full_forget = samples
        sets[name] = samples if args.max_samples is None else samples[: args.max_samples]
    return sets, full_forget


def read_retain_logs(path: str | Path, forget_ids: list[str], forget_split: str | None = None
                     ) -> tuple[dict[str, float], float | None]:
    """(per-sample forget truth ratios keyed by sample id, min-k MIA AUC or None) from a
    metrics.json written by `evaluate`, or from an open-unlearning TOFU_EVAL.json (whose
    `value_by_index` keys are row numbers of the forget split, mapped to `forget_ids`)."""
    source = str(path)
    try:
        logs = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("retain logs not found", source=source) from None
    except json.JSONDecodeError as error:
        raise DataError(f"not JSON ({error})", source=source) from None
    if not isinstance(logs, dict):
        raise DataError("expected a JSON object", source=source)
    if "forget_truth_ratios" in logs:
        logged_split = logs.get("forget_split")
        if forget_split is not None and logged_split not in (None, forget_split):
            raise DataError(f"logs are for {logged_split}, not {forget_split}", source=source,
                            field="forget_split")
        ratios = logs["forget_truth_ratios"]
        if not isinstance(ratios, dict) or not ratios:
            raise DataError("no per-sample truth ratios", source=source,
                            field="forget_truth_ratios")
        auc = logs.get(f"mia_{PRIVLEAK_ATTACK}")
        return {str(k): float(v) for k, v in ratios.items()}, auc
    entry = logs.get("forget_truth_ratio")
    if isinstance(entry, dict) and isinstance(entry.get("value_by_index"), dict):
        ratios = {}
        for index, value in entry["value_by_index"].items():
            row = int(index)
            if row >= len(forget_ids):
                raise DataError(f"row {row} is beyond the {len(forget_ids)} forget samples",
                                source=source, field="forget_truth_ratio")
            ratios[forget_ids[row]] = float(value["score"])
        mia = logs.get(f"mia_{PRIVLEAK_ATTACK}")
        auc = mia.get("agg_value") if isinstance(mia, dict) else None
        return ratios, auc
    raise DataError("neither an `evaluate` metrics.json (forget_truth_ratios) nor an "
                    "open-unlearning log (forget_truth_ratio.value_by_index)", source=source)


def _retain_reference(args: argparse.Namespace, sets: dict[str, list], full_forget: list
                      ) -> tuple[dict[str, float] | None, float | None, str | None]:
    """Forget truth ratios and min-k AUC of the retain model, and where they came from."""
    if args.retain_logs:
        ratios, auc = read_retain_logs(args.retain_logs, [s.id for s in full_forget],
                                       args.forget_split if args.benchmark == "tofu" else None)
        return ratios, auc, f"logs:{args.retain_logs}"
    if args.retain_model:
        model, tokenizer = load_model(args.retain_model, dtype=args.dtype,
                                      trust_remote_code=args.trust_remote_code)
        reference = retain_reference(model, tokenizer, forget=sets["forget"],
                                     holdout=sets.get("holdout"), batch_size=args.batch_size,
                                     k=args.k)
        del model
        return dict(reference.truth_ratios), reference.mia_auc, f"model:{args.retain_model}"
    return None, None, None


def run(args: argparse.Namespace) -> int:
    sets, full_forget = _load_sets(args)
    write_config(args.out, "evaluate", options_of(args))
    retain_ratios, retain_auc, reference_source = _retain_reference(args, sets, full_forget)
    model, tokenizer = load_model(args.model, dtype=args.dtype,
                                  trust_remote_code=args.trust_remote_code)
    result = evaluate_tofu(
        model, tokenizer, forget=sets["forget"], holdout=sets.get("holdout"),
        retain=sets.get("retain"), retain_perturbed=sets.get("retain_perturbed"),
        real_authors=sets.get("real_authors"), world_facts=sets.get("world_facts"),
        retain_truth_ratios=retain_ratios, retain_mia_auc=retain_auc,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, k=args.k,
        gradnorm=not args.no_gradnorm,
    )
    report = metrics_report(
        result, benchmark=args.benchmark, model=args.model, retain_reference=reference_source,
        forget_split=args.forget_split if args.benchmark == "tofu" else "synthetic:forget",
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

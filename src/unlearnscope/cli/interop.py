"""`unlearnscope import-open-unlearning` and `unlearnscope export-weights`: open-unlearning's
evaluation logs as our outcome tables, our difficulty as its per-index weight files."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from unlearnscope.cli._common import options_of, output_folder
from unlearnscope.evaluation.open_unlearning import (
    LOSS_METRIC,
    WEIGHTINGS,
    import_outcomes,
    weight_table,
    write_weights,
)
from unlearnscope.layout import OUTCOMES_FILE, SUMMARY_FILE
from unlearnscope.runs import write_config, write_json, write_parquet
from unlearnscope.unlearning.outcomes import loss_summary


def register(subparsers) -> None:
    imported = subparsers.add_parser(
        "import-open-unlearning",
        help="open-unlearning TOFU_EVAL.json logs (before, after unlearning) -> outcomes.parquet",
        description="Read the per-row forget probabilities (forget_Q_A_Prob.value_by_index) of "
                    "open-unlearning's evaluation of the model before unlearning and of the "
                    "unlearned model, and write OUT/outcomes.parquet (per sample: loss and prob "
                    "before/after, efficacy = 1 - prob_after/prob_before clipped to [0, 1], "
                    "delta_loss; ROUGE-L recall before/after when both logs hold "
                    "forget_Q_A_ROUGE), OUT/summary.json and OUT/config.json, for `validate "
                    "--outcomes` and `anchors --outcomes`. Row i becomes sample "
                    "forgetXX_perturbed-<i:05d>, the id `tofu:forgetXX` and "
                    "`tofu:forgetXX_perturbed` give that question (another --id-prefix P: "
                    "P-<i:05d>).",
    )
    imported.add_argument("--before", required=True,
                          help="TOFU_EVAL.json of the model before unlearning (the target)")
    imported.add_argument("--after", required=True,
                          help="TOFU_EVAL.json of the unlearned model")
    imported.add_argument("--id-prefix", default=None,
                          help="the evaluated split, which names the sample ids (default: the "
                               "TOFU forget split with the logs' number of rows: 400 -> "
                               "forget10, 200 -> forget05, 40 -> forget01; forget10 and "
                               "forget10_perturbed both give forget10_perturbed-<row>)")
    imported.add_argument("--metric", default=LOSS_METRIC,
                          help=f"per-row probability metric to read (default {LOSS_METRIC}; "
                               "forget_Q_A_PARA_Prob for the paraphrased questions)")
    imported.add_argument("--method", default=None,
                          help="method name in summary.json, used by `anchors` (default: the "
                               "--out folder's name)")
    imported.add_argument("--out", required=True, type=output_folder, help="output folder")
    imported.set_defaults(func=run_import)

    exported = subparsers.add_parser(
        "export-weights",
        help="one scorer's difficulty as a per-index weight file for open-unlearning trainers",
        description="Write FILE (JSON): per row of the forget split (from the sample ids, "
                    "<split>-<row>), the sample id, our difficulty (higher = harder) and a "
                    "weight scaled to mean 1. --weighting ease: our `weighted` schedule's "
                    "weights (the MRD value for mrd, else the rank of ease); hardness: the rank "
                    "of difficulty. The README's 'open-unlearning interop' section shows the "
                    "format and how a trainer uses it.",
    )
    exported.add_argument("--scores", required=True, help="scores.parquet of `score`")
    exported.add_argument("--scorer", required=True, help="scorer whose difficulty is used")
    exported.add_argument("--weighting", choices=WEIGHTINGS, default="ease",
                          help="ease: easy rows weigh more (default); hardness: hard rows do")
    exported.add_argument("--id-prefix", default=None,
                          help="required split part of the sample ids (default: whichever one "
                               "split they share; forget10 names forget10_perturbed-<row>)")
    exported.add_argument("--out", required=True, help="weight file to write (.json)")
    exported.set_defaults(func=run_export)


def run_import(args: argparse.Namespace) -> int:
    table = import_outcomes(args.before, args.after, id_prefix=args.id_prefix,
                            metric=args.metric)
    out = Path(args.out)
    write_config(out, "import-open-unlearning", options_of(args))
    summary = {
        "method": args.method or out.resolve().name, "source": "open-unlearning",
        "before": args.before, "after": args.after, "metric": args.metric,
        "n_forget": len(table),
        "forget": loss_summary(table["loss_before"].to_numpy(), table["loss_after"].to_numpy()),
        "mean_efficacy": float(table["efficacy"].mean()),
    }
    write_parquet(out / OUTCOMES_FILE, table)
    write_json(out / SUMMARY_FILE, summary)
    print(f"{len(table)} samples ({table['sample_id'].iloc[0]} ...), mean efficacy "
          f"{summary['mean_efficacy']:.4f} -> {out}/outcomes.parquet")
    return 0


def run_export(args: argparse.Namespace) -> int:
    table, id_prefix = weight_table(args.scores, args.scorer, weighting=args.weighting,
                                    id_prefix=args.id_prefix)
    write_weights(args.out, table, scorer=args.scorer, weighting=args.weighting,
                  id_prefix=id_prefix)
    weights = table["weight"].to_numpy()
    print(f"{len(table)} rows of {id_prefix}, {args.scorer} {args.weighting} weights "
          f"{np.min(weights):.3g}..{np.max(weights):.3g} (mean 1) -> {args.out}")
    return 0

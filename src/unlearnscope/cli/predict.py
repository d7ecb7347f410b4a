"""`unlearnscope predict`: learn difficulty from measured samples, rank the rest.

    unlearnscope predict --run DIR [--fit-ids FILE | --fit-measured] [--methods M ...]
                         [--merge] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unlearnscope.cli._common import output_folder
from unlearnscope.errors import DataError
from unlearnscope.layout import VALIDATION_DIR
from unlearnscope.runs import write_config


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="fit a difficulty predictor on measured samples, predict the others",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Per method (and 'mean'), fit a model from every scorer's difficulty, the "
                    "controls and the circuit\nstatistics to measured difficulty (-efficacy) "
                    "on the fit half, chosen by cross-validation\ninside it (ridge on ranks or "
                    "gradient-boosted trees), and predict every other sample.\n\n"
                    "inputs: DIR/scores.parquet, DIR/unlearn/<method>/outcomes.parquet, "
                    "DIR/anchors/anchors.json\n(its fit_ids are the default fit half), "
                    "DIR/circuits (if present).\n"
                    "writes: OUT/validation/prediction.csv/.md (held-out Spearman of the "
                    "predictor next to every\nscorer, with bootstrap intervals), "
                    "prediction_cross_method.csv, prediction_importance.csv,\n"
                    "prediction_selection.csv, prediction_summary.csv and OUT/predicted.parquet "
                    "(scorer\n'predicted:<method>', a score table); --merge also puts them into "
                    "DIR/scores.parquet.\n\n"
                    "'I unlearned 20% of my forget set and measured it; rank the other 80%': "
                    "put the 20%'s\noutcomes in DIR/unlearn/<method>/outcomes.parquet and "
                    "pass --fit-measured.",
    )
    parser.add_argument("--run", required=True, help="run folder")
    fit = parser.add_mutually_exclusive_group()
    fit.add_argument("--fit-ids", default=None,
                     help="the measured samples to fit on: an anchors.json (its fit_ids), a "
                          "JSON list of ids, or a text file with one id per line (default: "
                          "DIR/anchors/anchors.json)")
    fit.add_argument("--fit-measured", action="store_true",
                     help="fit on every sample that has an outcome of every method")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="targets (default: every method of DIR/unlearn, then 'mean')")
    parser.add_argument("--out", default=None, type=output_folder,
                        help="output folder (default: --run)")
    parser.add_argument("--merge", action="store_true",
                        help="replace the predicted:* rows of DIR/scores.parquet (refused when "
                             "validation would score the predictor on its own fit samples)")
    parser.add_argument("--no-circuits", action="store_true",
                        help="leave the circuit statistics out of the features")
    parser.add_argument("--no-anchor-scorers", action="store_true",
                        help="leave anchor-based scorers (CUD) out of the features: on the fit "
                             "half their anchors were voted from the same outcomes")
    parser.add_argument("--top-n", type=float, default=0.05,
                        help="edges per circuit for its statistics: a count, or a fraction of "
                             "the graph's edges (default 0.05)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--n-repeats", type=int, default=10,
                        help="shuffles per feature for the permutation importance")
    parser.add_argument("--seed", type=int, default=0,
                        help="folds, trees, bootstrap and permutations")
    parser.set_defaults(func=run)


def read_ids(path: str | Path) -> list[str]:
    """Sample ids from an `anchors.json` (`fit_ids`), a JSON list, or one id per line."""
    from unlearnscope.evaluation.validation import read_fit_ids

    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", source=str(path))
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        return sorted(read_fit_ids(path))
    if text.lstrip().startswith("["):
        try:
            ids = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"invalid JSON: {error.msg}", source=str(path),
                            line=error.lineno) from None
        return [str(i) for i in ids]
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise DataError("no sample ids", source=str(path))
    return ids


def run(args: argparse.Namespace) -> int:
    # imported here: scikit-learn and the circuit analysis would slow every command's start
    from unlearnscope.evaluation.prediction import (
        prediction_markdown,
        run_outcomes,
        write_prediction,
    )

    fit_ids = None
    if args.fit_ids is not None:
        fit_ids = read_ids(args.fit_ids)
    elif args.fit_measured:
        tables = run_outcomes(args.run).values()
        fit_ids = sorted(set.intersection(*({str(i) for i in t["sample_id"]} for t in tables)))
    out = Path(args.out or args.run)
    write_config(out / VALIDATION_DIR / "prediction", "predict",
                 {k: v for k, v in vars(args).items() if k != "func"})
    result = write_prediction(args.run, fit_ids=fit_ids, methods=args.methods, out_dir=out,
                              top_n=args.top_n, use_circuits=not args.no_circuits,
                              use_anchor_scorers=not args.no_anchor_scorers,
                              merge=args.merge, seed=args.seed, n_boot=args.n_boot,
                              n_repeats=args.n_repeats)
    print(prediction_markdown(result), end="")
    print(f"-> {out / 'validation' / 'prediction.csv'}, {out / 'predicted.parquet'}")
    return 0

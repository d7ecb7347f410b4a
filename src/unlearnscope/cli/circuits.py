"""`unlearnscope circuits`: per-sample EAP / EAP-IG circuits, their analysis and export.

    unlearnscope circuits --model M --data D --out DIR [...]   compute and store edge scores
    unlearnscope circuits analyze DIR [--groups FILE] [...]    statistics, tests and plots
    unlearnscope circuits export DIR (--samples IDS | --all-mean) --out FILE [...]
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import pandas as pd

from unlearnscope import distributed
from unlearnscope.circuits import graph_layout
from unlearnscope.circuits.attribution import BASELINES
from unlearnscope.circuits.compute import (
    ATTRIBUTION_DEFAULTS,
    ATTRIBUTION_PRESETS,
    check_resumable,
    compute_circuits,
    store_header,
)
from unlearnscope.circuits.export import FORMATS, export_from_store
from unlearnscope.circuits.metrics import METRICS
from unlearnscope.circuits.plan import METHODS, RULES
from unlearnscope.circuits.selection import SELECTORS, edge_count
from unlearnscope.circuits.store import CircuitStore
from unlearnscope.cli._common import (
    add_data_args,
    add_model_args,
    load_args_model,
    options_of,
    output_folder,
    positive_int,
    samples_from,
)
from unlearnscope.errors import DataError, UnlearnscopeError
from unlearnscope.layout import ANALYSIS_DIR, CIRCUITS_DIR, SUMMARY_FILE, store_folder
from unlearnscope.models.inputs import count_truncated
from unlearnscope.runs import read_json, write_config

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "circuits", help="per-sample EAP / EAP-IG circuits; analyze and export them",
        usage="unlearnscope circuits --model M --data D --out DIR [options]\n"
              "       unlearnscope circuits {analyze,export} DIR [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compute per-sample edge scores into OUT/circuits/ (float16 safetensors "
                    "shards with an index) and OUT/config.json. Shards samples across "
                    "processes under torchrun / accelerate launch; --resume skips stored "
                    "samples.",
        epilog="actions on a finished run:\n"
               "  unlearnscope circuits analyze DIR [--groups FILE] [--top-n N]\n"
               "  unlearnscope circuits export DIR (--samples ID[,ID] | --all-mean) "
               "--format pt|json --out FILE\n"
               "see `unlearnscope circuits analyze -h` and `... export -h`",
    )
    add_model_args(parser, required=False)
    add_data_args(parser, required=False)
    parser.add_argument("--out", type=output_folder, help="output folder")
    parser.add_argument("--resume", action="store_true",
                        help="keep the samples already stored in OUT/circuits")
    parser.add_argument("--preset", default=None, choices=sorted(ATTRIBUTION_PRESETS),
                        help="attribution settings by name; paper: the CUD authors' "
                             "(EAP-IG-activations, 5 steps, zero-activations baseline, left "
                             "rule, metric paper_prob_diff), what the cud_paper scorer needs")
    parser.add_argument("--method", default=None, choices=METHODS,
                        help=f"default: {ATTRIBUTION_DEFAULTS['method']}")
    parser.add_argument("--ig-steps", type=int, default=None,
                        help=f"integration steps (ignored by EAP; default "
                             f"{ATTRIBUTION_DEFAULTS['ig_steps']})")
    parser.add_argument("--baseline", default=None, choices=BASELINES,
                        help="what the clean run is compared against (default zero: a zero "
                             "token embedding; zero-activations: every writer at zero, "
                             "EAP-IG-activations only)")
    parser.add_argument("--rule", default=None, choices=RULES,
                        help="integration rule: left Riemann sum (the reference's, default) or "
                             "midpoint")
    parser.add_argument("--metric", default=None, choices=sorted(METRICS),
                        help=f"default: {ATTRIBUTION_DEFAULTS['metric']}")
    parser.add_argument("--backend", default="hooks", choices=["hooks", "bridge"],
                        help="hooks on the HF modules (faster) or TransformerLens' "
                             "TransformerBridge; same scores")
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="samples per batch (default: %(default)s)")
    parser.add_argument("--max-length", type=positive_int, default=None,
                        help="truncate sequences to this many tokens (default: model context)")
    parser.add_argument("--shard-size", type=positive_int, default=32,
                        help="samples per stored shard (the most a kill can lose)")
    parser.add_argument("--top-n", default="0.05",
                        help="edges in the summary's circuits: a count, or a fraction of the "
                             "graph's edges when below 1 (default 0.05)")
    parser.set_defaults(func=run)

    # prog given: argparse would derive it from the custom two-line usage above
    actions = parser.add_subparsers(dest="circuits_action", metavar="ACTION",
                                    title="actions (optional)", prog=parser.prog)
    analyze = actions.add_parser(
        "analyze", help="circuit statistics, easy/hard comparison and plots",
        description="Select each stored sample's circuit and write DIR/analysis/summary.json "
                    "(per-group statistics, aggregate circuits, two-sided Mann-Whitney and "
                    "permutation tests between groups, per-edge frequency comparison), "
                    "DIR/analysis/circuit_statistics.parquet and PNG plots.")
    analyze.add_argument("dir", help="run folder of `unlearnscope circuits` (or its circuits/)")
    analyze.add_argument("--groups", default=None,
                         help="CSV with columns sample_id,group, or JSON {sample_id: group} or "
                              "{group: [sample_id, ...]}; without it all samples form one set")
    add_selection_args(analyze)
    analyze.add_argument("--n-resamples", type=int, default=9999,
                         help="permutations of the permutation tests")
    analyze.add_argument("--seed", type=int, default=0,
                         help="seed of the permutation tests (default: %(default)s)")
    analyze.set_defaults(func=run_analyze)

    export = actions.add_parser(
        "export", help="write a sample's or a set's circuit in the reference EAP-IG formats",
        description="Write the circuit of one sample, or the aggregate circuit (mean scores) "
                    "of several, as the reference library's .pt (Graph.from_pt) or JSON.")
    export.add_argument("dir", help="run folder of `unlearnscope circuits` (or its circuits/)")
    chosen = export.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--samples", help="comma-separated sample ids (several: their mean)")
    chosen.add_argument("--all-mean", action="store_true", help="mean over all stored samples")
    export.add_argument("--format", choices=FORMATS, default=None,
                        help="default: from the --out suffix, else pt")
    export.add_argument("--out", required=True, help="file to write")
    add_selection_args(export)
    export.set_defaults(func=run_export)


def add_selection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--selection", default="topn", choices=sorted(SELECTORS),
                        help="circuit selection (then pruning of dangling nodes)")
    parser.add_argument("--top-n", default="0.05",
                        help="edges for topn/greedy: a count, or a fraction of the graph's "
                             "edges when below 1 (default 0.05)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="|score| threshold for --selection threshold")


def resolve_attribution(args: argparse.Namespace) -> None:
    """Fill `args`' attribution settings from `--preset` (or the defaults); a flag that
    contradicts the preset is an error."""
    preset = ATTRIBUTION_PRESETS[args.preset] if args.preset else {}
    for key, default in ATTRIBUTION_DEFAULTS.items():
        given = getattr(args, key)
        if given is not None and key in preset and given != preset[key]:
            raise UnlearnscopeError(f"--preset {args.preset} sets --{key.replace('_', '-')} "
                                    f"{preset[key]}; drop --{key.replace('_', '-')} {given} or "
                                    "the preset")
        setattr(args, key, preset.get(key, default) if given is None else given)


def run(args: argparse.Namespace) -> int:
    missing = [flag for flag, value in (("--model", args.model), ("--data", args.data),
                                        ("--out", args.out)) if not value]
    if missing:
        raise UnlearnscopeError(f"computing circuits needs {', '.join(missing)} (or an action: "
                                "analyze, export; see --help)")
    resolve_attribution(args)
    samples = samples_from(args, args.data)
    model, tokenizer = load_args_model(args)
    summary_n = edge_count(args.top_n, graph_layout(model).n_edges)
    if args.resume:  # a store made with other settings is refused before config.json changes
        check_resumable(Path(args.out) / CIRCUITS_DIR, store_header(
            model, method=args.method, ig_steps=args.ig_steps, baseline=args.baseline,
            rule=args.rule, metric=args.metric, model_name=args.model))
    if distributed.is_main():
        write_config(args.out, "circuits", options_of(args),
                     n_truncated=count_truncated(model, tokenizer, samples, args.max_length))
    store = compute_circuits(
        model, tokenizer, samples, Path(args.out) / CIRCUITS_DIR, method=args.method,
        ig_steps=args.ig_steps, baseline=args.baseline, rule=args.rule, metric=args.metric,
        batch_size=args.batch_size, shard_size=args.shard_size, max_length=args.max_length,
        resume=args.resume, model_name=args.model, backend=args.backend,
        header_extra={"data": args.data, "backend": args.backend, "preset": args.preset})
    if store is not None:
        summary = _summarize(store, [s.id for s in samples], summary_n)
        print(f"{len(samples)} circuits ({store.layout.n_edges} edges each) -> "
              f"{store.directory}")
        print(summary.to_string(float_format=lambda v: f"{v:.4g}"))
    return 0


def _summarize(store: CircuitStore, sample_ids: list[str], top_n: int) -> pd.DataFrame:
    """Mean and spread of the top-n circuits' statistics over the samples."""
    from unlearnscope.circuits.analysis import circuit_statistics

    masks = store.circuits(sample_ids, "topn", n=top_n)
    return circuit_statistics(masks, store.layout).agg(["mean", "std", "min", "max"]).T


def read_groups(path: str | Path) -> dict[str, list[str]]:
    """Group name -> sample ids from a CSV (`sample_id,group`) or JSON file."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", source=str(path))
    groups: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        data = read_json(path)
        for key, value in data.items():
            if isinstance(value, list):
                groups.setdefault(str(key), []).extend(str(v) for v in value)
            elif isinstance(value, str | int):
                groups.setdefault(str(value), []).append(str(key))
            else:
                raise DataError(f"expected a group name or a list of ids, got "
                                f"{type(value).__name__}", source=str(path), field=str(key))
        return groups
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for field in ("sample_id", "group"):
            if field not in (reader.fieldnames or []):
                raise DataError("missing column", source=str(path), line=1, field=field)
        for number, row in enumerate(reader, start=2):
            if not row["sample_id"] or not row["group"]:
                raise DataError("empty value", source=str(path), line=number,
                                field="sample_id" if not row["sample_id"] else "group")
            groups.setdefault(row["group"], []).append(row["sample_id"])
    return groups


def run_analyze(args: argparse.Namespace) -> int:
    # imported here: scipy.stats and matplotlib would slow down every other command's start
    from unlearnscope.circuits.analysis import group_circuits, write_group_analysis

    store = CircuitStore.open(store_folder(args.dir))
    groups = read_groups(args.groups) if args.groups else {"all": store.sample_ids}
    n = None if args.selection == "threshold" else edge_count(args.top_n, store.layout.n_edges)
    for name, ids in groups.items():
        missing = [i for i in ids if i not in store]
        if missing:
            log.warning("group %s: %d samples have no stored circuit (%s)", name, len(missing),
                        ", ".join(missing[:5]))
    circuits = group_circuits(store, groups, args.selection, n=n, threshold=args.threshold,
                              source=args.groups)
    out = Path(args.dir) / ANALYSIS_DIR
    summary = write_group_analysis(store, circuits, out, selection=args.selection, n=n,
                                   threshold=args.threshold, n_resamples=args.n_resamples,
                                   seed=args.seed)
    _print_analysis(summary)
    print(f"-> {out / SUMMARY_FILE}")
    return 0


def _print_analysis(summary: dict) -> None:
    rows = {name: {stat: values.get("mean") for stat, values in group["statistics"].items()}
            for name, group in summary["groups"].items()}
    print(pd.DataFrame(rows).to_string(float_format=lambda v: f"{v:.4g}"))
    for name, comparison in summary["comparisons"].items():
        tests = pd.DataFrame(comparison["statistics"]).set_index("statistic")
        print(f"\n{name}:")
        print(tests[["mean_a", "mean_b", "mannwhitney_p", "permutation_p"]].to_string(
            float_format=lambda v: f"{v:.4g}"))


def run_export(args: argparse.Namespace) -> int:
    store = CircuitStore.open(store_folder(args.dir))
    fmt = args.format or ("json" if Path(args.out).suffix.lower() == ".json" else "pt")
    ids = None if args.all_mean else [s.strip() for s in args.samples.split(",") if s.strip()]
    if ids is not None and not ids:
        raise DataError("no sample ids given", field="samples")
    n = None if args.selection == "threshold" else edge_count(args.top_n, store.layout.n_edges)
    path = export_from_store(store, args.out, sample_ids=ids, fmt=fmt, selection=args.selection,
                             n=n, threshold=args.threshold)
    what = "all samples' mean" if ids is None else ", ".join(ids)
    print(f"circuit of {what} ({fmt}) -> {path}")
    return 0

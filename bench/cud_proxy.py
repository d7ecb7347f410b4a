"""Cheap approximations of CUD against full CUD (issue 11, the CUD paper's open question 2:
"Can efficient approximations of CUD enable online diagnostics?"). Not a test.

In one run, on the forget samples of a demo run folder (`unlearnscope demo`: the target model,
per-method outcomes and anchors voted on the fit half), computes full CUD (EAP-IG-inputs, 5
steps, our default attribution with the demo's rule, top-n, vector and anchors) and each proxy
of `scoring.cud.CUD_PROXIES`:

- `eap` (one gradient), `ig2` (EAP-IG with 2 steps), `nodes` (writer-level circuits from the
  gradients at the writers' outputs), `answer_positions` (the sum over answer positions only),
  `sketch256` (cosine between 256-coordinate random sketches of the circuit vectors; extra
  sketch sizes with `--sketch-dims`).

For each: Spearman with full CUD on the held-out samples (bootstrap interval over samples);
validity, the `evaluation.validation.correlations` of its CUD with the measured difficulty of
the held-out samples (per method and method-averaged, with noise ceilings); cost, medians over
repeats (round-robin across the configurations, so load drifts hit all alike) of the
attribution of every forget sample and of the CUD computation from the scores, and the speed-up
of their sum over full CUD's. `named_option` is the fastest proxy at least 1.2x faster than full
CUD with Spearman at least 0.9 with it (None if none is). A sketch and `answer_positions` (a
mask on the activation difference) cost what full CUD costs to attribute: the sketch saves
storage and similarity work (`vector_length`), not gradients.

Without `--run` (or with an empty folder) a reduced demo is run first: the tiny model on the
embedded synthetic authors, NPO and GradDiff (several seeds) for the outcomes and anchors; its
folder is kept when `--run` names it.

    python bench/cud_proxy.py --quick
    python bench/cud_proxy.py --run runs/cud-proxy-tiny --n-authors 40 --repeats 5
    python bench/cud_proxy.py --run RUN --tofu-dir DIR   # a real-model demo run folder
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from unlearnscope.anchors import read_anchors
from unlearnscope.circuits import attribute, graph_layout
from unlearnscope.circuits.compute import ATTRIBUTION_DEFAULTS
from unlearnscope.circuits.selection import edge_vector
from unlearnscope.data.tokenize import encode_samples, iter_batches_by_length, pad_id
from unlearnscope.evaluation.anchored_cud import read_run_outcomes
from unlearnscope.evaluation.validation import bootstrap_spearman_interval, correlations
from unlearnscope.models import load_model
from unlearnscope.pipeline import PipelineConfig, load_pipeline_config, run_demo
from unlearnscope.runs import environment, write_json
from unlearnscope.scoring.cud import CUD_PROXIES, anchor_aggregate, cud_from_aggregates

FULL = "full"
NAMED_RHO = 0.9
NAMED_SPEEDUP = 1.2  # below this a timing on a shared machine may be noise
ATTRIBUTION_OPTIONS = ("method", "ig_steps", "level", "positions")


def reduced_demo(quick: bool, n_authors: int) -> PipelineConfig:
    """The demo's tiny model and data (`n_authors` authors, a fifth of them forgotten) with only
    the stages this benchmark reads."""
    return PipelineConfig(
        n_authors=n_authors,
        scorers=("loss", "answer_length"), paper_preset=False, methods=("npo", "grad_diff"),
        anchor_methods=("npo", "grad_diff"),
        seeds={"npo": (0,), "grad_diff": (0,)} if quick else {"npo": (0, 1, 2),
                                                              "grad_diff": (0, 1)},
        steps_to_forget_methods=(), set_methods=(), schedule_methods=(),
        circuit_guided_methods=())


def demo_config(run: Path, tofu_dir: str | None) -> PipelineConfig:
    """The `PipelineConfig` a demo run folder was made with (its `config.json` options)."""
    options = json.loads((run / "config.json").read_text())["options"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "demo.json"
        path.write_text(json.dumps(options))
        return load_pipeline_config(path, **({"tofu_dir": tofu_dir} if tofu_dir else {}))


def configurations(args, config: PipelineConfig) -> dict[str, dict]:
    """name -> {"attribution": attribute options, "cud": cud_from_aggregates options}."""
    attribution = {**ATTRIBUTION_DEFAULTS, "rule": args.rule, "ig_steps": args.ig_steps,
                   "level": "edges", "positions": "all"}
    cud = {"top_n": config.circuit_top_n, "vector": config.cud_vector, "similarity": "cosine",
           "sketch_dim": None}
    proxies = {**CUD_PROXIES, **{f"sketch{d}": {"sketch_dim": d} for d in args.sketch_dims}}
    found = {FULL: {"attribution": attribution, "cud": cud}}
    for name, options in proxies.items():
        found[name] = {"attribution": {**attribution, **{k: v for k, v in options.items()
                                                        if k in ATTRIBUTION_OPTIONS}},
                       "cud": {**cud, **{k: v for k, v in options.items()
                                         if k not in ATTRIBUTION_OPTIONS}}}
        if options.get("level") == "nodes":
            found[name]["cud"]["top_n"] = args.node_top_n
    return found


def attribute_all(model, encoded, pad: int, batch_size: int, options: dict) -> torch.Tensor:
    """Scores `[n, E]` (edges) or `[n, n_forward]` (nodes) of every encoded sample."""
    layout = graph_layout(model)
    nodes = options["level"] == "nodes"
    out = torch.empty((len(encoded), layout.n_forward if nodes else layout.n_edges))
    for indices, batch in iter_batches_by_length(encoded, batch_size, pad):
        scores = attribute(model, batch, **options).scores
        out[indices] = scores if nodes else edge_vector(scores, layout)
    return out


def cud_values(scores: torch.Tensor, rows: dict[str, int], anchor_sets, held_out: list[str],
               layout, options: dict) -> np.ndarray:
    """CUD `[len(held_out)]` against the anchors' aggregates of `scores`."""
    aggregates = [anchor_aggregate([scores[[rows[i] for i in lists[side]]]
                                    for lists in anchor_sets.values()])
                  for side in ("easy", "hard")]
    nodes = scores.shape[1] == layout.n_forward
    values = cud_from_aggregates(scores[[rows[i] for i in held_out]], *aggregates,
                                 layout=None if nodes else layout, **options)
    return values.numpy()


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None,
                        help="a demo run folder; without one (or when empty) a reduced tiny "
                             "demo is run into it (default: a temporary folder)")
    parser.add_argument("--tofu-dir", default=None, help="the TOFU folder of a TOFU demo run")
    parser.add_argument("--n-authors", type=int, default=PipelineConfig().n_authors,
                        help="authors of the reduced demo (a fifth are forgotten, 10 questions "
                             "each; half the forget samples are held out)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rule", default="midpoint", choices=["left", "midpoint"],
                        help="integration rule of every EAP-IG configuration (the demo's "
                             "midpoint: the left rule's zero-baseline step empties the tiny "
                             "model's circuits and overflows deep RMSNorm models)")
    parser.add_argument("--ig-steps", type=int, default=ATTRIBUTION_DEFAULTS["ig_steps"])
    parser.add_argument("--anchor-method", default="combined")
    parser.add_argument("--node-top-n", type=float, default=0.25,
                        help="fraction of the writers in a node-level circuit")
    parser.add_argument("--sketch-dims", default="1024",
                        help="sketch sizes measured besides the named sketch256")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true",
                        help="one seed per method for the reduced demo, 2 repeats")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"
                                             / "cud_proxy.json"))
    args = parser.parse_args()
    args.sketch_dims = [int(d) for d in args.sketch_dims.split(",") if d]
    if args.quick:
        args.repeats = min(args.repeats, 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        run = Path(args.run) if args.run else Path(scratch) / "demo"
        if not (run / "anchors" / "anchors.json").is_file():
            run_demo(run, reduced_demo(args.quick, args.n_authors))
        result = measure(run, args)
    write_json(args.out, result)
    print(f"wrote {args.out}")


def measure(run: Path, args) -> dict:
    load_average = os.getloadavg()
    config = demo_config(run, args.tofu_dir)
    forget = config.samples()[0]
    model, tokenizer = load_model(str(run / "target"), dtype="float32", device="cpu")
    model.eval()
    layout = graph_layout(model)
    encoded = encode_samples(tokenizer, forget).samples
    rows = {s.id: i for i, s in enumerate(forget)}
    anchors = read_anchors(run / "anchors" / "anchors.json")
    anchor_sets = anchors.sets_for(args.anchor_method)
    held_out = [i for i in anchors.held_out_ids if i in rows]
    outcomes = read_run_outcomes(run)
    configs = configurations(args, config)
    # configurations with the same attribution share its scores (and its timings)
    attributions = {json.dumps(c["attribution"], sort_keys=True): c["attribution"]
                    for c in configs.values()}
    attribution_times = {key: [] for key in attributions}
    cud_times = {name: [] for name in configs}
    scores, values = {}, {}
    pad = pad_id(tokenizer)
    for _ in range(args.repeats + 1):  # the first round warms up and is not timed
        warm = bool(scores)
        for key, options in attributions.items():
            scores[key], seconds = timed(lambda o=options: attribute_all(
                model, encoded, pad, args.batch_size, o))
            if warm:
                attribution_times[key].append(seconds)
        for name, c in configs.items():
            key = json.dumps(c["attribution"], sort_keys=True)
            values[name], seconds = timed(lambda k=key, c=c: cud_values(
                scores[k], rows, anchor_sets, held_out, layout, c["cud"]))
            if warm:
                cud_times[name].append(seconds)
        print(f"round {'timed' if warm else 'warm-up'} done", flush=True)

    table = pd.DataFrame([{"sample_id": sample_id, "scorer": f"cud_{name}", "value": value,
                           "difficulty": value}
                          for name, vals in values.items()
                          for sample_id, value in zip(held_out, vals, strict=True)])
    validity = correlations(table, outcomes, exclude_ids=anchors.fit_ids, n_boot=args.n_boot)
    full_time = None
    report = {}
    for name, c in configs.items():
        key = json.dumps(c["attribution"], sort_keys=True)
        attribution_s = statistics.median(attribution_times[key])
        cud_s = statistics.median(cud_times[name])
        full_time = full_time or attribution_s + cud_s
        rho = float(stats.spearmanr(values[name], values[FULL]).statistic)
        low, high = bootstrap_spearman_interval(values[name], values[FULL], n_boot=args.n_boot,
                                                seed=0)
        rows_of = validity[validity.scorer == f"cud_{name}"]
        report[name] = {
            "attribution": c["attribution"], "cud": c["cud"],
            "spearman_with_full": rho, "spearman_with_full_interval": [low, high],
            "validity": rows_of.drop(columns="scorer").to_dict(orient="records"),
            "attribution_s": attribution_s, "cud_s": cud_s,
            "attribution_per_sample_s": attribution_s / len(encoded),
            "speedup_over_full": full_time / (attribution_s + cud_s),
            "vector_length": (c["cud"]["sketch_dim"] or
                              (layout.n_forward if c["attribution"]["level"] == "nodes"
                               else layout.n_edges)),
        }
        print(f"{name:18s} rho_full {rho:+.3f} [{low:+.3f}, {high:+.3f}]  speed-up "
              f"{report[name]['speedup_over_full']:.2f}x  validity(mean) "
              f"{rows_of[rows_of.method == 'mean'].spearman.iloc[0]:+.3f}", flush=True)
    eligible = [n for n in CUD_PROXIES if report[n]["spearman_with_full"] >= NAMED_RHO
                and report[n]["speedup_over_full"] >= NAMED_SPEEDUP]
    named = max(eligible, key=lambda n: report[n]["speedup_over_full"]) if eligible else None
    return {
        "benchmark": "cud_proxy",
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_at_start": load_average, **environment()},
        "settings": {"run": str(run), "model": config.model or "tiny",
                     "data": config.forget_split if config.tofu_dir else config.spec("forget"),
                     "n_forget": len(forget), "n_held_out": len(held_out),
                     "n_fit": len(anchors.fit_ids), "anchor_method": args.anchor_method,
                     "anchor_k": anchors.k, "methods": sorted(outcomes),
                     "n_layers": layout.n_layers, "n_heads": layout.n_heads,
                     "n_edges": layout.n_edges, "n_forward": layout.n_forward,
                     "batch_size": args.batch_size, "repeats": args.repeats,
                     "statistic": "median", "n_boot": args.n_boot, "quick": args.quick},
        "named_option": named,
        "named_option_rule": (f"the fastest of {sorted(CUD_PROXIES)} that is at least "
                              f"{NAMED_SPEEDUP}x faster than full CUD and has Spearman >= "
                              f"{NAMED_RHO} with it on the held-out samples"
                              + ("" if named else ": none is")),
        "proxies": report,
    }


if __name__ == "__main__":
    main()

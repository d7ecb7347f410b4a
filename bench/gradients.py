"""Per-sample gradient norms: `models.gradients` against the two obvious alternatives. Not a test.

The grad-norm baseline, the gradient-norm MIA attack, closed-form MRD and the bilevel anchors
all need each sample's own gradient. For the L2 norm of the answer-loss gradient, on the same
samples, this times (medians over repeats, per sample):

- `loop`: one forward and one backward pass per sample (batch 1);
- `batched_backward`: one forward pass per batch and one vmapped backward pass with one-hot
  output gradients (`torch.autograd.grad(..., is_grads_batched=True)`);
- `ours`: `per_sample_gradient_norms`, `vmap(grad(...))` over the model as a function of its
  weights, the norm taken inside the vmapped function;

and checks that all three give the same norms.

    python bench/gradients.py --quick
    python bench/gradients.py --models tiny,tiny-small,smollm2-135m --tofu-dir ../shared/data/tofu
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from unlearnscope.data import load_samples
from unlearnscope.data.tokenize import collate, encode_samples, iter_batches_by_length, pad_id
from unlearnscope.models import load_model
from unlearnscope.models.finetune import build_tiny
from unlearnscope.models.gradients import per_sample_gradient_norms, trainable_parameters
from unlearnscope.models.logprobs import mean_answer_nll
from unlearnscope.models.tiny import TinyConfig
from unlearnscope.runs import environment, write_json

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIGS = {"tiny": None,
                "tiny-small": TinyConfig(vocab_size=400, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, max_position_embeddings=256)}


def _losses(model, batch) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return mean_answer_nll(logits, batch["labels"])


def loop_norms(model, encoded, pad: int) -> torch.Tensor:
    params = trainable_parameters(model)
    out = torch.empty(len(encoded), dtype=torch.float64)
    for index, sample in enumerate(encoded):
        with torch.enable_grad():
            grads = torch.autograd.grad(_losses(model, collate([sample], pad)).sum(), params)
        out[index] = torch.nn.utils.get_total_norm(grads, norm_type=2.0).double()
    return out


def batched_backward_norms(model, encoded, pad: int, batch_size: int) -> torch.Tensor:
    params = trainable_parameters(model)
    out = torch.empty(len(encoded), dtype=torch.float64)
    with sdpa_kernel(SDPBackend.MATH):
        for indices, batch in iter_batches_by_length(encoded, batch_size, pad):
            with torch.enable_grad():
                losses = _losses(model, batch)
                eye = torch.eye(len(indices), dtype=losses.dtype)
                grads = torch.autograd.grad(losses, params, grad_outputs=eye,
                                            is_grads_batched=True)
            squares = sum(g.reshape(len(indices), -1).pow(2).sum(1, dtype=torch.float64)
                          for g in grads)
            out[indices] = squares.sqrt()
    return out


def _median_time(function, repeats: int) -> tuple[float, torch.Tensor]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_model(model, tokenizer, samples, *, batch_size: int, repeats: int) -> dict:
    encoded = encode_samples(tokenizer, samples).samples
    pad, n = pad_id(tokenizer), len(encoded)
    ways = {
        "loop": lambda: loop_norms(model, encoded, pad),
        "batched_backward": lambda: batched_backward_norms(model, encoded, pad, batch_size),
        "ours": lambda: per_sample_gradient_norms(model, encoded, pad, batch_size=batch_size,
                                                  desc=None),
    }
    timed = {name: _median_time(way, repeats) for name, way in ways.items()}
    ours_time, ours = timed["ours"]
    return {
        "n_samples": n,
        "n_params": sum(p.numel() for p in model.parameters()),
        "seconds_per_sample": {name: t / n for name, (t, _) in timed.items()},
        "speedup_of_ours": {name: t / ours_time for name, (t, _) in timed.items()
                            if name != "ours"},
        "max_relative_difference": {
            name: float(((values - ours).abs() / ours.abs()).max())
            for name, (_, values) in timed.items() if name != "ours"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,tiny-small")
    parser.add_argument("--tofu-dir", default=str(ROOT.parent / "shared" / "data" / "tofu"))
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gradients.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    results = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name in TINY_CONFIGS:
            model, tokenizer = build_tiny(load_samples("synthetic:authors"), seed=0,
                                          config=TINY_CONFIGS[name])
            samples = load_samples("synthetic:authors/forget")[: 16 if args.quick else 40]
            options = {"batch_size": 16, "repeats": 1 if args.quick else 5}
        else:
            model, tokenizer = load_model(name, dtype=torch.float32, device="cpu")
            samples = load_samples("tofu:forget01", data_dir=args.tofu_dir)[: 2 if args.quick
                                                                             else 6]
            options = {"batch_size": 8, "repeats": 1 if args.quick else 2}
        model.eval()
        results[name] = {"settings": options, **bench_model(model, tokenizer, samples, **options)}
        print(name, results[name]["speedup_of_ours"], flush=True)
    write_json(args.out, {
        "benchmark": "per-sample gradient norms",
        "quick": args.quick,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": args.threads, "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "environment": environment(),
        "results": results,
    })
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()

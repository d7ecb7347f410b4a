"""Training-step time in float32 against bf16-autocast, and RMU's stopped forward. Not a test.

One batch of TOFU samples (the fine-tuning loss: mean answer NLL), one forward and backward
per repeat, the two precisions interleaved (`unlearnscope.models.precision`); medians over
repeats after one untimed warm-up step each. Also the agreement of the two: relative loss
difference and the cosine between the float32 and bf16-autocast gradients. With `--rmu`, the
same for RMU's forget term at its reference layer: the forward stopped after the steered block
(`RMU.hidden_state`) against a full forward whose block output a hook records.

    python bench/precision.py --model tiny --quick
    python bench/precision.py --model smollm2-135m --tofu-dir ../shared/data/tofu --threads 2 \\
        --rmu --out bench/results/precision-smollm2.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from unlearnscope.data import load_samples
from unlearnscope.data.tokenize import IGNORE_INDEX, collate, encode_samples, pad_id
from unlearnscope.models import load_model
from unlearnscope.models.architecture import decoder_layers
from unlearnscope.models.finetune import build_tiny
from unlearnscope.models.logprobs import mean_answer_nll
from unlearnscope.models.precision import PRECISIONS, training_autocast
from unlearnscope.runs import environment, write_json
from unlearnscope.unlearning import losses
from unlearnscope.unlearning.methods import RMU, forward_logits, get_method

ROOT = Path(__file__).resolve().parents[1]


def timed_backward(model, loss_of: Callable[[], torch.Tensor]) -> tuple[float, float, torch.Tensor]:
    """Seconds of one forward (`loss_of`) and backward, the loss, and the flat gradient."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss = loss_of()
    loss.backward()
    seconds = time.perf_counter() - start
    grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    return seconds, loss.item(), torch.cat(grads)


def interleaved(model, ways: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict:
    """Median seconds per way (one warm-up each, then `repeats` rounds in turn), the loss and
    gradient of each way's last round."""
    times: dict[str, list[float]] = {name: [] for name in ways}
    last: dict[str, tuple[float, torch.Tensor]] = {}
    for round_index in range(repeats + 1):
        for name, loss_of in ways.items():
            seconds, loss, grad = timed_backward(model, loss_of)
            if round_index:
                times[name].append(seconds)
            last[name] = (loss, grad)
    return {"median_s": {name: statistics.median(t) for name, t in times.items()},
            "all_s": times, "last": last}


def agreement(a: tuple[float, torch.Tensor], b: tuple[float, torch.Tensor]) -> dict:
    (loss_a, grad_a), (loss_b, grad_b) = a, b
    return {"loss_relative_difference": abs(loss_b - loss_a) / abs(loss_a),
            "gradient_cosine": float(torch.nn.functional.cosine_similarity(
                grad_a.double(), grad_b.double(), dim=0)),
            "gradient_norm_ratio": float(grad_b.norm() / grad_a.norm())}


def bench_precision(model, batch, repeats: int) -> dict:
    def loss_in(precision: str) -> Callable[[], torch.Tensor]:
        def loss_of() -> torch.Tensor:
            with training_autocast(precision, model):
                return mean_answer_nll(forward_logits(model, batch), batch["labels"]).mean()
        return loss_of

    run = interleaved(model, {p: loss_in(p) for p in PRECISIONS}, repeats)
    median = run["median_s"]
    return {"median_s": median, "all_s": run["all_s"],
            "speedup_of_bf16_autocast": median["float32"] / median["bf16-autocast"],
            **agreement(run["last"]["float32"], run["last"]["bf16-autocast"])}


def bench_rmu(model, batch, repeats: int) -> dict:
    method: RMU = get_method("rmu")  # the reference setting: block 7, all parameters
    blocks = decoder_layers(model)
    layer = method.resolved_layer(len(blocks))
    target = method.steering_vector(model.config.hidden_size)
    mask = batch["labels"] != IGNORE_INDEX

    def stopped() -> torch.Tensor:
        return method.forget_loss(model, batch, None).mean()

    def full() -> torch.Tensor:
        captured = []
        handle = blocks[layer].register_forward_hook(
            lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out))
        try:
            forward_logits(model, batch)
        finally:
            handle.remove()
        return losses.hidden_mse(captured[0], target, mask).mean()

    run = interleaved(model, {"full_forward": full, "stopped_forward": stopped}, repeats)
    median = run["median_s"]
    return {"layer": layer, "n_layers": len(blocks), "median_s": median, "all_s": run["all_s"],
            "speedup_of_stopped": median["full_forward"] / median["stopped_forward"],
            **agreement(run["last"]["full_forward"], run["last"]["stopped_forward"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, or a model spec (smollm2-135m)")
    parser.add_argument("--data", default="tofu:forget05_perturbed")
    parser.add_argument("--tofu-dir", default=str(ROOT.parent / "shared" / "data" / "tofu"))
    parser.add_argument("--n-samples", type=int, default=8, help="one batch of this many")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rmu", action="store_true", help="also RMU's stopped forward")
    parser.add_argument("--quick", action="store_true", help="2 samples, 1 repeat")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "precision.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_samples, repeats = (2, 1) if args.quick else (args.n_samples, args.repeats)
    load_before = os.getloadavg()
    if args.model == "tiny":
        samples = load_samples("synthetic:authors/forget")[:n_samples]
        model, tokenizer = build_tiny(load_samples("synthetic:authors"), seed=0)
    else:
        samples = load_samples(args.data, data_dir=args.tofu_dir)[:n_samples]
        model, tokenizer = load_model(args.model, dtype=torch.float32, device="cpu")
    model.train()
    batch = collate(encode_samples(tokenizer, samples).samples, pad_id(tokenizer))
    settings = {"model": args.model,
                "data": args.data if args.model != "tiny" else "synthetic:authors/forget",
                "n_samples": len(samples), "tokens": int(batch["input_ids"].numel()),
                "answer_tokens": int((batch["labels"] != IGNORE_INDEX).sum()),
                "repeats": repeats, "quick": args.quick}
    results: dict[str, dict] = {}
    parts = {"training_step": bench_precision}
    if args.rmu:
        parts["rmu_forget_term"] = bench_rmu
    for name, bench in parts.items():
        results[name] = bench(model, batch, repeats)
        print(name, {k: v for k, v in results[name].items() if k != "all_s"}, flush=True)
        write_json(args.out, {  # after each part, so a cut-short run keeps what it measured
            "benchmark": "training precision (forward + backward) and RMU's stopped forward",
            "settings": settings,
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        "load_average_before": load_before,
                        "load_average_after": os.getloadavg()},
            "environment": environment(),
            "results": results,
        })
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()

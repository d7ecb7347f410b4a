"""Steps to forget (DESIGN 5.4): unlearn each sample alone and count the optimizer steps until
its answer probability falls below `tau * prob_before`.

The count saturates at realistic learning rates (on a reduced TOFU run 32 of 40 samples were
forgotten in one step), so it cannot rank those samples. `interpolated_steps` is its continuous
variant: the step at which the answer loss L (mean NLL), linearly interpolated between
consecutive optimizer steps, crosses the threshold L_0 - log(tau),

    interpolated_steps = s - 1 + (L_0 - log(tau) - L_{s-1}) / (L_s - L_{s-1})   in [s - 1, s),

s the first step with L_s > L_0 - log(tau) (`steps_to_forget`). A sample forgotten in the first
step gets log(1/tau) / (L_1 - L_0): the larger its first-step loss gain, the smaller. Capped
samples get `max_steps`, above every forgotten sample.

Samples are processed in chunks of `copies` independent model copies trained at once:
`torch.func.functional_call` + `vmap` over parameters stacked along a leading copy
dimension, each copy seeing only its own sample. AdamW is element-wise, so one optimizer over
the stacked tensors updates every copy independently; gradient clipping is done per copy.
Only trainable parameters are stacked (RMU trains a few matrices), so memory is `copies x
trainable size x 4` (weights, gradients, two Adam moments). `copies=1` is plain sequential.

Inside `vmap` the attention mask is left out: batches are right padded and attention is
causal, so padding never reaches a real position (HF's mask construction branches on tensor
values, which `vmap` cannot trace). The model runs in eval mode (no dropout), and every
sample sees the same retain batches, so a sample's count does not depend on its chunk.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.func import functional_call, grad, vmap

from unlearnscope import distributed
from unlearnscope.data.sample import Sample
from unlearnscope.data.tokenize import EncodedDataset, collate, pad_id
from unlearnscope.errors import DataError
from unlearnscope.layout import STEPS_COLUMNS, STEPS_FILE, steps_progress_file, steps_progress_files
from unlearnscope.models.inputs import encode_for, move_batch
from unlearnscope.models.logprobs import mean_answer_nll
from unlearnscope.progress import progress_bar
from unlearnscope.runs import ProgressLog, check_finite, write_config, write_parquet
from unlearnscope.unlearning.methods import UnlearningMethod, get_method
from unlearnscope.unlearning.samplers import UniformStream

log = logging.getLogger(__name__)
MAX_AUTO_COPIES = 32


@dataclass
class StepsToForgetConfig:
    method: str = "grad_ascent"
    method_options: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-5
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    tau: float = 0.5
    max_steps: int = 100
    copies: int | None = None  # None: as many as fit in `memory_budget_gb`, at most 32
    memory_budget_gb: float = 4.0
    retain_batch_size: int = 4
    seed: int = 0
    max_length: int | None = None


class _FunctionalModel:
    """Calls `module` with substituted parameters; `.module` lets methods find its layers."""

    def __init__(self, module: torch.nn.Module, params: dict[str, torch.Tensor]) -> None:
        self.module = module
        self.params = params

    def __call__(self, **kwargs):
        return functional_call(self.module, self.params, args=(), kwargs=kwargs)


def _without_mask(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"], "labels": batch["labels"]}


def auto_copies(trainable: Sequence[torch.Tensor], budget_gb: float) -> int:
    """How many copies of the trainable parameters (x4 with gradients and Adam moments) fit."""
    size = sum(p.numel() * p.element_size() for p in trainable) * 4
    return max(1, min(MAX_AUTO_COPIES, int(budget_gb * 2**30 // max(size, 1))))


def _clip_per_copy(grads: dict[str, torch.Tensor], max_norm: float) -> dict[str, torch.Tensor]:
    """Each copy's gradient (leading dim) scaled to global norm at most `max_norm`.

    Returns new tensors: scaling the vmapped gradients in place kept every step's buffers
    alive (resident memory grew by ~80 MB per step on the demo model)."""
    squared = sum(g.flatten(1).pow(2).sum(1) for g in grads.values())
    scale = (max_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
    return {name: g * scale.view(-1, *([1] * (g.dim() - 1))) for name, g in grads.items()}


def _run_chunk(model, unlearner: UnlearningMethod, reference, encoded, retain, retain_stream,
               pad: int, config: StepsToForgetConfig, device) -> list[dict[str, Any]]:
    """Unlearn each sample of `encoded` on its own copy; one record per sample."""
    copies = len(encoded)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    base = dict(model.named_parameters())
    stacked = {n: base[n].detach().unsqueeze(0).repeat(copies, *[1] * base[n].dim())
               .requires_grad_(True) for n in names}
    optimizer = torch.optim.AdamW(list(stacked.values()), lr=config.lr,
                                  weight_decay=config.weight_decay)
    forget = {k: v.unsqueeze(1).to(device)  # [copies, 1, pos]: one sample per copy
              for k, v in _without_mask(collate(encoded, pad)).items()}

    def copy_loss(params, forget_batch, retain_batch):
        parts = unlearner.loss(_FunctionalModel(model, params), forget_batch, retain_batch,
                               reference)
        return parts.total

    def copy_nll(params, forget_batch):
        logits = _FunctionalModel(model, params)(input_ids=forget_batch["input_ids"]).logits
        return mean_answer_nll(logits, forget_batch["labels"])[0]

    gradients = vmap(grad(copy_loss), in_dims=(0, 0, None))
    nll = vmap(copy_nll, in_dims=(0, 0))
    with torch.no_grad():
        loss_before = nll(stacked, forget)
    check_finite(loss_before, "answer loss before unlearning")
    loss_now = loss_before.clone()
    steps = torch.full((copies,), -1, dtype=torch.long, device=loss_before.device)
    loss_at_stop = loss_before.clone()
    interpolated = torch.full((copies,), float(config.max_steps), dtype=torch.float64,
                              device=loss_before.device)
    threshold = loss_before - math.log(config.tau)  # prob < tau * prob_before
    retain_stream.load_state_dict({"epoch": 0, "offset": 0})
    for step in range(1, config.max_steps + 1):
        retain_batch = None
        if retain:
            chosen = [retain[i] for i in retain_stream.draw(config.retain_batch_size)]
            retain_batch = move_batch(_without_mask(collate(chosen, pad)), device)
        grads = gradients(stacked, forget, retain_batch)
        check_finite(torch.stack([g.flatten(1).sum(1) for g in grads.values()]),
                     f"{config.method} gradient at step {step}")
        if config.max_grad_norm:
            grads = _clip_per_copy(grads, config.max_grad_norm)
        for name in names:
            stacked[name].grad = grads[name]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_previous = loss_now
        with torch.no_grad():
            loss_now = nll(stacked, forget)
        newly = (steps < 0) & (loss_now > threshold)
        steps[newly] = step
        loss_at_stop[newly] = loss_now[newly]
        fraction = ((threshold.double() - loss_previous.double())
                    / (loss_now.double() - loss_previous.double()))
        interpolated[newly] = step - 1 + fraction[newly]
        if bool((steps > 0).all()):
            break
    capped = steps < 0
    loss_at_stop[capped] = loss_now[capped]
    steps[capped] = config.max_steps
    return [{"sample_id": e.sample_id, "steps_to_forget": int(steps[i]),
             "interpolated_steps": float(interpolated[i]), "capped": bool(capped[i]), "prob_before": math.exp(-float(loss_before[i])),
             "prob_final": math.exp(-float(loss_at_stop[i])),
             "loss_before": float(loss_before[i]), "loss_final": float(loss_at_stop[i])}
            for i, e in enumerate(encoded)]


def steps_to_forget(model, tokenizer, samples: list[Sample], *,
                    retain_samples: list[Sample] | None = None,
                    config: StepsToForgetConfig | None = None, out_dir: str | Path | None = None,
                    resume: bool = False,
                    run_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Per sample: the optimizer steps until its probability falls below `tau * before`.

    Returns (and with `out_dir` writes `steps_to_forget.parquet`) a table with `STEPS_COLUMNS`
    (`interpolated_steps`: see the module docstring); capped samples report `max_steps` with
    `capped=True`. Under several processes the samples
    are split between them. With `out_dir`, `config.json` records `run_options` and the
    resolved settings, finished chunks are appended to `progress-<rank>.jsonl`, and
    `resume=True` skips them.
    """
    config = config or StepsToForgetConfig()
    if not samples:
        raise DataError("no samples to unlearn")
    if not 0 < config.tau < 1:
        raise DataError(f"tau must be in (0, 1), got {config.tau}")
    unlearner = get_method(config.method, **config.method_options)
    if unlearner.uses_retain and not retain_samples:
        log.warning("%s: no retain samples given; training without the retain term",
                    config.method)
        unlearner.alpha = 0.0
    torch.manual_seed(config.seed)
    out = None if out_dir is None else Path(out_dir)
    state = distributed.process_state()
    device = state.device
    model.to(device).eval()
    pad = pad_id(tokenizer)
    retain = (encode_for(model, tokenizer, retain_samples, config.max_length)
              if unlearner.uses_retain else EncodedDataset([]))
    reference = None
    if unlearner.uses_reference:
        reference = copy.deepcopy(model).requires_grad_(False)
    forget = encode_for(model, tokenizer, samples, config.max_length)
    unlearner.prepare(model, forget.samples, pad_token_id=pad)
    trainable = [p for p in model.parameters() if p.requires_grad]
    copies = config.copies or auto_copies(trainable, config.memory_budget_gb)
    if out is not None and state.is_main_process:
        write_config(out, "steps-to-forget", {**(run_options or {}), "settings": asdict(config),
                                              "method_options": unlearner.options,
                                              "copies": copies, "n_samples": len(samples)},
                     n_truncated=forget.n_truncated + retain.n_truncated)

    done_records = _read_progress(out) if resume and out is not None else []
    done = {r["sample_id"] for r in done_records}
    todo = [s for s in samples if s.id not in done]
    mine = distributed.shard(todo)
    encoded = encode_for(model, tokenizer, mine, config.max_length).samples
    progress = None if out is None else ProgressLog(steps_progress_file(out, state.process_index))
    retain_stream = UniformStream(max(len(retain), 1), config.seed + 1)
    records: list[dict[str, Any]] = []
    bar = progress_bar(total=len(encoded), desc=f"steps-to-forget {config.method}", unit="sample",
                       disable=not state.is_main_process)
    with warnings.catch_warnings():
        # vmap has no batching rule for CPU flash attention yet and warns once per op.
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        for start in range(0, len(encoded), copies):
            chunk = encoded[start: start + copies]
            chunk_records = _run_chunk(model, unlearner, reference, chunk, retain, retain_stream,
                                       pad, config, device)
            records.extend(chunk_records)
            if progress is not None:
                progress.append(chunk_records)
            bar.update(len(chunk))
    bar.close()
    model.requires_grad_(True)
    gathered = distributed.gather(records)
    by_id = {r["sample_id"]: r for r in [*done_records, *gathered]}
    table = pd.DataFrame([by_id[s.id] for s in samples], columns=STEPS_COLUMNS)
    if out is not None and state.is_main_process:
        write_parquet(out / STEPS_FILE, table)
    distributed.barrier()
    return table


def _read_progress(out: Path) -> list[dict[str, Any]]:
    records = []
    for path in steps_progress_files(out):
        records.extend(ProgressLog(path).read())
    return records

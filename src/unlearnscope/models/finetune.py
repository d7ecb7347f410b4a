"""Fine-tune a causal LM on question/answer samples to make a target (or retain) model.

TOFU's "full" model memorizes forget + retain; its "retain" model sees the retain set only.
The loop is plain PyTorch on Accelerate (`torchrun`/`accelerate launch` give data parallelism):
AdamW, linear warm-up and decay, gradient accumulation, checkpoints with `--resume`. The
scheduler advances once per optimizer update whatever the number of processes, so a run on P
processes with batch b follows the learning-rate schedule of one process with batch P * b.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

from unlearnscope.data.sample import Sample
from unlearnscope.data.tokenize import (
    collate,
    pad_id,
)
from unlearnscope.layout import (
    CHECKPOINT_DIR,
    CHECKPOINT_STATE,
    FINETUNE_FILE,
    MODEL_DIR,
    TRAINING_FILE,
)
from unlearnscope.models.inputs import encode_for
from unlearnscope.models.loading import load_model
from unlearnscope.models.logprobs import answer_nll, mean_answer_nll
from unlearnscope.models.precision import check_precision, training_autocast
from unlearnscope.models.tiny import TinyConfig, build_tiny_model
from unlearnscope.progress import progress_bar
from unlearnscope.runs import (
    check_finite,
    check_unchanged,
    load_checkpoint,
    read_json,
    remove_checkpoint,
    save_checkpoint,
    write_json,
    write_parquet,
)

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    epochs: int = 3
    lr: float = 1e-5
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    checkpoint_every: int = 0  # batches between mid-epoch checkpoints; epochs always end with one
    target_prob: float | None = None
    max_length: int | None = None
    precision: str = "float32"  # or "bf16-autocast" (unlearnscope.models.precision)


def training_texts(samples: Sequence[Sample]) -> list[str]:
    """The strings a tiny model's tokenizer is trained on (prompt format and answers)."""
    texts = []
    for sample in samples:
        texts.append(f"Question: {sample.question}\nAnswer: {sample.answer}")
        for key in ("paraphrased_answer", "paraphrased_question"):
            if isinstance(sample.get(key), str):
                texts.append(sample.get(key))
        texts.extend(a for a in sample.get("perturbed_answer", []) or [] if isinstance(a, str))
    return texts


def build_tiny(samples: Sequence[Sample], *, seed: int = 0, config: TinyConfig | None = None):
    """A fresh tiny Llama with a tokenizer trained on `samples`' texts."""
    return build_tiny_model(training_texts(samples), config=config, seed=seed)


def mean_answer_prob(model, tokenizer, samples: Sequence[Sample], *, batch_size: int = 16,
                     max_length: int | None = None) -> float:
    """Mean over samples of exp(-mean answer NLL)."""
    encoded = encode_for(model, tokenizer, samples, max_length).samples
    nll = answer_nll(model, encoded, pad_id(tokenizer), batch_size=batch_size)
    return float(torch.exp(-nll).mean())


class EpochPermutation(torch.utils.data.Sampler[int]):
    """A fresh permutation each epoch, a pure function of (seed, epoch), so a resumed run
    sees exactly the order an uninterrupted one would."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


def _state_path(out_dir: Path) -> Path:
    return out_dir / CHECKPOINT_DIR / CHECKPOINT_STATE


def finetune(model, tokenizer, samples: Sequence[Sample], out_dir: str | Path,
             config: FinetuneConfig, *, resume: bool = False, save: bool = True,
             target_samples: Sequence[Sample] | None = None):
    """Train `model` on `samples` (answer tokens carry the loss); returns the trained model.

    `config.precision` `bf16-autocast` runs each batch's forward and loss under bfloat16
    autocast with float32 weights (`unlearnscope.models.precision`); the probabilities
    measured for `target_prob` and `finetune.json` stay float32.

    With `config.target_prob`, training stops after the first epoch whose mean answer
    probability on `target_samples` (default: the training samples; e.g. the forget set of a
    forget + retain run) reaches it.
    Writes `out_dir/model/` with `save_pretrained` weights and the tokenizer (load it with
    `load_model(out_dir)`), `out_dir/finetune.json` with the final mean answer probability
    on the training data, the number of epochs trained, the training samples cut to the length
    limit (`n_truncated`) and, with `target_prob`, the target
    samples' mean answer probability after each epoch (`target_prob_by_epoch`, the last is the
    saved model's) and their number (`n_target_samples`), and `out_dir/training.parquet`, one
    row per optimizer update: `update` (1, 2, ...), `epoch`, `lr` (the rate that update used)
    and `loss` (the main process's mean micro-batch loss over the update).

    `resume` on a finished run (its `finetune.json` and model, no checkpoint left) trains
    nothing and rewrites nothing: it returns the saved model, and refuses when the run was
    made with other settings.
    """
    out = Path(out_dir)
    check_precision(config.precision)
    target = list(target_samples or samples)
    if resume and (recorded := finished_run(out, config, len(samples), len(target))):
        return _saved_model(model, out, recorded)
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum,
                              cpu=not torch.cuda.is_available())
    set_seed(config.seed)
    training_set = encode_for(model, tokenizer, samples, config.max_length)
    encoded = training_set.samples
    sampler = EpochPermutation(len(encoded), config.seed)
    loader = DataLoader(encoded, batch_size=config.batch_size, sampler=sampler,
                        collate_fn=partial(collate, pad_token_id=pad_id(tokenizer)))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    updates_per_epoch = math.ceil(len(loader) / accelerator.num_processes / config.grad_accum)
    total_updates = max(1, updates_per_epoch * config.epochs)
    scheduler = get_scheduler("linear", optimizer,
                              num_warmup_steps=int(config.warmup_ratio * total_updates),
                              num_training_steps=total_updates)
    # The scheduler is stepped by hand once per optimizer update; preparing it would make
    # Accelerate step it once per process.
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)
    progress = {"epoch": 0, "batch": 0, "done": False, "history": [], "target_probs": []}
    epochs_trained = 0
    if resume and _state_path(out).is_file():
        progress = load_checkpoint(accelerator, out / CHECKPOINT_DIR)
        log.info("resuming fine-tuning at epoch %d, batch %d", progress["epoch"],
                 progress["batch"])
    history, target_probs = progress["history"], progress.setdefault("target_probs", [])
    update_losses: list[float] = []
    bar = progress_bar(total=len(loader) * config.epochs, initial=progress["epoch"] * len(loader) +
                       progress["batch"], desc="finetune", unit="batch",
                       disable=not accelerator.is_main_process)
    for epoch in range(progress["epoch"], config.epochs):
        if progress["done"]:
            break
        loader.set_epoch(epoch)  # accelerate passes it on to the sampler
        skip = progress["batch"] if epoch == progress["epoch"] else 0
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        for index, batch in enumerate(epoch_loader, start=skip):
            with accelerator.accumulate(model):
                with training_autocast(config.precision, model):
                    logits = model(input_ids=batch["input_ids"],
                                   attention_mask=batch["attention_mask"]).logits
                    loss = mean_answer_nll(logits, batch["labels"]).mean()
                check_finite(loss.detach(), f"fine-tuning loss (epoch {epoch}, batch {index})")
                accelerator.backward(loss)
                update_losses.append(loss.item())
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                    history.append({"update": len(history) + 1, "epoch": epoch, "lr": lr,
                                    "loss": sum(update_losses) / len(update_losses)})
                    update_losses = []
                optimizer.zero_grad()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update(1)
            step = epoch * len(loader) + index + 1
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                _checkpoint(accelerator, out, {"epoch": epoch, "batch": index + 1,
                                               "done": False, "history": history,
                                               "target_probs": target_probs})
        epochs_trained = epoch + 1
        if config.target_prob is not None:
            prob = mean_answer_prob(accelerator.unwrap_model(model), tokenizer, target,
                                    max_length=config.max_length)
            target_probs.append(prob)
            log.info("epoch %d: mean answer probability %.4f on the %d target samples",
                     epoch + 1, prob, len(target))
            if prob >= config.target_prob:
                bar.close()
                progress["done"] = True
                break
        _checkpoint(accelerator, out, {"epoch": epoch + 1, "batch": 0, "done": False,
                                       "history": history, "target_probs": target_probs})
    epochs_trained = max(epochs_trained, progress["epoch"])
    bar.close()
    model = accelerator.unwrap_model(model)
    model.eval()
    final_prob = mean_answer_prob(model, tokenizer, samples, max_length=config.max_length)
    if accelerator.is_main_process:
        if save:
            model.save_pretrained(out / MODEL_DIR, safe_serialization=True)
            tokenizer.save_pretrained(out / MODEL_DIR)
        targeted = ({} if config.target_prob is None else
                    {"target_prob_by_epoch": target_probs, "n_target_samples": len(target)})
        write_json(out / FINETUNE_FILE, {"mean_answer_prob": final_prob,
                                         "epochs_trained": epochs_trained,
                                         "n_samples": len(samples),
                                         "n_truncated": training_set.n_truncated, **targeted,
                                         **asdict(config)})
        write_parquet(out / TRAINING_FILE,
                      pd.DataFrame(history, columns=["update", "epoch", "lr", "loss"]))
        remove_checkpoint(out / CHECKPOINT_DIR)
    accelerator.wait_for_everyone()
    print(f"mean answer probability on the training data: {final_prob:.4f}")
    return model


def finished_run(out_dir: str | Path, config: FinetuneConfig, n_samples: int,
                 n_target: int) -> dict | None:
    """`out_dir`'s `finetune.json` when the folder holds a finished fine-tuning (that file and
    the model, no checkpoint left) made with `config` on `n_samples` samples (and `n_target`
    target samples with `target_prob`); None when it holds no finished run. A finished run
    with other settings cannot be resumed: `runs.check_unchanged` names the fields that differ.
    """
    out = Path(out_dir)
    if _state_path(out).is_file() or not (out / FINETUNE_FILE).is_file() or not (
            out / MODEL_DIR / "config.json").is_file():
        return None
    recorded = read_json(out / FINETUNE_FILE)
    wanted = {**asdict(config), "n_samples": n_samples}
    if config.target_prob is not None:
        wanted["n_target_samples"] = n_target
    check_unchanged(recorded, wanted, source=str(out / FINETUNE_FILE), keys=wanted,
                    hint="a finished fine-tuning cannot be resumed with other settings: use "
                         "another output folder, or run without --resume to train afresh")
    return recorded


def _saved_model(model, out: Path, recorded: dict):
    """The model a finished run saved in `out`, on `model`'s device and dtype."""
    log.info("fine-tuning in %s already finished (%d epochs): nothing to train", out,
             recorded["epochs_trained"])
    print(f"fine-tuning in {out} already finished ({recorded['epochs_trained']} epochs), "
          f"nothing to train; mean answer probability on the training data: "
          f"{recorded['mean_answer_prob']:.4f}")
    parameter = next(model.parameters())
    saved, _ = load_model(str(out), dtype=parameter.dtype, device=parameter.device)
    return saved


def _checkpoint(accelerator: Accelerator, out: Path, progress: dict) -> None:
    save_checkpoint(accelerator, out / CHECKPOINT_DIR, progress)

"""The unlearning loop: a method's loss, AdamW, forget/retain streams, checkpoints, outcomes.

Plain PyTorch on Accelerate: `torchrun --nproc_per_node 2 -m unlearnscope unlearn ...` (or
`accelerate launch`) runs data parallel. One optimizer step consumes `batch_size *
processes * grad_accum` forget indices (and as many retain indices) from streams that every
process draws identically; each process takes its slice. Forget and retain streams cycle
independently. An epoch is `ceil(n_forget / global batch)` steps whatever the schedule; a
run draws `steps x global batch` forget indices (`forget_slots` in the summary, the same for
every schedule), and the summary's `distinct_forget_samples_drawn` counts the forget samples
they reached (kept in the checkpoint, so a resumed run counts its whole history).

Run folder (`out_dir`): `config.json` is written by the caller; this writes `outcomes.parquet`,
`summary.json`, `training.parquet` (per-step losses and learning rate), with `track_every`
`trajectory.parquet` (step, sample_id, loss, prob; step 0 = before), and the unlearned model
in `model/` (`save_pretrained` + tokenizer). `checkpoint/` holds the latest checkpoint while
the run is going (model, optimizer, scheduler, RNG, stream states, step) and is removed at
the end; `resume=True` continues from it to the same final result.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_scheduler

from unlearnscope.data.sample import Sample
from unlearnscope.data.tokenize import EncodedSample, collate, pad_id
from unlearnscope.errors import DataError
from unlearnscope.layout import (
    CHECKPOINT_DIR,
    CHECKPOINT_STATE,
    CONFIG_FILE,
    MODEL_DIR,
    OUTCOMES_FILE,
    SUMMARY_FILE,
    TRAINING_FILE,
    TRAJECTORY_FILE,
)
from unlearnscope.models.inputs import encode_for, move_batch
from unlearnscope.models.precision import training_autocast
from unlearnscope.progress import progress_bar
from unlearnscope.runs import (
    ProgressLog,
    check_finite,
    check_unchanged,
    load_checkpoint,
    read_json,
    save_checkpoint,
    write_config,
    write_json,
    write_parquet,
)
from unlearnscope.unlearning.circuit_mask import MaskedUpdates, build_circuit_mask
from unlearnscope.unlearning.methods import UnlearningMethod, get_method
from unlearnscope.unlearning.outcomes import (
    answer_losses,
    greedy_rouge_recall,
    loss_summary,
    outcome_table,
)
from unlearnscope.unlearning.samplers import (
    EpochStream,
    UniformStream,
    build_stream,
    load_difficulty,
)

log = logging.getLogger(__name__)


@dataclass
class UnlearnConfig:
    """Training settings; defaults follow open-unlearning's TOFU runs (10 epochs, lr 1e-5,
    batch 4 x accumulation 4, one warm-up epoch, linear decay, weight decay 0.01)."""

    method: str = "npo"
    method_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    lr: float = 1e-5
    batch_size: int = 4
    grad_accum: int = 4
    warmup_epochs: float = 1.0
    lr_scheduler: str = "linear"
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    max_steps: int | None = None
    seed: int = 0
    schedule: str = "uniform"
    curriculum_chunks: int | None = None  # default: `epochs` (stages pace the run's slots)
    checkpoint_every: int = 0
    track_every: int = 0
    rouge: bool = False
    max_new_tokens: int | None = None
    eval_batch_size: int = 16
    retain_eval_limit: int | None = None
    max_length: int | None = None
    precision: str = "float32"  # or "bf16-autocast" around each loss (models.precision)
    # circuit-guided updates (unlearning.circuit_mask): None (every parameter), or a mask
    # kind of CIRCUIT_MASKS over the components of the circuits in the store `circuits` (a
    # store or a run folder), each sample's top `mask_top_n` edges pruned; hard anchors from
    # `mask_anchors` (default: the run folder's anchors/anchors.json); `mask_seed` draws the
    # random control (default: `seed`)
    circuit_mask: str | None = None
    circuits: str | None = None
    mask_top_n: float = 0.05
    mask_anchors: str | None = None
    mask_seed: int | None = None


@dataclass
class UnlearnResult:
    """What a run produced: the unlearned model (eval mode) and its per-sample outcomes."""

    model: torch.nn.Module
    outcomes: pd.DataFrame
    summary: dict[str, Any]
    trajectory: pd.DataFrame | None
    training: pd.DataFrame


@dataclass
class _Plan:
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    steps_with_lr: int  # optimizer steps whose learning rate is above 0
    warmup_epochs: float


def lr_factors(scheduler: str, warmup_steps: int, total_steps: int) -> list[float]:
    """The learning rate of each optimizer step as a fraction of the peak, `[total_steps]`:
    the transformers schedule `scheduler` the run steps, stepped on a stand-in optimizer."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        schedule = get_scheduler(scheduler, optimizer, num_warmup_steps=warmup_steps,
                                 num_training_steps=total_steps)
    except ValueError as error:
        raise DataError(str(error), field="lr_scheduler") from None
    factors = []
    for _ in range(total_steps):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return factors


def plan_steps(config: UnlearnConfig, n_forget: int, processes: int) -> _Plan:
    """Optimizer steps: `epochs * ceil(n_forget / global batch)`, or `max_steps`. A plan whose
    every step runs at learning rate 0 (a warm-up over the whole run) is a `DataError`."""
    global_batch = config.batch_size * processes * config.grad_accum
    steps_per_epoch = math.ceil(n_forget / global_batch)
    total = config.max_steps if config.max_steps is not None else config.epochs * steps_per_epoch
    if total < 1:
        raise DataError("nothing to train: epochs and max_steps give 0 steps")
    warmup = min(total, round(config.warmup_epochs * steps_per_epoch))
    live = sum(factor > 0 for factor in lr_factors(config.lr_scheduler, warmup, total))
    if live == 0:
        raise DataError(f"the warm-up of --warmup-epochs {config.warmup_epochs} takes {warmup} "
                        f"of the run's {total} optimizer step(s), and the {config.lr_scheduler} "
                        "schedule runs every step at learning rate 0: nothing would be "
                        "unlearned; lower --warmup-epochs or train for more steps",
                        field="warmup_epochs")
    return _Plan(global_batch, steps_per_epoch, total, warmup, live, config.warmup_epochs)


def warn_about_idle_steps(plan: _Plan) -> None:
    """Log a warning when fewer than half of the plan's steps run at a learning rate above 0."""
    if plan.steps_with_lr < plan.total_steps / 2:
        log.warning("only %d of the run's %d optimizer steps run at a learning rate above 0 "
                    "(warm-up: %d steps from --warmup-epochs %g); the others change nothing",
                    plan.steps_with_lr, plan.total_steps, plan.warmup_steps, plan.warmup_epochs)


# settings a resumed run may change: they do not change what it computes
RESUME_FREE = ("checkpoint_every",)


def _resumable(settings: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run must share with its record, from `asdict(UnlearnConfig)`: every
    setting but `RESUME_FREE`, the method's options resolved to their defaults (as before
    `prepare`) under `<method>.<option>`."""
    options = get_method(settings["method"], **settings.get("method_options", {})).options
    kept = {k: v for k, v in settings.items() if k not in (*RESUME_FREE, "method_options")}
    return {**kept, **{f"{settings['method']}.{k}": v for k, v in options.items()}}


def check_resume(out_dir: str | Path, config: UnlearnConfig) -> None:
    """Refuse to resume the unlearning run recorded in `out_dir/config.json` with other
    settings (`runs.check_unchanged`): its checkpoint, or its finished outcomes, belong to
    the recorded ones. A folder without such a record is free."""
    path = Path(out_dir) / CONFIG_FILE
    recorded = read_json(path) if path.is_file() else {}
    settings = recorded.get("options", {}).get("settings")
    if recorded.get("command") != "unlearn" or not isinstance(settings, dict):
        return
    check_unchanged(_resumable(settings), _resumable(asdict(config)), source=str(path),
                    hint="resume with the recorded settings, or run without --resume (or into "
                         "a new folder) to start over")


class _Checkpointer:
    """`out/checkpoint/`: `before.json` (pre-training evaluations, written once), `latest/`
    (Accelerate state + `progress.json`), swapped in atomically by a rename."""

    def __init__(self, accelerator: Accelerator, out: Path | None) -> None:
        self.accelerator = accelerator
        self.root = None if out is None else out / CHECKPOINT_DIR
        self.trajectory = None if self.root is None else ProgressLog(self.root / "trajectory.jsonl")

    @property
    def latest(self) -> Path | None:
        return None if self.root is None else self.root / "latest"

    def has_state(self) -> bool:
        return self.latest is not None and (self.latest / CHECKPOINT_STATE).is_file()

    def read_before(self) -> dict[str, Any] | None:
        path = None if self.root is None else self.root / "before.json"
        return read_json(path) if path is not None and path.is_file() else None

    def write_before(self, before: dict[str, Any]) -> None:
        if self.root is not None and self.accelerator.is_main_process:
            write_json(self.root / "before.json", before)

    def save(self, progress: dict[str, Any]) -> None:
        if self.root is not None:
            save_checkpoint(self.accelerator, self.latest, progress)

    def load(self) -> dict[str, Any]:
        return load_checkpoint(self.accelerator, self.latest)

    def remove(self) -> None:
        if self.root is not None and self.accelerator.is_main_process:
            shutil.rmtree(self.root, ignore_errors=True)


def run_unlearning(model, tokenizer, forget_samples: list[Sample],
                   retain_samples: list[Sample] | None = None, method: str | None = None, *,
                   config: UnlearnConfig | None = None,
                   difficulty: str | Path | pd.DataFrame | None = None,
                   scorer: str | None = None, out_dir: str | Path | None = None,
                   save: bool = True, resume: bool = False,
                   run_options: dict[str, Any] | None = None, **settings: Any) -> UnlearnResult:
    """Unlearn `forget_samples` from `model` (trained in place) and measure each sample.

    `method` (a name in `METHODS`) and keyword `settings` override fields of `config`
    (`UnlearnConfig`), e.g. `run_unlearning(m, tok, forget, retain, "npo", epochs=5, lr=1e-4,
    schedule="weighted", difficulty="scores.parquet", scorer="mrd")`. With `out_dir`, the
    run folder files of the module docstring are written (by the main process), and
    `config.json` with `run_options` (e.g. the command line) plus every resolved setting, and
    `n_truncated`, the forget and retain samples cut to `max_length` (default: the model's
    context size).
    """
    config = _resolved_config(config, method, settings)
    if not forget_samples:
        raise DataError("the forget set is empty")
    out = None if out_dir is None else Path(out_dir)
    if resume and out is not None:
        check_resume(out, config)
    run = _UnlearnRun(model, tokenizer, config, out, list(forget_samples),
                      list(retain_samples or []))
    run.setup()
    run.build_streams(difficulty, scorer)
    run.measure_before(resume)
    run.prepare_method(run_options)
    run.prepare_optimizer()
    run.restore()
    run.train()
    return run.finish(save)


def _resolved_config(config: UnlearnConfig | None, method: str | None,
                     settings: dict[str, Any]) -> UnlearnConfig:
    """A copy of `config` (default `UnlearnConfig()`) with `method` and `settings` set; an
    unknown setting is a `TypeError`."""
    config = copy.deepcopy(config or UnlearnConfig())
    for key, value in {**settings, **({"method": method} if method else {})}.items():
        if not hasattr(config, key):
            raise TypeError(f"run_unlearning got an unknown setting '{key}'")
        setattr(config, key, value)
    return config


def _masked_updates(model, config: UnlearnConfig, forget_ids: list[str]) -> MaskedUpdates | None:
    """The circuit mask of `config` enforced on `model` (None without `circuit_mask`)."""
    if config.circuit_mask is None:
        return None
    if config.circuits is None:
        raise DataError(f"circuit_mask '{config.circuit_mask}' needs a circuit store: set "
                        "circuits (a store or a run folder)", field="circuits")
    mask = build_circuit_mask(config.circuit_mask, config.circuits, model,
                              forget_ids=forget_ids, top_n=config.mask_top_n,
                              anchors=config.mask_anchors,
                              seed=config.seed if config.mask_seed is None else config.mask_seed)
    return MaskedUpdates(model, mask)


def _retain_eval_subset(retain, config: UnlearnConfig):
    if config.retain_eval_limit is None or len(retain) <= config.retain_eval_limit:
        return retain
    keep = torch.randperm(len(retain), generator=torch.Generator().manual_seed(config.seed))
    return [retain[i] for i in sorted(keep[: config.retain_eval_limit].tolist())]


@dataclass
class _UnlearnRun:
    """One unlearning run in progress. `run_unlearning` calls its stages in order, each doing
    one job: `setup` (method, Accelerate, encoded samples, step plan), `build_streams`,
    `measure_before`, `prepare_method` (reference model, method state, circuit mask,
    `config.json`), `prepare_optimizer`, `restore` (a checkpoint's progress), `train`, and
    `finish` (measurements after, outcomes, summary, the run folder's files). The fields
    below the inputs are what the stages compute for the later ones."""

    model: torch.nn.Module
    tokenizer: Any
    config: UnlearnConfig
    out: Path | None
    forget_samples: list[Sample]
    retain_samples: list[Sample]
    unlearner: UnlearningMethod = field(init=False)
    accelerator: Accelerator = field(init=False)
    pad: int = field(init=False)
    forget: list[EncodedSample] = field(init=False)
    retain: list[EncodedSample] = field(init=False)
    n_truncated: int = field(init=False)
    forget_ids: list[str] = field(init=False)
    retain_eval: list[EncodedSample] = field(init=False)
    plan: _Plan = field(init=False)
    forget_stream: EpochStream = field(init=False)
    retain_stream: UniformStream | None = field(init=False)
    checkpoints: _Checkpointer = field(init=False)
    resuming: bool = field(init=False)
    before: dict[str, Any] = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)
    scheduler: torch.optim.lr_scheduler.LRScheduler = field(init=False)
    reference: torch.nn.Module | None = None
    masker: MaskedUpdates | None = None
    tracked: list[dict] = field(default_factory=list)  # trajectory rows
    history: list[dict] = field(default_factory=list)  # one record per optimizer step
    start: int = 0  # the first step to train (a resumed run's checkpoint step)
    drawn: np.ndarray = field(init=False)  # [n_forget] bool: forget samples drawn so far

    def setup(self) -> None:
        """The method (refused when its retain term has no retain samples), Accelerate, the
        seed, the encoded samples and the plan of optimizer steps."""
        config = self.config
        self.unlearner = get_method(config.method, **config.method_options)
        if self.unlearner.uses_retain and not self.retain_samples:
            raise DataError(f"method '{config.method}' has a retain term (alpha="
                            f"{self.unlearner.alpha}, {self.unlearner.retain_loss}): give "
                            "retain samples, or set alpha=0")
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        set_seed(config.seed)
        self.pad = pad_id(self.tokenizer)
        forget = encode_for(self.model, self.tokenizer, self.forget_samples, config.max_length)
        retain = encode_for(self.model, self.tokenizer, self.retain_samples, config.max_length)
        self.forget, self.retain = forget.samples, retain.samples
        self.n_truncated = forget.n_truncated + retain.n_truncated
        self.forget_ids = [s.id for s in self.forget_samples]
        if len(set(self.forget_ids)) != len(self.forget_ids):
            raise DataError("forget sample ids are not unique", field="id")
        self.retain_eval = _retain_eval_subset(self.retain, config)
        self.plan = plan_steps(config, len(self.forget), self.accelerator.num_processes)
        if self.accelerator.is_main_process:
            warn_about_idle_steps(self.plan)
        self.drawn = np.zeros(len(self.forget), dtype=bool)

    def build_streams(self, difficulty: str | Path | pd.DataFrame | None,
                      scorer: str | None) -> None:
        """The forget stream of the schedule (scored by `difficulty`'s `scorer` column when
        given) and, for a method with a retain term, the uniform retain stream."""
        config, plan = self.config, self.plan
        scored = ((None, None, None) if difficulty is None
                  else load_difficulty(difficulty, self.forget_ids, scorer))
        self.forget_stream = build_stream(
            config.schedule, len(self.forget), seed=config.seed,
            total_slots=plan.total_steps * plan.global_batch, scorer=scored[0],
            value=scored[1], difficulty=scored[2],
            chunks=config.curriculum_chunks or config.epochs)
        self.retain_stream = (UniformStream(len(self.retain), config.seed + 1)
                              if self.unlearner.uses_retain else None)

    def measure_before(self, resume: bool) -> None:
        """The losses (and ROUGE) before unlearning: measured, or read from the checkpoint of
        a run resumed from one; a fresh run starts its trajectory at step 0."""
        self.checkpoints = _Checkpointer(self.accelerator, self.out)
        self.resuming = resume and self.checkpoints.has_state()
        self.model.to(self.accelerator.device)
        before = self.checkpoints.read_before() if self.resuming else None
        if before is None:
            before = self.evaluate("before")
            self.checkpoints.write_before(before)
            if self.checkpoints.trajectory is not None and self.accelerator.is_main_process:
                self.checkpoints.trajectory.clear()
            if self.config.track_every:
                self.track(0, np.asarray(before["forget_loss"]))
        self.before = before

    def prepare_method(self, run_options: dict[str, Any] | None) -> None:
        """The frozen reference model (for methods that use one), the method's state from the
        forget samples, the circuit mask, and `config.json` (main process)."""
        config = self.config
        if self.unlearner.uses_reference:
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.unlearner.prepare(self.model, self.forget, pad_token_id=self.pad)
        self.masker = _masked_updates(self.model, config, self.forget_ids)
        if self.out is not None and self.accelerator.is_main_process:
            write_config(self.out, "unlearn", {
                **(run_options or {}), "settings": asdict(config),
                "method_options": self.unlearner.options,
                "circuit_mask": None if self.masker is None else self.masker.mask.details,
                "n_forget": len(self.forget), "n_retain": len(self.retain),
                "steps": self.plan.total_steps, "steps_with_lr": self.plan.steps_with_lr,
                "resumed": self.resuming}, n_truncated=self.n_truncated)

    def prepare_optimizer(self) -> None:
        """AdamW over the trainable parameters, the learning-rate schedule, and the model and
        optimizer prepared by Accelerate."""
        config = self.config
        self.model.train()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = get_scheduler(config.lr_scheduler, optimizer,
                                       num_warmup_steps=self.plan.warmup_steps,
                                       num_training_steps=self.plan.total_steps)
        # The scheduler is stepped by hand once per optimizer step; preparing it would make
        # Accelerate step it once per process.
        self.model, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        self.accelerator.register_for_checkpointing(self.scheduler)

    def restore(self) -> None:
        """A resumed run's step, history, drawn samples, stream states and trajectory from its
        checkpoint; nothing for a fresh run."""
        if not self.resuming:
            return
        progress = self.checkpoints.load()
        self.start, self.history = progress["step"], progress["history"]
        if "forget_drawn" not in progress:
            raise DataError("the checkpoint does not record which forget samples were drawn "
                            "(an older version wrote it): rerun without resume",
                            source=str(self.checkpoints.latest / CHECKPOINT_STATE),
                            field="forget_drawn")
        self.drawn[progress["forget_drawn"]] = True
        self.forget_stream.load_state_dict(progress["forget_stream"])
        if self.retain_stream is not None:
            self.retain_stream.load_state_dict(progress["retain_stream"])
        self.tracked = self.restore_trajectory(self.start)
        log.info("resuming unlearning at step %d of %d", self.start, self.plan.total_steps)

    def train(self) -> None:
        """The optimizer steps from `start` to the plan's end, with the tracked losses every
        `track_every` steps and a checkpoint every `checkpoint_every`."""
        config, plan = self.config, self.plan
        bar = progress_bar(total=plan.total_steps, initial=self.start,
                           desc=f"unlearn {config.method}", unit="step",
                           disable=not self.accelerator.is_main_process)
        for step in range(self.start, plan.total_steps):
            forget_indices = self.forget_stream.draw(plan.global_batch)
            retain_indices = (None if self.retain_stream is None
                              else self.retain_stream.draw(plan.global_batch))
            self.drawn[forget_indices] = True
            record = self.train_step(step, forget_indices, retain_indices)
            self.scheduler.step()
            self.history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            bar.update(1)
            done = step + 1
            if config.track_every and done % config.track_every == 0:
                losses = answer_losses(self.accelerator.unwrap_model(self.model), self.forget,
                                       self.pad, batch_size=config.eval_batch_size,
                                       where=f"forget loss at step {done}")
                self.track(done, losses)
            if config.checkpoint_every and done % config.checkpoint_every == 0 \
                    and done < plan.total_steps:
                self.save_checkpoint(done)
        bar.close()

    def train_step(self, step: int, forget_indices: list[int],
                   retain_indices: list[int] | None) -> dict[str, Any]:
        """One optimizer step over `grad_accum` micro-batches on the global batch of dataset
        indices `forget_indices` (and `retain_indices`); returns this process's losses (and,
        with a circuit mask, the number of parameter entries the step could update)."""
        config, accelerator, model = self.config, self.accelerator, self.model
        totals = {"loss": 0.0, "forget_loss": 0.0, "retain_loss": 0.0}
        for micro in range(config.grad_accum):
            forget_batch = self.batch_for_rank(self.forget, forget_indices, micro)
            retain_batch = (None if retain_indices is None
                            else self.batch_for_rank(self.retain, retain_indices, micro))
            last = micro == config.grad_accum - 1
            with nullcontext() if last else accelerator.no_sync(model):
                with training_autocast(config.precision, model):
                    parts = self.unlearner.loss(model, forget_batch, retain_batch,
                                                self.reference)
                check_finite(parts.total.detach(), f"{config.method} loss at step {step + 1}")
                accelerator.backward(parts.total / config.grad_accum)
            totals["loss"] += parts.total.item() / config.grad_accum
            totals["forget_loss"] += parts.forget.item() / config.grad_accum
            if parts.retain is not None:
                totals["retain_loss"] += parts.retain.item() / config.grad_accum
        if self.masker is not None:
            self.masker.before_step(self.masker.mask.for_step(forget_indices))
            totals["update_params"] = self.masker.last_count
        if config.max_grad_norm:
            accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                        config.max_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        if self.masker is not None:
            self.masker.after_step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"step": step + 1, "lr": lr, **totals}

    def batch_for_rank(self, encoded: list[EncodedSample], indices: list[int],
                       micro: int) -> dict[str, torch.Tensor]:
        """This process's slice of micro-batch `micro` of the global batch `indices`, collated
        (`[batch_size, pos]` tensors) on its device."""
        batch_size, accelerator = self.config.batch_size, self.accelerator
        start = micro * batch_size * accelerator.num_processes \
            + accelerator.process_index * batch_size
        chosen = [encoded[i] for i in indices[start: start + batch_size]]
        return move_batch(collate(chosen, self.pad), accelerator.device)

    def evaluate(self, when: str) -> dict[str, Any]:
        """Per-sample forget and retain-evaluation losses (and forget ROUGE with `rouge`)."""
        config = self.config
        result: dict[str, Any] = {
            "forget_loss": answer_losses(self.model, self.forget, self.pad,
                                         batch_size=config.eval_batch_size,
                                         where=f"forget loss {when} unlearning").tolist(),
            "retain_loss": answer_losses(self.model, self.retain_eval, self.pad,
                                         batch_size=config.eval_batch_size,
                                         where=f"retain loss {when} unlearning").tolist()
            if self.retain_eval else [],
        }
        if config.rouge:
            result["forget_rouge"] = greedy_rouge_recall(
                self.model, self.tokenizer, self.forget_samples,
                batch_size=config.eval_batch_size, max_new_tokens=config.max_new_tokens).tolist()
        return result

    def track(self, step: int, losses: np.ndarray) -> None:
        """Record per-sample losses at `step`, in memory and (main process) in the
        checkpoint."""
        rows = [{"step": step, "sample_id": sid, "loss": float(loss),
                 "prob": float(np.exp(-loss))}
                for sid, loss in zip(self.forget_ids, losses, strict=True)]
        self.tracked.extend(rows)
        if self.checkpoints.trajectory is not None and self.accelerator.is_main_process:
            self.checkpoints.trajectory.append(rows)

    def restore_trajectory(self, step: int) -> list[dict]:
        """Trajectory rows up to the checkpoint's step; later ones (the killed run got further)
        are dropped from the record."""
        trajectory = self.checkpoints.trajectory
        if trajectory is None:
            return []
        kept = [r for r in trajectory.read() if r["step"] <= step]
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            trajectory.clear()
            trajectory.append(kept)
        return kept

    def save_checkpoint(self, done: int) -> None:
        """The checkpoint after `done` steps: its progress and the streams' states."""
        self.checkpoints.save({
            "step": done, "history": self.history,
            "forget_drawn": np.flatnonzero(self.drawn).tolist(),
            "forget_stream": self.forget_stream.state_dict(),
            "retain_stream": None if self.retain_stream is None
            else self.retain_stream.state_dict()})

    def finish(self, save: bool) -> UnlearnResult:
        """The measurements after unlearning, the outcomes and summary, and (main process)
        the run folder's files; the checkpoint is removed."""
        self.model = self.accelerator.unwrap_model(self.model)
        self.model.eval().requires_grad_(True)
        after = self.evaluate("after")
        outcomes = outcome_table(self.forget_ids, self.before["forget_loss"],
                                 after["forget_loss"], self.before.get("forget_rouge"),
                                 after.get("forget_rouge"))
        summary = self.summary(outcomes, after)
        columns = ["step", "lr", "loss", "forget_loss", "retain_loss"]
        if self.masker is not None:
            columns.append("update_params")
        training = pd.DataFrame(self.history, columns=columns)
        trajectory = (pd.DataFrame(self.tracked, columns=["step", "sample_id", "loss", "prob"])
                      if self.config.track_every else None)
        if self.out is not None and self.accelerator.is_main_process:
            self.write(outcomes, summary, training, trajectory, save)
        self.accelerator.wait_for_everyone()
        self.checkpoints.remove()
        return UnlearnResult(self.model, outcomes, summary, trajectory, training)

    def summary(self, outcomes: pd.DataFrame, after: dict[str, Any]) -> dict[str, Any]:
        """`summary.json`: the method, the steps, the forget (and retain) losses before and
        after, the mean efficacy, the settings, and the circuit mask's update counts."""
        config, plan, before = self.config, self.plan, self.before
        summary: dict[str, Any] = {
            "method": config.method, "method_options": self.unlearner.options,
            "steps": plan.total_steps, "steps_with_lr": plan.steps_with_lr,
            "n_forget": len(self.forget_ids), "n_retain": len(self.retain),
            "forget_slots": plan.total_steps * plan.global_batch,
            "distinct_forget_samples_drawn": int(self.drawn.sum()),
            "forget": loss_summary(np.asarray(before["forget_loss"]),
                                   np.asarray(after["forget_loss"])),
            "mean_efficacy": float(outcomes["efficacy"].mean()),
            "settings": asdict(config),
        }
        if before["retain_loss"]:
            summary["retain"] = loss_summary(np.asarray(before["retain_loss"]),
                                             np.asarray(after["retain_loss"]))
            summary["n_retain_evaluated"] = len(before["retain_loss"])
        if config.rouge:
            summary["forget"]["rouge_before"] = float(np.mean(before["forget_rouge"]))
            summary["forget"]["rouge_after"] = float(np.mean(after["forget_rouge"]))
        if self.masker is not None:
            counts = [record["update_params"] for record in self.history]
            summary["circuit_mask"] = {
                **self.masker.mask.details,
                "parameters_total": sum(p.numel() for p in self.model.parameters()),
                "update_params_mean": float(np.mean(counts)), "update_params_max": max(counts)}
        return summary

    def write(self, outcomes: pd.DataFrame, summary: dict[str, Any], training: pd.DataFrame,
              trajectory: pd.DataFrame | None, save: bool) -> None:
        """`summary.json`, `training.parquet`, `trajectory.parquet` (with `track_every`), with
        `save` the model and tokenizer in `model/`, and `outcomes.parquet` last: `unlearn
        --seeds --resume` takes a folder with outcomes for a finished run."""
        out = self.out
        write_json(out / SUMMARY_FILE, summary)
        write_parquet(out / TRAINING_FILE, training)
        if trajectory is not None:
            write_parquet(out / TRAJECTORY_FILE, trajectory)
        if save:
            self.model.save_pretrained(out / MODEL_DIR, safe_serialization=True)
            self.tokenizer.save_pretrained(out / MODEL_DIR)
        write_parquet(out / OUTCOMES_FILE, outcomes)

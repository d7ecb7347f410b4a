"""Unlearning methods: each a small class that only defines its forget loss (DESIGN 5.2).

`L = gamma * L_forget + alpha * L_retain`, each term a batch mean of per-sample values
(`unlearnscope.unlearning.losses`). The answer-NLL terms (GradAscent's and GradDiff's forget
term, and the `nll` retain term of every method) weight each sample by its number of answer
tokens, `nll_weighting="token"`: the mean over every answer token of the (micro-)batch, which
is the `model(**batch).loss` open-unlearning takes; `nll_weighting="sample"` weights every
sample equally, so long answers count as much as short ones. The other terms (NPO, SimNPO,
UNDIAL, RMU, the KL regularizer) are plain means of their per-sample values (DESIGN 5.2).
Defaults follow open-unlearning's TOFU configs (for RMU its `setting="reference"`). A method
is called with the trainable `model` (an HF causal LM, a DDP wrapper of one, or any callable
taking `input_ids`/`attention_mask` and returning `.logits`), a forget batch, a retain batch
(or None) and the frozen `reference` model (None unless `uses_reference`). Batches are the
dicts built by `unlearnscope.data.tokenize.collate`; `attention_mask` may be left out (right
padding under causal attention never changes the real positions).

Add a method: one subclass defining `forget_loss`, and one line in `METHODS`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from unlearnscope.data.tokenize import IGNORE_INDEX, EncodedSample, iter_batches_by_length
from unlearnscope.errors import DataError, UnknownNameError
from unlearnscope.models.architecture import decoder_layers
from unlearnscope.models.inputs import model_device, move_batch
from unlearnscope.models.logprobs import mean_answer_nll, sequence_logprob
from unlearnscope.unlearning import losses

Batch = dict[str, torch.Tensor]


def forward_logits(model: Callable[..., Any], batch: Batch) -> torch.Tensor:
    """Logits `[batch, pos, vocab]` of `model` on a collated batch."""
    return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits


def reference_logits(reference: nn.Module, batch: Batch) -> torch.Tensor:
    """Logits of the frozen reference model, without building a graph."""
    with torch.no_grad():
        return forward_logits(reference, batch)


def nll_retain(model, batch: Batch, reference: nn.Module | None) -> torch.Tensor:
    """Retain NLL: mean answer NLL per sample `[batch]`."""
    return mean_answer_nll(forward_logits(model, batch), batch["labels"])


def kl_retain(model, batch: Batch, reference: nn.Module | None) -> torch.Tensor:
    """Retain KL(reference || model) on answer positions `[batch]`."""
    return losses.kl_to_reference(forward_logits(model, batch), reference_logits(reference, batch),
                                  batch["labels"])


RETAIN_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"nll": nll_retain, "kl": kl_retain}
NLL_WEIGHTINGS = ("token", "sample")


@dataclass
class LossParts:
    """The total loss (a scalar with a graph) and its two terms, detached, for logging."""

    total: torch.Tensor
    forget: torch.Tensor
    retain: torch.Tensor | None


class UnlearningMethod:
    """Base class: `loss = gamma * mean(forget_loss) + alpha * mean(retain_loss)`.

    `retain_loss` names an entry of `RETAIN_LOSSES` or is None (no retain term); the retain
    forward is skipped when `alpha == 0`. Answer-NLL terms (the `nll` retain term, and the
    forget term where `forget_is_nll`) are averaged as `nll_weighting` says
    (`losses.nll_batch_mean`), the others with equal weights.
    """

    name: ClassVar[str]
    forget_needs_reference: ClassVar[bool] = False
    forget_is_nll: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {"gamma": 1.0, "alpha": 1.0, "retain_loss": "nll",
                                          "nll_weighting": "token"}

    def __init__(self, **options: Any) -> None:
        settings = {**UnlearningMethod.defaults, **self.defaults}
        unknown = set(options) - set(settings)
        if unknown:
            raise UnknownNameError(f"{self.name} option", sorted(unknown)[0], list(settings))
        settings.update(options)
        self._option_names = list(settings)
        for key, value in settings.items():
            setattr(self, key, value)
        if self.retain_loss is not None and self.retain_loss not in self.retain_losses():
            raise UnknownNameError("retain loss", self.retain_loss, list(self.retain_losses()))
        if self.nll_weighting not in NLL_WEIGHTINGS:
            raise UnknownNameError("nll_weighting", self.nll_weighting, list(NLL_WEIGHTINGS))

    @property
    def options(self) -> dict[str, Any]:
        """Every setting as now resolved (e.g. RMU's layers after `prepare`)."""
        return {name: getattr(self, name) for name in self._option_names}

    def retain_losses(self) -> dict[str, Callable[..., torch.Tensor]]:
        return RETAIN_LOSSES

    @property
    def uses_retain(self) -> bool:
        return self.retain_loss is not None and self.alpha != 0

    @property
    def uses_reference(self) -> bool:
        """Whether a frozen copy of the starting model is needed."""
        return self.forget_needs_reference or (self.uses_retain and self.retain_loss == "kl")

    def prepare(self, model: nn.Module, forget: Sequence[EncodedSample] | None = None, *,
                pad_token_id: int = 0) -> None:
        """Adjust the model before the optimizer is built (e.g. freeze parameters).

        `forget` (the encoded forget samples, padded with `pad_token_id` when batched) is
        for methods that measure the starting model on them (RMU's `steering_coeff="auto"`).
        """

    def forget_loss(self, model, batch: Batch, reference: nn.Module | None) -> torch.Tensor:
        """Per-sample forget term `[batch]`."""
        raise NotImplementedError

    def nll_mean(self, nll: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Batch mean (scalar) of per-sample mean answer NLLs `[batch]`, by `nll_weighting`."""
        return losses.nll_batch_mean(nll, batch["labels"], self.nll_weighting)

    def loss(self, model, forget: Batch, retain: Batch | None,
             reference: nn.Module | None) -> LossParts:
        forget_values = self.forget_loss(model, forget, reference)
        forget_term = (self.nll_mean(forget_values, forget) if self.forget_is_nll
                       else forget_values.mean())
        total = self.gamma * forget_term
        retain_term = None
        if self.uses_retain and retain is not None:
            retain_values = self.retain_losses()[self.retain_loss](model, retain, reference)
            retain_term = (self.nll_mean(retain_values, retain) if self.retain_loss == "nll"
                           else retain_values.mean())
            total = total + self.alpha * retain_term
        return LossParts(total, forget_term.detach(),
                         None if retain_term is None else retain_term.detach())


class GradAscent(UnlearningMethod):
    """Gradient ascent: `L_forget = -NLL` (by default the mean NLL over the batch's answer
    tokens, open-unlearning's `-model(**batch).loss`), no retain term."""

    name = "grad_ascent"
    forget_is_nll = True
    defaults: ClassVar[dict[str, Any]] = {"alpha": 0.0, "retain_loss": None}

    def forget_loss(self, model, batch: Batch, reference: nn.Module | None) -> torch.Tensor:
        return -mean_answer_nll(forward_logits(model, batch), batch["labels"])


class GradDiff(GradAscent):
    """Gradient difference: ascent on the forget NLL, descent on the retain NLL (both token
    means over the batch by default)."""

    name = "grad_diff"
    defaults: ClassVar[dict[str, Any]] = {"gamma": 1.0, "alpha": 1.0, "retain_loss": "nll"}


class NPO(UnlearningMethod):
    """Negative preference optimization on the summed answer log-prob ratio to the reference."""

    name = "npo"
    forget_needs_reference = True
    defaults: ClassVar[dict[str, Any]] = {"beta": 0.1}

    def forget_loss(self, model, batch: Batch, reference: nn.Module | None) -> torch.Tensor:
        logp = sequence_logprob(forward_logits(model, batch), batch["labels"])
        logp_ref = sequence_logprob(reference_logits(reference, batch), batch["labels"])
        return losses.npo_loss(logp, logp_ref, self.beta)


class SimNPO(UnlearningMethod):
    """Reference-free NPO on the length-normalized answer NLL."""

    name = "simnpo"
    defaults: ClassVar[dict[str, Any]] = {"beta": 4.5, "delta": 0.0, "gamma": 0.125}

    def forget_loss(self, model, batch: Batch, reference: nn.Module | None) -> torch.Tensor:
        nll = mean_answer_nll(forward_logits(model, batch), batch["labels"])
        return losses.simnpo_loss(nll, self.beta, self.delta)


class Undial(UnlearningMethod):
    """UNDIAL: self-distillation to the reference with the answer token's logit lowered."""

    name = "undial"
    forget_needs_reference = True
    defaults: ClassVar[dict[str, Any]] = {"beta": 10.0, "alpha": 0.0}

    def forget_loss(self, model, batch: Batch, reference: nn.Module | None) -> torch.Tensor:
        return losses.undial_loss(forward_logits(model, batch), reference_logits(reference, batch),
                                  batch["labels"], self.beta)


class _StopForward(Exception):
    """Raised by the hook of `stop_after` to end a forward at a block, carrying its output."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__("forward stopped after the steered block")
        self.hidden = hidden


@contextmanager
def stop_after(model, block: nn.Module):
    """While open, calling `model` returns `block`'s output `[batch, pos, d_model]` and runs
    nothing after it (later blocks, final norm, LM head).

    A forward hook on `block` raises `_StopForward`; the forward of the HF model (`model`,
    or `model.module` for a DDP wrapper or a functional wrapper) is patched to catch it and
    return the hidden state, so a DDP wrapper's own forward completes (its gradient
    synchronization is prepared on that output) and the graph up to `block` is the one a
    full forward builds.
    """
    inner = getattr(model, "module", model)
    had_own_forward = "forward" in vars(inner)
    original = inner.forward

    def hook(_module, _inputs, output):
        raise _StopForward(output[0] if isinstance(output, tuple) else output)

    def forward(*args, **kwargs):
        try:
            original(*args, **kwargs)
        except _StopForward as stop:
            return stop.hidden
        raise RuntimeError(f"{type(block).__name__} was not called by the forward")

    handle = block.register_forward_hook(hook)
    inner.forward = forward
    try:
        yield
    finally:
        handle.remove()
        if had_own_forward:
            inner.forward = original
        else:
            del inner.forward


MLP_DOWN_PROJ = r"mlp\.(down_proj|c_proj|dense_4h_to_h|fc_out|fc2)\.weight"
RMU_SETTINGS: dict[str, dict[str, Any]] = {
    "reference": {"steering_coeff": 2.0, "alpha": 1.0, "layer": 7, "trainable_layers": "all",
                  "trainable_params": None},
    "small-model": {"steering_coeff": 300.0, "alpha": 1000.0, "layer": None,
                    "trainable_layers": None, "trainable_params": MLP_DOWN_PROJ},
}


class RMU(UnlearningMethod):
    """Representation misdirection: push block `layer`'s output on forget answer tokens toward
    `steering_coeff * u` (u a fixed random unit vector drawn from `seed`); the retain term
    (`hidden_mse`) keeps retain hidden states at the frozen model's.

    `setting` names the values of the options not given explicitly:
    - `reference` (default): open-unlearning's `configs/trainer/RMU.yaml` for TOFU (tuned on
      Llama-3.2-1B): block 7 steered, steering_coeff 2, alpha 1, gamma 1, every parameter
      trained (every one the steered output depends on: see below).
    - `small-model`: this toolkit's earlier setting, which moves few weights of a small model:
      only the MLP down-projection matrices of the steered block and the two before it train
      (WMDP's RMU choice), the steered block is `n_layers // 2 - 1` (7 of 16, scaled to the
      model), steering_coeff 300, alpha 1000.

    Options: `layer` (None: `n_layers // 2 - 1`; past the last block: the last block);
    `trainable_layers` "all" (every parameter, see below) or block indices (None: `layer` and the two
    before it) whose parameters named (inside the block) as the regex `trainable_params` train;
    `steering_coeff` a number, or "auto": `steering_scale` (default 1) times the mean L2 norm of
    the starting model's block-`layer` output over the forget answer tokens, measured by
    `prepare` (given the forget samples) before training, so `options` shows the number
    (`steering_coeff`) and the norm (`forget_hidden_norm`).

    The losses read only block `layer`'s output, so every forward (forget, retain, frozen
    reference) stops after that block (`stop_after`): the blocks above it, the final norm and
    the LM head never run, and loss and gradients are a full forward's. Unless the retain loss
    is `nll` or `kl` (which read the logits), `prepare` freezes the trainable parameters the
    steered output does not depend on (with `trainable_layers="all"`: the blocks above
    `layer`, the final norm and an untied LM head). They keep the starting model's values
    exactly: RMU's loss never changed them, and AdamW's weight decay, which applies only to
    parameters with a gradient, does not either. In the trainer a full forward gave the same
    (their gradient was None, which AdamW skips); in `steps_to_forget`, where `torch.func.grad`
    returns zero gradients for them, they are no longer decayed and no longer stacked per
    copy. Frozen, they are also outside DDP's gradient reduction, which refuses parameters
    that get no gradient.
    """

    name = "rmu"
    defaults: ClassVar[dict[str, Any]] = {
        "setting": "reference", "gamma": 1.0, "retain_loss": "hidden_mse",
        **RMU_SETTINGS["reference"], "steering_scale": None, "seed": 0,
    }

    def __init__(self, **options: Any) -> None:
        setting = options.get("setting", self.defaults["setting"])
        if setting not in RMU_SETTINGS:
            raise UnknownNameError("rmu setting", setting, list(RMU_SETTINGS))
        super().__init__(**{**RMU_SETTINGS[setting], **options})
        self._steering: dict[int, torch.Tensor] = {}
        self.forget_hidden_norm: float | None = None
        self._auto_steering = self.steering_coeff == "auto"
        if self._auto_steering:
            self.steering_scale = 1.0 if self.steering_scale is None else float(self.steering_scale)
        elif self.steering_scale is not None:
            raise DataError("steering_scale applies to steering_coeff='auto' only",
                            field="rmu.steering_scale")
        elif isinstance(self.steering_coeff, str):
            raise DataError(f"expected a number or 'auto', got '{self.steering_coeff}'",
                            field="rmu.steering_coeff")
        if self.trainable_layers == "all":
            if options.get("trainable_params") is not None:
                raise DataError("trainable_layers='all' trains every parameter: leave "
                                "trainable_params unset", field="rmu.trainable_params")
            self.trainable_params = None
        elif isinstance(self.trainable_layers, str):
            raise DataError(f"expected 'all' or a list of block indices, got "
                            f"'{self.trainable_layers}'", field="rmu.trainable_layers")

    @property
    def options(self) -> dict[str, Any]:
        return {**super().options, "forget_hidden_norm": self.forget_hidden_norm}

    def retain_losses(self) -> dict[str, Callable[..., torch.Tensor]]:
        return {"hidden_mse": self._retain_hidden_mse, **RETAIN_LOSSES}

    @property
    def uses_reference(self) -> bool:
        return self.uses_retain and self.retain_loss in ("hidden_mse", "kl")

    def prepare(self, model: nn.Module, forget: Sequence[EncodedSample] | None = None, *,
                pad_token_id: int = 0) -> None:
        blocks = decoder_layers(model)
        self.layer = self.resolved_layer(len(blocks))
        if self.trainable_layers == "all":
            trainable = {id(param) for param in model.parameters()}
        else:
            if self.trainable_layers is None:
                self.trainable_layers = list(range(max(0, self.layer - 2), self.layer + 1))
            trainable = {id(param) for index in self.trainable_layers
                         for name, param in blocks[index].named_parameters()
                         if re.fullmatch(self.trainable_params, name)}
            if not trainable:
                raise ValueError(f"rmu: no parameter of layers {self.trainable_layers} matches "
                                 f"'{self.trainable_params}'")
        for param in model.parameters():
            param.requires_grad_(id(param) in trainable)
        if not self.uses_retain or self.retain_loss == "hidden_mse":
            self._freeze_unreached(model)
        if self._auto_steering:
            if forget is None:
                raise DataError("steering_coeff='auto' is measured on the forget samples: "
                                "pass them to prepare", field="rmu.steering_coeff")
            self.forget_hidden_norm = self.mean_hidden_norm(model, forget, pad_token_id)
            self.steering_coeff = self.steering_scale * self.forget_hidden_norm
        self._steering.clear()
        self.steering_vector(getattr(model, "module", model).config.hidden_size)

    def _freeze_unreached(self, model: nn.Module) -> None:
        """Stop training the parameters that block `layer`'s output does not depend on (found
        by a one-token probe forward and backward, in eval mode, so no random state moves)."""
        params = [p for p in model.parameters() if p.requires_grad]
        probe = {"input_ids": torch.zeros((1, 1), dtype=torch.long, device=params[0].device)}
        was_training = model.training
        model.eval()
        with torch.enable_grad():
            hidden = self.hidden_state(model, probe)
            grads = (torch.autograd.grad(hidden.sum(), params, allow_unused=True)
                     if hidden.requires_grad else [None] * len(params))
        model.train(was_training)
        for param, gradient in zip(params, grads, strict=True):
            if gradient is None:
                param.requires_grad_(False)
        if all(gradient is None for gradient in grads):
            raise ValueError(f"rmu: no trainable parameter (layers {self.trainable_layers}) "
                             f"reaches the output of block {self.layer}")

    @torch.no_grad()
    def mean_hidden_norm(self, model: nn.Module, forget: Sequence[EncodedSample],
                         pad_token_id: int, batch_size: int = 16) -> float:
        """Mean L2 norm of block `layer`'s output (a `[d_model]` vector per position) over the
        answer positions (`labels != -100`) of `forget`, every token of every sample pooled,
        with `model` in eval mode."""
        device = model_device(model)
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for _, batch in iter_batches_by_length(forget, batch_size, pad_token_id):
            batch = move_batch(batch, device)
            norms = self.hidden_state(model, batch).double().norm(dim=-1)
            answer = batch["labels"] != IGNORE_INDEX
            total += float(norms[answer].sum())
            count += int(answer.sum())
        model.train(was_training)
        if count == 0:
            raise DataError("the forget samples have no answer tokens", field="answer")
        return total / count

    def steering_vector(self, d_model: int) -> torch.Tensor:
        """`steering_coeff * u` `[d_model]`, u uniform on [0, 1)^d normalized, fixed by `seed`.

        Drawn once per width (random ops cannot run inside `torch.func.vmap`; `prepare` draws it
        for the model's width before any transform)."""
        if isinstance(self.steering_coeff, str):
            raise DataError("steering_coeff='auto' is measured by prepare: call it first",
                            field="rmu.steering_coeff")
        if d_model not in self._steering:
            generator = torch.Generator().manual_seed(int(self.seed))
            direction = torch.rand(d_model, generator=generator)
            self._steering[d_model] = self.steering_coeff * direction / direction.norm()
        return self._steering[d_model]

    def resolved_layer(self, n_layers: int) -> int:
        """The steered block's index for a model with `n_layers` blocks."""
        layer = n_layers // 2 - 1 if self.layer is None else int(self.layer)
        return max(0, min(layer, n_layers - 1))

    def hidden_state(self, model, batch: Batch) -> torch.Tensor:
        """Output of block `layer` `[batch, pos, d_model]`; the forward stops there."""
        blocks = decoder_layers(model)
        with stop_after(model, blocks[self.resolved_layer(len(blocks))]):
            return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))

    def forget_loss(self, model, batch: Batch, reference: nn.Module | None) -> torch.Tensor:
        hidden = self.hidden_state(model, batch)
        target = self.steering_vector(hidden.shape[-1]).to(hidden.device)
        return losses.hidden_mse(hidden, target, batch["labels"] != IGNORE_INDEX)

    def _retain_hidden_mse(self, model, batch: Batch, reference: nn.Module | None) -> torch.Tensor:
        hidden = self.hidden_state(model, batch)
        with torch.no_grad():
            frozen = self.hidden_state(reference, batch)
        return losses.hidden_mse(hidden, frozen, batch["labels"] != IGNORE_INDEX)


METHODS: dict[str, type[UnlearningMethod]] = {
    cls.name: cls for cls in (GradAscent, GradDiff, NPO, SimNPO, Undial, RMU)
}


def get_method(name: str, **options: Any) -> UnlearningMethod:
    """Instantiate the method registered as `name` with option overrides."""
    if name not in METHODS:
        raise UnknownNameError("unlearning method", name, list(METHODS))
    return METHODS[name](**options)

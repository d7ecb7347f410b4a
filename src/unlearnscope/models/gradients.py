"""Per-sample gradients of a per-sample objective, and reductions of them to one number.

A plain backward pass over a batch sums the samples' gradients. Here a batch of samples is
differentiated at once with `torch.func.vmap(grad(...))` over the model as a function of its
weights, and a reduction (a norm) is taken inside the vmapped function, so only one number per
sample leaves it. `bench/gradients.py` compares it with a loop of per-sample backward passes
and with one batched forward pass and a vmapped backward (`autograd.grad(...,
is_grads_batched=True)`); its results are in `bench/results/gradients*.json`. Batches are
shrunk so that the per-sample gradients held at once stay under `PER_SAMPLE_GRADIENT_BUDGET`
entries: on a tiny model many samples share a pass, while for a 100M+ parameter model one
sample's gradient alone exceeds it.

Inside vmap the attention mask is left out: transformers' mask builder branches on the mask's
values, and with right padding no real token attends to a padding position anyway. Attention
runs on the math SDPA kernel, which has vmap batching rules. The model should be in eval mode
(vmap refuses random dropout).

The grad-norm baseline, the gradient-norm MIA attack, the closed-form MRD and the bilevel
anchors' gradient features all take their per-sample gradients from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from unlearnscope.data.tokenize import EncodedSample, iter_batches_by_length
from unlearnscope.models.logprobs import mean_answer_nll
from unlearnscope.progress import progress_bar

# For SmolLM2-135M on a CPU, 4 samples per pass measured 2x slower than 1 (memory traffic).
PER_SAMPLE_GRADIENT_BUDGET = 2 ** 24

# logits `[batch, pos, vocab]`, labels `[batch, pos]` -> one value per sample `[batch]`
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# one sample's gradient, a tensor per parameter -> a scalar
Reduction = Callable[[Sequence[torch.Tensor]], torch.Tensor]


def trainable_parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters gradients are taken with respect to, in `model.parameters()` order."""
    return [p for p in model.parameters() if p.requires_grad]


def gradient_batch_size(n_params: int, batch_size: int) -> int:
    """At most `batch_size`, and at most as many samples as fit `PER_SAMPLE_GRADIENT_BUDGET`."""
    return max(1, min(batch_size, PER_SAMPLE_GRADIENT_BUDGET // max(n_params, 1)))


def _weights(model: torch.nn.Module, all_weights: bool) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters()
            if all_weights or p.requires_grad}


def _vmapped_batches(model: torch.nn.Module, encoded: Sequence[EncodedSample],
                     pad_token_id: int, objective: Objective, per_sample: Callable,
                     weights: dict[str, torch.Tensor], batch_size: int):
    """Yield `(indices, vmap(per_sample)(...))` per batch; `per_sample(gradient)` maps one
    sample's gradient dict to what is returned for it."""
    def value(weights, input_ids, labels):
        logits = functional_call(model, weights, (), {"input_ids": input_ids[None]}).logits
        return objective(logits, labels[None]).sum()

    def one_sample(weights, input_ids, labels):
        return per_sample(grad(value)(weights, input_ids, labels))

    batched = vmap(one_sample, in_dims=(None, 0, 0))
    device = next(iter(weights.values())).device
    chunk = gradient_batch_size(sum(w.numel() for w in weights.values()), batch_size)
    with sdpa_kernel(SDPBackend.MATH):
        for indices, batch in iter_batches_by_length(encoded, chunk, pad_token_id):
            yield indices, batched(weights, batch["input_ids"].to(device),
                                   batch["labels"].to(device))


def per_sample_gradients(model: torch.nn.Module, encoded: Sequence[EncodedSample],
                         pad_token_id: int, *, objective: Objective = mean_answer_nll,
                         all_weights: bool = False, batch_size: int = 8,
                         ) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
    """Yield `(indices, grads)` per batch: the gradient of each sample's `objective` w.r.t.
    each trainable parameter (every parameter with `all_weights`), `[batch, *param.shape]` in
    the parameter's dtype and `model.parameters()` order. An unreached parameter gets zeros."""
    weights = _weights(model, all_weights)
    for indices, grads in _vmapped_batches(model, encoded, pad_token_id, objective,
                                           lambda gradient: gradient, weights, batch_size):
        yield indices, [grads[name] for name in weights]


def total_l2_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """||g|| over all parameters together, in float64."""
    return torch.stack([g.pow(2).sum(dtype=torch.float64) for g in grads]).sum().sqrt()


def mean_tensor_norm(p: float = 2.0) -> Reduction:
    """The mean over parameter tensors of each tensor's p-norm, in float64."""
    def reduce(grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.linalg.vector_norm(g.double(), ord=p) for g in grads]).mean()
    return reduce


def per_sample_gradient_norms(model: torch.nn.Module, encoded: Sequence[EncodedSample],
                              pad_token_id: int, *, objective: Objective = mean_answer_nll,
                              reduce: Reduction = total_l2_norm, all_weights: bool = False,
                              batch_size: int = 8, desc: str | None = "per-sample gradients",
                              ) -> torch.Tensor:
    """`reduce` of each sample's gradient of `objective` (w.r.t. the trainable parameters, or
    every one with `all_weights`): `[n_samples]` float64 in the order of `encoded`.
    `desc=None` hides the progress bar."""
    weights = _weights(model, all_weights)
    out = torch.empty(len(encoded), dtype=torch.float64)
    bar = progress_bar(total=len(encoded), desc=desc, unit="sample", leave=False,
                       disable=desc is None)
    for indices, values in _vmapped_batches(
            model, encoded, pad_token_id, objective,
            lambda gradient: reduce(list(gradient.values())), weights, batch_size):
        out[indices] = values.cpu()
        bar.update(len(indices))
    bar.close()
    return out

"""The `bilevel` anchors (DESIGN 5.7, the CUD paper's formulation).

Weights w in [0, 1]^N with sum w = k select forget samples. Inner problem: T steps of gradient
descent with learning rate eta on

    L_in(theta; w) = alpha * L_retain(theta) - sum_j w_j loss_j(theta)

(L_retain the mean retain answer NLL, loss_j sample j's mean answer NLL), from theta_0 to
theta(w). Outer problem, for the easy set (sign +1) and the hard set (sign -1):

    max_w  sign * sum_j w_j (loss_j(theta(w)) - loss_j(theta_0))
           - rho_retain * (L_retain(theta(w)) - L_retain(theta_0)) - rho_sparse * sum_j w_j (1 - w_j)

Two solvers of the same objective:
- `unrolled`: differentiate through the T inner steps (`torch.func.functional_call`,
  `torch.autograd.grad(create_graph=True)`); small models.
- `gram` (T = 1): to first order one step changes loss_j by eta * g_j . (sum_i w_i g_i -
  alpha g_R), so the objective is a quadratic form in w given the Gram matrix G = [g_i . g_j]
  and b = [g_j . g_R]: sign * eta * (w'Gw - alpha w'b) - rho_retain * eta * (w'b - alpha |g_R|^2)
  - rho_sparse * sum w(1 - w). G is exact or sketched (`gradients.GradientSketch`).

w starts uniform (k/N) and follows projected gradient ascent onto the capped simplex: each step
moves by `outer_lr` times the gradient divided by its largest entry (the objective's scale, eta
|g|^2, varies by orders of magnitude between models). The final w is rounded to its top k; a
sample in both top-k lists joins the set where its weight is larger (easy on a tie) and the
other set takes its next-ranked sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from unlearnscope.anchors.gradient_sketch import GradientSketch, gradient_features, retain_feature
from unlearnscope.anchors.projection import project_capped_simplex
from unlearnscope.anchors.sets import check_k
from unlearnscope.data.sample import Sample
from unlearnscope.data.tokenize import iter_batches, pad_id
from unlearnscope.errors import DataError, UnknownNameError
from unlearnscope.models.inputs import encode_for, model_device, move_batch
from unlearnscope.models.logprobs import mean_answer_nll
from unlearnscope.progress import progress_bar
from unlearnscope.runs import check_finite

SOLVERS = ("auto", "gram", "unrolled")
Params = dict[str, torch.Tensor]


@dataclass
class BilevelSettings:
    """Inner problem (`steps` T, `inner_lr` eta, `retain_weight` alpha), outer penalties and
    the projected-gradient optimizer."""

    steps: int = 1
    inner_lr: float = 1e-3
    retain_weight: float = 1.0
    retain_penalty: float = 1.0
    sparsity_penalty: float = 0.0
    outer_steps: int = 200
    outer_lr: float = 0.05


@dataclass
class BilevelResult:
    """Disjoint easy and hard sets (highest weight first), the final weights by sample id, the
    outer objective at the final weights, and how many forget and retain samples were cut to
    the length limit."""

    easy: list[str]
    hard: list[str]
    weights: dict[str, dict[str, float]]
    objective: dict[str, float]
    n_truncated: int = 0


def gram_forgetting(w: torch.Tensor, gram: torch.Tensor, retain_products: torch.Tensor | None,
                    retain_sq: float, *, inner_lr: float, retain_weight: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """First-order one-step loss changes: `[N]` forget (eta (G w - alpha b)) and the retain
    loss change (eta (b . w - alpha |g_R|^2)), from w `[N]`, G `[N, N]`, b `[N]` or None."""
    delta = inner_lr * (gram @ w)
    if retain_products is None:
        return delta, w.new_zeros(())
    delta = delta - inner_lr * retain_weight * retain_products
    return delta, inner_lr * (retain_products @ w - retain_weight * retain_sq)


def unrolled_forgetting(params: Params, forget_losses: Callable[[Params], torch.Tensor],
                        retain_loss: Callable[[Params], torch.Tensor] | None, w: torch.Tensor, *,
                        steps: int, inner_lr: float, retain_weight: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss changes after `steps` inner gradient steps, differentiable in `w` `[N]`: forget
    `[N]` (loss_j(theta_T) - loss_j(theta_0)) and the retain loss change (scalar).

    `forget_losses(params) -> [N]`, `retain_loss(params) -> []` evaluate the losses at
    `params` (name -> tensor), e.g. through `torch.func.functional_call`.
    """
    start = {name: p.detach().requires_grad_() for name, p in params.items()}
    with torch.no_grad():
        forget_before = forget_losses(start)
        retain_before = retain_loss(start) if retain_loss is not None else None
    current = start
    for _ in range(steps):
        inner = -(w * forget_losses(current)).sum()
        if retain_loss is not None:
            inner = inner + retain_weight * retain_loss(current)
        grads = torch.autograd.grad(inner, list(current.values()), create_graph=True)
        current = {name: p - inner_lr * g for (name, p), g in zip(current.items(), grads,
                                                                   strict=True)}
    delta = forget_losses(current) - forget_before
    if retain_loss is None:
        return delta, w.new_zeros(())
    return delta, retain_loss(current) - retain_before


def outer_objective(w: torch.Tensor, delta: torch.Tensor, retain_increase: torch.Tensor,
                    sign: float, settings: BilevelSettings) -> torch.Tensor:
    """sign * w . delta - rho_retain * retain increase - rho_sparse * sum w (1 - w)."""
    return (sign * (w * delta).sum() - settings.retain_penalty * retain_increase
            - settings.sparsity_penalty * (w * (1 - w)).sum())


def optimize_weights(objective: Callable[[torch.Tensor], torch.Tensor], n: int, k: int, *,
                     outer_steps: int, outer_lr: float, dtype: torch.dtype = torch.float64,
                     desc: str = "bilevel") -> torch.Tensor:
    """Projected gradient ascent of `objective(w)` over {w in [0,1]^n, sum w = k}: `[n]`."""
    w = torch.full((n,), k / n, dtype=dtype)
    for _ in progress_bar(range(outer_steps), desc=desc, unit="step"):
        variable = w.detach().requires_grad_()
        value = objective(variable)
        check_finite(value.detach(), f"{desc} outer objective")
        (grad,) = torch.autograd.grad(value, variable)
        scale = grad.abs().max()
        if scale == 0:
            break
        w = project_capped_simplex(w + outer_lr * grad / scale, k)
    return w.detach()


def _ranking(w: torch.Tensor, ids: Sequence[str]) -> list[str]:
    """Ids by decreasing weight, ties by id."""
    return [ids[i] for i in sorted(range(len(ids)), key=lambda i: (-float(w[i]), ids[i]))]


def round_disjoint(w_easy: torch.Tensor, w_hard: torch.Tensor, ids: Sequence[str], k: int
                   ) -> tuple[list[str], list[str]]:
    """Top-k of each weight vector `[N]`, made disjoint (see the module docstring)."""
    easy_rank, hard_rank = _ranking(w_easy, ids), _ranking(w_hard, ids)
    weight_easy = dict(zip(ids, w_easy.tolist(), strict=True))
    weight_hard = dict(zip(ids, w_hard.tolist(), strict=True))
    contested = set(easy_rank[:k]) & set(hard_rank[:k])
    easy = [i for i in easy_rank[:k]
            if i not in contested or weight_easy[i] >= weight_hard[i]]
    hard = [i for i in hard_rank[:k] if i not in contested or weight_hard[i] > weight_easy[i]]
    for rank, chosen, other in ((easy_rank, easy, hard), (hard_rank, hard, easy)):
        for sample_id in rank:
            if len(chosen) >= k:
                break
            if sample_id not in chosen and sample_id not in other:
                chosen.append(sample_id)
    return (sorted(easy, key=easy_rank.index), sorted(hard, key=hard_rank.index))


def model_loss_functions(model: torch.nn.Module, forget_encoded, retain_encoded,
                         pad_token_id: int, *, batch_size: int = 8
                         ) -> tuple[Params, Callable[[Params], torch.Tensor],
                                    Callable[[Params], torch.Tensor] | None]:
    """(trainable parameters by name, forget_losses(params) -> `[N]` mean answer NLLs,
    retain_loss(params) -> mean retain NLL or None) of an HF causal LM via `functional_call`."""
    device = model_device(model)
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}

    def batches(encoded):
        return [move_batch(batch, device)
                for _, batch in iter_batches(encoded, batch_size, pad_token_id)]

    def losses(params: Params, chunks) -> torch.Tensor:
        out = []
        # The fused SDPA kernels have no double backward; the math kernel is composed of
        # differentiable ops, which the unrolled inner steps need.
        with sdpa_kernel(SDPBackend.MATH):
            for batch in chunks:
                logits = functional_call(model, params, args=(), kwargs={
                    "input_ids": batch["input_ids"],
                    "attention_mask": batch["attention_mask"]}).logits
                out.append(mean_answer_nll(logits, batch["labels"]))
        return torch.cat(out)

    forget_batches = batches(forget_encoded)
    if not retain_encoded:
        return params, lambda p: losses(p, forget_batches), None
    retain_batches = batches(retain_encoded)
    return (params, lambda p: losses(p, forget_batches),
            lambda p: losses(p, retain_batches).mean())


def _resolve_solver(solver: str, steps: int) -> str:
    if solver not in SOLVERS:
        raise UnknownNameError("bilevel solver", solver, list(SOLVERS))
    if solver == "auto":
        return "gram" if steps == 1 else "unrolled"
    if solver == "gram" and steps != 1:
        raise DataError(f"the Gram closed form is the one-step objective; got steps={steps} "
                        "(use the unrolled solver)", field="steps")
    return solver


def bilevel_anchors(model: torch.nn.Module, tokenizer, forget: Sequence[Sample],
                    retain: Sequence[Sample] | None, k: int, *,
                    settings: BilevelSettings | None = None, solver: str = "auto",
                    sketch_dim: int | None = None, sketch_kind: str = "rademacher",
                    seed: int = 0, batch_size: int = 8,
                    max_length: int | None = None) -> BilevelResult:
    """Easy and hard anchor sets of `k` forget samples each by the bilevel objective.

    `solver`: `gram` (T = 1 closed form; `sketch_dim` projects the gradients, None keeps them
    whole), `unrolled`, or `auto` (gram when `settings.steps == 1`).
    """
    settings = settings or BilevelSettings()
    solver = _resolve_solver(solver, settings.steps)
    ids = [s.id for s in forget]
    check_k(k, len(ids))
    pad = pad_id(tokenizer)
    forget_set = encode_for(model, tokenizer, forget, max_length)
    retain_set = encode_for(model, tokenizer, retain or [], max_length)
    forget_encoded, retain_encoded = forget_set.samples, retain_set.samples
    if solver == "gram":
        sketch = GradientSketch(sketch_dim, seed=seed, kind=sketch_kind) if sketch_dim else None
        features = gradient_features(model, forget_encoded, pad, sketch=sketch,
                                     batch_size=batch_size).double()
        gram = features @ features.T
        retain_products, retain_sq = None, 0.0
        if retain_encoded:
            retain_vector = retain_feature(model, retain_encoded, pad, sketch=sketch,
                                           batch_size=batch_size).double()
            retain_products, retain_sq = features @ retain_vector, float(retain_vector @
                                                                          retain_vector)

        def changes(w):
            return gram_forgetting(w, gram, retain_products, retain_sq,
                                   inner_lr=settings.inner_lr,
                                   retain_weight=settings.retain_weight)
        dtype = torch.float64
    else:
        params, forget_losses, retain_loss = model_loss_functions(
            model, forget_encoded, retain_encoded, pad, batch_size=batch_size)
        dtype = next(iter(params.values())).dtype

        def changes(w):
            return unrolled_forgetting(params, forget_losses, retain_loss, w,
                                       steps=settings.steps, inner_lr=settings.inner_lr,
                                       retain_weight=settings.retain_weight)

    weights, objective = {}, {}
    for name, sign in (("easy", 1.0), ("hard", -1.0)):
        def goal(w, sign=sign):
            return outer_objective(w, *changes(w), sign, settings)
        w = optimize_weights(goal, len(ids), k, outer_steps=settings.outer_steps,
                             outer_lr=settings.outer_lr, dtype=dtype, desc=f"bilevel {name}")
        weights[name] = w
        with torch.enable_grad():
            objective[name] = float(goal(w).detach())
    easy, hard = round_disjoint(weights["easy"], weights["hard"], ids, k)
    return BilevelResult(easy, hard,
                         {name: dict(zip(ids, w.tolist(), strict=True))
                          for name, w in weights.items()}, objective,
                         forget_set.n_truncated + retain_set.n_truncated)

"""MRD, the memory removal difficulty of DESIGN 5.8, and two closed forms of it.

MRD(z) = (1/K) sum_k |P(z; theta + delta_k) - P(z; theta)| / P(z; theta), delta_k ~ N(0, sigma^2 I)
on every weight, P the probability of the answer (+ EOS) tokens given the prompt. The ratio is
computed as |expm1(log P' - log P)|, so long answers never underflow. A sample whose probability
moves a lot under small weight noise is easy to unlearn: `higher_is_harder = False`.

- `mrd`: the Monte-Carlo estimate with common random numbers. Draw k is a pure function of
  (seed, k), so every sample, chunk and process sees the same K perturbations and one perturbed
  model scores a whole batch: K forward passes per batch, not per sample.
- `mrd_grad`: the small-sigma limit sigma * sqrt(2/pi) * ||grad_theta log P(z)||.
- `mrd_hutchinson`: a second-order form that also uses the Hessian of log P (see
  `MRDHutchinson`), with tr(H) and ||H||_F^2 estimated by Hutchinson probes.

All three run in float32 or wider: in bfloat16 a 1e-5 perturbation rounds away, so a narrower
model is scored through a float32 copy.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from unlearnscope import distributed
from unlearnscope.data.sample import Sample
from unlearnscope.data.tokenize import (
    EncodedSample,
    collate,
    iter_batches_by_length,
    pad_id,
)
from unlearnscope.models.gradients import per_sample_gradient_norms
from unlearnscope.models.inputs import model_device, move_batch
from unlearnscope.models.logprobs import shift_labels
from unlearnscope.progress import progress_bar
from unlearnscope.scoring.base import Scorer, is_number, option_error, register_scorer

log = logging.getLogger(__name__)

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
PAPER_K = 200
PAPER_SIGMA = 1e-5


def draw_seed(seed: int, draw: int) -> int:
    """The generator seed of perturbation `draw`: a pure function of (seed, draw)."""
    return int(np.random.SeedSequence([seed, draw]).generate_state(1, dtype=np.uint64)[0])


class SharedNoise:
    """Gaussian perturbations delta_k ~ N(0, sigma^2 I) of `weights`, regenerated on demand.

    Draw k is generated parameter by parameter, in the order of `weights`, from generators
    seeded with `draw_seed(seed, k)`; nothing of size K x n_weights is ever stored. The noise of
    one parameter lives in a scratch buffer that the next parameter reuses.
    """

    def __init__(self, weights: Sequence[torch.Tensor], *, sigma: float, seed: int) -> None:
        self.weights = list(weights)
        self.sigma = sigma
        self.seed = seed
        self._scratch: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        for w in self.weights:
            key = (w.dtype, w.device)
            size = max(w.numel(), self._scratch[key].numel() if key in self._scratch else 0)
            self._scratch[key] = torch.empty(size, dtype=w.dtype, device=w.device)

    def noise(self, draw: int) -> Iterator[torch.Tensor]:
        """Yield delta_draw for each weight, shaped like it (a view valid until the next one)."""
        generators: dict[torch.device, torch.Generator] = {}
        for w in self.weights:
            if w.device not in generators:
                generators[w.device] = torch.Generator(device=w.device).manual_seed(
                    draw_seed(self.seed, draw))
            view = self._scratch[(w.dtype, w.device)][: w.numel()].view_as(w)
            yield view.normal_(0.0, self.sigma, generator=generators[w.device])

    @torch.no_grad()
    def perturb(self, draw: int, originals: Sequence[torch.Tensor]) -> None:
        """Set every weight to original + delta_draw (no drift: always from the originals)."""
        for w, original, delta in zip(self.weights, originals, self.noise(draw), strict=True):
            torch.add(original, delta, out=w.data)


def _is_narrower_than_float32(model) -> bool:
    return any(p.is_floating_point() and torch.finfo(p.dtype).eps > torch.finfo(torch.float32).eps
               for p in model.parameters())


def full_precision(model):
    """`model` itself when all its weights are float32 or wider, else a float32 copy."""
    if not _is_narrower_than_float32(model):
        return model
    log.warning("MRD needs float32 or wider weights (a 1e-5 perturbation vanishes in 16-bit "
                "floats): scoring a float32 copy of the model")
    return copy.deepcopy(model).float()


def summed_answer_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log P(answer + EOS | prompt) per sample: logits `[batch, pos, vocab]` -> `[batch]`.

    Unlike `models.logprobs.sequence_logprob` (always float32) this keeps float64 logits in
    float64, so the 1e-5-scale differences MRD measures are not rounded in a float64 model; the
    log-softmax runs over contiguous `[batch * pos, vocab]` rows (over a transposed
    `[batch, vocab, pos]` view it took a third of a tiny model's forward time).
    """
    target, mask = shift_labels(labels)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    rows = logits[:, :-1].to(dtype).reshape(-1, logits.shape[-1])
    nll = F.cross_entropy(rows, target.reshape(-1), reduction="none").view_as(target)
    return -(nll * mask).sum(dim=1)


def device_batches(encoded: Sequence[EncodedSample], batch_size: int, pad_token_id: int,
                   device: torch.device) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
    """`encoded` collated once into `(indices, batch)` pairs with tensors on `device`.

    Batches are formed in order of sequence length, so that little compute goes to padding
    (the K perturbed passes repeat whatever padding a batch carries).
    """
    return [(indices, move_batch(batch, device))
            for indices, batch in iter_batches_by_length(encoded, batch_size, pad_token_id)]


@torch.no_grad()
def answer_logprobs(model, batches, n: int) -> torch.Tensor:
    """log P of every sample `[n]` float64, one forward pass per batch."""
    out = torch.empty(n, dtype=torch.float64)
    for indices, batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out[indices] = summed_answer_logprob(logits, batch["labels"]).double().cpu()
    return out


def _show_bar() -> bool:
    return distributed.is_main()


def monte_carlo_mrd(model, encoded: Sequence[EncodedSample], pad_token_id: int, *, k: int,
                    sigma: float, seed: int, batch_size: int) -> torch.Tensor:
    """MC MRD of each encoded sample: `[n_samples]` float64.

    For each draw: set the weights to theta + delta_k, score every batch, and accumulate
    |expm1(log P' - log P)|. The weights are restored bit-exactly from a copy of the originals
    at the end, also when interrupted.
    """
    model = full_precision(model)
    weights = list(model.parameters())
    device = model_device(model)
    batches = device_batches(encoded, batch_size, pad_token_id, device)
    base = answer_logprobs(model, batches, len(encoded))
    noise = SharedNoise(weights, sigma=sigma, seed=seed)
    originals = [w.detach().clone() for w in weights]
    total = torch.zeros(len(encoded), dtype=torch.float64)
    try:
        for draw in progress_bar(range(k), desc="mrd draws", unit="draw", leave=False,
                                 disable=not _show_bar()):
            noise.perturb(draw, originals)
            total += torch.expm1(answer_logprobs(model, batches, len(encoded)) - base).abs()
    finally:
        with torch.no_grad():
            for w, original in zip(weights, originals, strict=True):
                w.copy_(original)
    return total / k


@contextmanager
def _gradients_enabled(weights: Sequence[torch.Tensor]):
    """Let autograd differentiate w.r.t. every weight; restore the requires_grad flags after."""
    flags = [w.requires_grad for w in weights]
    try:
        with torch.enable_grad():
            for w in weights:
                w.requires_grad_(True)
            yield
    finally:
        for w, flag in zip(weights, flags, strict=True):
            w.requires_grad_(flag)


def _single_sample_batches(encoded: Sequence[EncodedSample], pad_token_id: int,
                           device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    for sample in progress_bar(encoded, desc="mrd gradients", unit="sample", leave=False,
                               disable=not _show_bar()):
        yield move_batch(collate([sample], pad_token_id), device)


def _logprob_of(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return summed_answer_logprob(logits, batch["labels"]).sum()


def _squared_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.get_total_norm([t.detach() for t in tensors], norm_type=2.0).double() ** 2


def logprob_gradient_norms(model, encoded: Sequence[EncodedSample], pad_token_id: int, *,
                           batch_size: int) -> torch.Tensor:
    """||grad_theta log P(z)|| over all weights, of each sample `[n_samples]` float64."""
    model = full_precision(model)
    return per_sample_gradient_norms(model, encoded, pad_token_id,
                                     objective=summed_answer_logprob, all_weights=True,
                                     batch_size=batch_size,
                                     desc="mrd gradients" if _show_bar() else None)


def rademacher_probe(weights: Sequence[torch.Tensor], probe: int, seed: int) -> list[torch.Tensor]:
    """Probe vector `probe` (+-1 entries, shaped like `weights`), a pure function of (seed,
    probe), so every sample is probed with the same vectors."""
    generator = torch.Generator(device=weights[0].device).manual_seed(draw_seed(seed, probe))
    return [torch.randint(0, 2, w.shape, generator=generator, device=w.device).to(w.dtype) * 2 - 1
            for w in weights]


def hessian_statistics(model, encoded: Sequence[EncodedSample], pad_token_id: int, *,
                       probes: int, seed: int) -> dict[str, torch.Tensor]:
    """Per sample, with H the Hessian of log P(z) w.r.t. all weights: `grad_sq` ||g||^2,
    `trace` tr(H) and `frobenius_sq` ||H||_F^2, the last two Hutchinson estimates
    mean_v v^T H v and mean_v ||H v||^2 over `probes` Rademacher vectors v. Each `[n]` float64.

    Hessian-vector products are double backward passes; attention runs on the math SDPA kernel,
    whose backward is itself differentiable (the fused CPU/GPU kernels' is not).
    """
    model = full_precision(model)
    weights = list(model.parameters())
    n = len(encoded)
    stats = {key: torch.empty(n, dtype=torch.float64) for key in ("grad_sq", "trace",
                                                                  "frobenius_sq")}
    vectors = [rademacher_probe(weights, probe, seed) for probe in range(probes)]
    with _gradients_enabled(weights), sdpa_kernel(SDPBackend.MATH):
        for row, batch in enumerate(_single_sample_batches(encoded, pad_token_id,
                                                           weights[0].device)):
            grads = torch.autograd.grad(_logprob_of(model, batch), weights, create_graph=True)
            trace = frobenius = 0.0
            for index, v in enumerate(vectors):
                directional = sum((g * vi).sum() for g, vi in zip(grads, v, strict=True))
                hv = torch.autograd.grad(directional, weights, retain_graph=index < probes - 1)
                trace += float(sum((vi * h).sum(dtype=torch.float64)
                                   for vi, h in zip(v, hv, strict=True)))
                frobenius += float(_squared_norm(hv))
            stats["grad_sq"][row] = _squared_norm(grads)
            stats["trace"][row] = trace / probes
            stats["frobenius_sq"][row] = frobenius / probes
    return stats


def lognormal_abs_deviation(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """E|exp(d) - 1| for d ~ N(mean, std^2), elementwise (float64):

        exp(m + s^2/2) * erf((m + s^2) / (s sqrt 2)) - erf(m / (s sqrt 2)),

    written as expm1(.) * erf(a) + (erf(a) - erf(b)), the difference through erfc when both
    arguments are positive, so that small values keep their digits; |expm1(m)| when s = 0.
    """
    mean, std = mean.double(), std.double()
    safe = torch.where(std > 0, std, torch.ones_like(std))
    a = (mean + std ** 2) / (safe * math.sqrt(2.0))
    b = mean / (safe * math.sqrt(2.0))
    gap = torch.where(b > 0, torch.special.erfc(b) - torch.special.erfc(a),
                      torch.special.erf(a) - torch.special.erf(b))
    value = torch.expm1(mean + std ** 2 / 2) * torch.special.erf(a) + gap
    return torch.where(std > 0, value, torch.expm1(mean).abs())


def _check_positive(scorer: str, name: str, value: float) -> None:
    if not (is_number(value) and value > 0):
        raise option_error(scorer, name, f"must be positive, got {value!r}")


@register_scorer
class MonteCarloMRD(Scorer):
    """MRD by Monte Carlo over `k` shared weight perturbations of scale `sigma` (DESIGN 5.8)."""

    name = "mrd"
    higher_is_harder = False
    value_is_ease = True

    def __init__(self, k: int = PAPER_K, sigma: float = PAPER_SIGMA, seed: int = 0) -> None:
        _check_positive(self.name, "k", k)
        _check_positive(self.name, "sigma", sigma)
        super().__init__(k=k, sigma=sigma, seed=seed)
        self.k, self.sigma, self.seed = k, sigma, seed

    def score(self, model, tokenizer, samples: Sequence[Sample], encoded, *, batch_size):
        return monte_carlo_mrd(model, encoded, pad_id(tokenizer), k=self.k, sigma=self.sigma,
                               seed=self.seed, batch_size=batch_size)


@register_scorer
class GradientMRD(Scorer):
    """MRD to first order in sigma: with d = log P' - log P ~ delta . g ~ N(0, sigma^2 ||g||^2),
    E|expm1(d)| -> E|d| = sigma * sqrt(2/pi) * ||g||, g = grad_theta log P(z)."""

    name = "mrd_grad"
    higher_is_harder = False
    value_is_ease = True

    def __init__(self, sigma: float = PAPER_SIGMA) -> None:
        _check_positive(self.name, "sigma", sigma)
        super().__init__(sigma=sigma)
        self.sigma = sigma

    def score(self, model, tokenizer, samples: Sequence[Sample], encoded, *, batch_size):
        norms = logprob_gradient_norms(model, encoded, pad_id(tokenizer), batch_size=batch_size)
        return self.sigma * SQRT_2_OVER_PI * norms


@register_scorer
class HutchinsonMRD(Scorer):
    """MRD to second order in delta, with the Hessian H of log P(z).

    d = log P(theta + delta) - log P(theta) ~ delta . g + 1/2 delta^T H delta, delta ~
    N(0, sigma^2 I). Its exact mean and variance are

        mu = sigma^2 tr(H) / 2,   tau^2 = sigma^2 ||g||^2 + sigma^4 ||H||_F^2 / 2

    (delta . g and delta^T H delta are uncorrelated; Var(z^T H z) = 2 ||H||_F^2 for z standard
    normal). Taking d ~ N(mu, tau^2), MRD = E|exp(d) - 1| =
    exp(mu + tau^2/2) erf((mu + tau^2) / (tau sqrt 2)) - erf(mu / (tau sqrt 2)).
    It tends to `mrd_grad` when sigma ||H|| << ||g||, and to |expm1(mu)| ~ sigma^2 |tr H| / 2
    for a sample at a stationary point of log P (g ~ 0), where the first-order form gives 0.
    tr(H) and ||H||_F^2 come from `probes` shared Rademacher probes (Hutchinson).
    """

    name = "mrd_hutchinson"
    higher_is_harder = False
    value_is_ease = True

    def __init__(self, sigma: float = PAPER_SIGMA, probes: int = 4, seed: int = 0) -> None:
        _check_positive(self.name, "sigma", sigma)
        _check_positive(self.name, "probes", probes)
        super().__init__(sigma=sigma, probes=probes, seed=seed)
        self.sigma, self.probes, self.seed = sigma, probes, seed

    def score(self, model, tokenizer, samples: Sequence[Sample], encoded, *, batch_size):
        stats = hessian_statistics(model, encoded, pad_id(tokenizer), probes=self.probes,
                                   seed=self.seed)
        mean = self.sigma ** 2 * stats["trace"] / 2
        variance = self.sigma ** 2 * stats["grad_sq"] + self.sigma ** 4 * stats[
            "frobenius_sq"] / 2
        return lognormal_abs_deviation(mean, variance.clamp(min=0).sqrt())

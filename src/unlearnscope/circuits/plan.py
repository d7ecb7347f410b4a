"""What every attribution backend shares: the options, the checked batch, the clean and
baseline token embeddings, the interpolation points, and the result with its checks.

A backend (`attribution.BACKENDS`) takes a `Plan` and returns the edge scores and the clean and
baseline logits; `Plan.result` turns them into an `AttributionResult`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from unlearnscope.circuits.baselines import Baseline, baseline_embeddings
from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.metrics import get_metric
from unlearnscope.data.tokenize import IGNORE_INDEX
from unlearnscope.errors import DataError, UnknownNameError
from unlearnscope.models.architecture import ModelParts, model_parts
from unlearnscope.runs import check_finite

METHODS = ("EAP", "EAP-IG-inputs", "EAP-IG-activations")
RULES = ("left", "midpoint")
_ZERO_STEP_HINT = (" (the alpha = 0 step runs the model on the baseline itself; with a zero baseline"
                   " and no positional embedding every norm sees an all-zero residual stream, whose"
                   " gradient, ~1/sqrt(eps) per layer, overflows in deep models: use"
                   " rule='midpoint' or another baseline)")


@dataclass(frozen=True)
class AttributionResult:
    """Per-sample edge scores in the reference layout.

    scores `[batch, n_forward, n_backward]` float32 (0 on non-edges), or `[batch, n_forward]`
    for `level="nodes"`; metric_clean and metric_baseline `[batch]`: the metric at the clean
    input and at the baseline input.
    """

    scores: torch.Tensor
    layout: GraphLayout
    metric_clean: torch.Tensor
    metric_baseline: torch.Tensor

    @property
    def forward_names(self) -> list[str]:
        return self.layout.forward_names

    @property
    def backward_names(self) -> list[str]:
        return self.layout.backward_names

    @property
    def real_edge_mask(self) -> torch.Tensor:
        """`[n_forward, n_backward]` bool."""
        return self.layout.real_edge_mask


def graph_layout(model: nn.Module) -> GraphLayout:
    """The EAP graph layout of a HF causal LM (grouped-query models ungrouped)."""
    parts = model_parts(model)
    return GraphLayout(parts.n_layers, parts.n_heads, parts.parallel_attn_mlp)


def interpolation_alphas(method: str, steps: int, rule: str) -> list[float]:
    """The interpolation coefficients of one node's passes (see the module docstring)."""
    if method == "EAP":
        return [1.0]
    if rule == "midpoint":
        return [(k + 0.5) / steps for k in range(steps)]
    if method == "EAP-IG-inputs":
        return [k / steps for k in range(steps)]
    return [k / steps for k in range(1, steps + 1)]


def checked_batch(batch: dict[str, torch.Tensor], device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    for key in ("input_ids", "attention_mask", "labels"):
        if key not in batch:
            raise DataError(f"batch has no '{key}'", field=key)
    input_ids = batch["input_ids"].to(device)
    attention_mask = batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape or labels.shape != input_ids.shape:
        raise DataError("input_ids, attention_mask and labels must share one [batch, pos] shape, "
                        f"got {tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, "
                        f"{tuple(labels.shape)}", field="input_ids")
    real = attention_mask.bool()
    if bool((real[:, 1:] & ~real[:, :-1]).any()):
        raise DataError("attribution needs right padding (1s then 0s in each row)",
                        field="attention_mask")
    answer_tokens = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
    if bool((answer_tokens == 0).any()):
        row = int((answer_tokens == 0).nonzero()[0])
        raise DataError(f"sample {row} of the batch has no answer token to score", field="labels")
    return input_ids, attention_mask, labels


def check_options(method: str, rule: str, ig_steps: int) -> None:
    """Reject an unknown method or rule, or fewer than one IG step."""
    if method not in METHODS:
        raise UnknownNameError("attribution method", method, list(METHODS))
    if rule not in RULES:
        raise UnknownNameError("integration rule", rule, list(RULES))
    if method != "EAP" and ig_steps < 1:
        raise DataError(f"ig_steps must be at least 1, got {ig_steps}", field="ig_steps")


@dataclass
class Plan:
    """One batch's attribution before any gradient: inputs on the model's device `[batch,
    pos]`, clean and baseline token embeddings `[batch, pos, d_model]`, the interpolation
    points of each node's passes, and the metric `(logits, labels, clean_logits) -> [batch]`."""

    method: str
    metric_name: str
    metric: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    parts: ModelParts
    layout: GraphLayout
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    clean_embeds: torch.Tensor
    base_embeds: torch.Tensor
    alphas: list[float]
    baseline_name: str

    def result(self, scores: torch.Tensor, clean_logits: torch.Tensor,
               base_logits: torch.Tensor) -> AttributionResult:
        """The result, after checking that the baseline metric and the scores are finite."""
        metric_clean = self.metric(clean_logits, self.labels, clean_logits)
        metric_base = self.metric(base_logits, self.labels, clean_logits)
        check_finite(metric_base, f"{self.metric_name} at the '{self.baseline_name}' baseline")
        hint = _ZERO_STEP_HINT if self.alphas[0] == 0 else ""
        check_finite(scores, f"{self.method} edge scores{hint}")
        return AttributionResult(scores, self.layout, metric_clean.detach(),
                                 metric_base.detach())


def plan_attribution(model: nn.Module, batch: dict[str, torch.Tensor], *, method: str,
                     ig_steps: int, baseline: Baseline, rule: str, metric: str) -> Plan:
    """Check the options and the batch and embed the clean and baseline inputs (`baseline`: a
    named baseline or a tensor, see `baselines.baseline_embeddings`)."""
    check_options(method, rule, ig_steps)
    parts = model_parts(model)
    input_ids, attention_mask, labels = checked_batch(batch, parts.embedding.weight.device)
    with torch.no_grad():
        clean_embeds = parts.embedding(input_ids)
    base_embeds = baseline_embeddings(baseline, parts.embedding, clean_embeds, input_ids,
                                      model.config)
    return Plan(method, metric, get_metric(metric), parts,
                GraphLayout(parts.n_layers, parts.n_heads, parts.parallel_attn_mlp), input_ids,
                attention_mask, labels, clean_embeds, base_embeds,
                interpolation_alphas(method, ig_steps, rule),
                baseline if isinstance(baseline, str) else "given")

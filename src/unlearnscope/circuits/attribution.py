"""Per-sample edge attribution: EAP, EAP-IG-inputs and EAP-IG-activations.

Definitions (DESIGN 5.5, the reference EAP-IG library of Hanna et al. 2024):

    S[b, u, v] = sum_pos (a_u(baseline) - a_u(clean)) . mean_k dm_b/d(input of v)(alpha_k)

for writer u (`input`, head outputs after the output projection, MLP outputs) and reader v (each
head's q/k/v input and the MLP input, both before their norm, and `logits` = the residual stream
before the final norm), with m_b the metric of sample b. The metric is summed over the batch
before the backward pass, so each sample's gradient is its own and a batch costs the same passes
as one sample.

- `EAP`: one gradient at the clean input.
- `EAP-IG-inputs`: the token embedding interpolated from baseline to clean,
  `e = baseline + alpha (clean - baseline)`; `rule="left"`: alpha = k/m, k = 0..m-1 (the
  reference's), `"midpoint"`: alpha = (k + 1/2)/m.
- `EAP-IG-activations` (the CUD authors' procedure, the reference's `ig_activations`): for each of
  the 2L+1 nodes input, attention layer l, MLP l in turn, that node's output is set to
  `alpha clean + (1 - alpha) baseline` (everything else runs on the clean input) with the
  reference's alpha = k/m, k = 1..m (`"midpoint"`: (k + 1/2)/m); the gradients of all (2L+1) m
  passes are averaged.

Baselines: a baseline token embedding (`baselines`) defines the baseline run, whose writer
activations are a_u(baseline). `baseline="zero-activations"` (EAP-IG-activations only) is what
the CUD authors' code uses instead: every writer's baseline activation is zero (a head's output
before the output projection is zero, so an attention output keeps only the projection's bias),
so each node is interpolated between zero and its clean output, and a_u(baseline) - a_u(clean)
= -a_u(clean). (Their code never runs the corrupted input: the activations it subtracts the
clean ones from keep their zero initialization.)

Zero baseline, left rule: the alpha = 0 step runs the model on an all-zero token embedding. In
models without positional embeddings (Llama family, GPT-NeoX, Phi) every norm then sees a zero
residual stream, where its gradient is ~1/sqrt(eps) times its weight; the reference computes
exactly this. In shallow models the scores stay finite but are dominated by that step; in deep
ones (SmolLM2-135M, 30 layers) the gradient overflows, and `attribute` raises `NonFiniteError`
saying so (the reference stops on NaN too). `rule="midpoint"` never evaluates alpha = 0.

Cheaper variants (the CUD proxies, `scoring.cud_proxies`): `positions="answer"` sums over the
answer's positions only (labels != -100; the writer difference is zero elsewhere), and
`level="nodes"` scores each writer instead of each edge (see `nodes`: the sum of its edge
scores, from the gradients at the writers' outputs, without the per-reader gradients).

The activation difference does not depend on the step, so reader gradients are summed over the
steps and contracted with it once, as one batched matrix product per layer over the writers that
precede that layer's readers. That sum holds `n_backward` gradients of `[pos, d_model]` per sample
(SmolLM2-135M: about 190 MB at 100 tokens), so the hooks backend attributes a batch in chunks of
samples whose sums fit `MEMORY_BUDGET` (`chunk_size`), each chunk trimmed to its own longest
sample. Scores do not depend on the batch composition (padded positions get zero gradient), so
chunking changes no result; it keeps memory from growing with the batch, and on a CPU it keeps
the per-layer gradients in cache where a whole batch's would not (`bench/circuits.py` measures
it). A GPU's budget is a quarter of its free memory, so there a batch stays whole.

Two backends compute the same numbers from one `plan.Plan` (the checked batch, the clean and
baseline embeddings, the interpolation points); each supplies only its gradient-and-contract step
(`BACKENDS`, built once per model by `make_backend`). `backend="bridge"` runs on TransformerLens
4.x's `TransformerBridge` over the HF model's own parameters (see `bridge`), reading the hook
points the reference library reads. The default `backend="hooks"` computes those same quantities
(`hook_embed`, `attn.hook_result`, `hook_mlp_out`; `hook_q/k/v_input` and `hook_mlp_in` gradients;
`hook_resid_post` of the last block) from hooks on the HF modules (see `recorder` and `readers`),
with grouped-query models ungrouped (`ungroup`): the bridge forces eager attention and runs the
attention norm and projections once per head copy, so the hooks backend is faster and keeps the
model's fused attention kernel. The tests check the two backends against each other and against an
independent per-reader implementation of the definitions. The output-projection bias belongs to no
head, as in the reference; it cancels in the activation difference anyway.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn

from unlearnscope.circuits.baselines import NAMED_BASELINES, Baseline
from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.nodes import WriterGradientSum
from unlearnscope.circuits.plan import (
    AttributionResult,
    Plan,
    check_options,
    checked_batch,
    graph_layout,
    plan_attribution,
)
from unlearnscope.circuits.readers import add_layer_reader_gradients
from unlearnscope.circuits.recorder import GraphRecorder, Writers
from unlearnscope.data.tokenize import IGNORE_INDEX
from unlearnscope.errors import DataError, UnknownNameError
from unlearnscope.models.architecture import ModelParts, model_parts
from unlearnscope.models.inputs import model_device
from unlearnscope.progress import progress_bar
from unlearnscope.runs import check_finite

ZERO_ACTIVATIONS = "zero-activations"
BASELINES = (*NAMED_BASELINES, ZERO_ACTIVATIONS)
LEVELS = ("edges", "nodes")
POSITIONS = ("all", "answer")
# Bytes of per-sample gradient sums the hooks backend holds at once on a CPU (see the
# module docstring): SmolLM2-135M then attributes one sample at a time, tiny models a
# whole batch.
MEMORY_BUDGET = 128 * 2**20


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def writer_differences(parts: ModelParts, baseline: Writers, clean: Writers) -> torch.Tensor:
    """Baseline minus clean writer activations `[batch, n_forward, pos, d_model]` float32."""
    rows = [(baseline.embed.float() - clean.embed.float())[:, None]]
    batch, pos, _ = clean.embed.shape
    for layer, block in enumerate(parts.blocks):
        dz = (baseline.z[layer].float() - clean.z[layer].float())
        dz = dz.reshape(batch, pos, parts.n_heads, parts.head_dim)
        heads = torch.einsum("bphe,hed->bhpd", dz, block.o_weight().detach().float())
        mlp = baseline.mlp_out[layer].float() - clean.mlp_out[layer].float()
        rows += [heads, mlp[:, None]]
    return torch.cat(rows, dim=1)


class _GradientSum:
    """Reader gradients summed over passes, per layer `[3H+1, batch, pos, d_model]`."""

    def __init__(self, parts: ModelParts) -> None:
        self.parts = parts
        self.layers: list[torch.Tensor] = []
        self.logits: torch.Tensor | None = None
        self.n_passes = 0
        self.qkv_weights = [block.qkv_weight().detach().float().flatten(0, 1)
                            for block in parts.blocks]

    def add(self, recorder: GraphRecorder, like: torch.Tensor) -> None:
        """Add one backward pass's reader gradients; like: the `[batch, pos, d_model]` input."""
        grads = recorder.grads
        if self.logits is None:
            per_layer = 3 * self.parts.n_heads + 1
            self.layers = [like.new_zeros(per_layer, *like.shape, dtype=torch.float32)
                           for _ in range(self.parts.n_layers)]
            self.logits = like.new_zeros(1, *like.shape, dtype=torch.float32)
        for layer, out in enumerate(self.layers):
            add_layer_reader_gradients(self.parts, layer, grads, self.qkv_weights[layer], out)
        self.logits += grads.logits.float()
        self.n_passes += 1

    def contract(self, delta: torch.Tensor, layout: GraphLayout) -> torch.Tensor:
        """delta `[batch, n_forward, pos, d_model]` -> scores `[batch, n_forward, n_backward]`."""
        batch, n_forward = delta.shape[:2]
        flat = delta.reshape(batch, n_forward, -1)
        scores = flat.new_zeros(batch, n_forward, layout.n_backward)
        per_layer = 3 * layout.n_heads + 1
        for layer, grads in enumerate(self.layers):
            # Readers of `layer` read only writers before its MLP (heads of `layer` feed the MLP).
            n_prev = layout.mlp_forward_index(layer)
            cols = slice(layer * per_layer, (layer + 1) * per_layer)
            readers = grads.view(per_layer, batch, -1).permute(1, 2, 0)  # [batch, pos*d, readers]
            scores[:, :n_prev, cols] = torch.bmm(flat[:, :n_prev], readers)
        readers = self.logits.view(1, batch, -1).permute(1, 2, 0)
        scores[:, :, -1:] = torch.bmm(flat, readers)
        scores /= self.n_passes
        return scores * layout.real_edge_mask.to(scores.device)


def _forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
             ) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def check_variant(level: str, positions: str, method: str, backend: str) -> None:
    """Reject an unknown level or positions, and node level where it is not implemented."""
    if level not in LEVELS:
        raise UnknownNameError("attribution level", level, list(LEVELS))
    if positions not in POSITIONS:
        raise UnknownNameError("attribution positions", positions, list(POSITIONS))
    if (level, positions) != ("edges", "all") and backend != "hooks":
        raise DataError(f"level '{level}' and positions '{positions}' need backend 'hooks', got "
                        f"'{backend}'", field="backend")
    if level == "nodes" and method == "EAP-IG-activations":
        raise DataError("level 'nodes' needs method 'EAP' or 'EAP-IG-inputs' (an "
                        "EAP-IG-activations pass replaces a writer's output, which then has no "
                        "gradient)", field="level")


def attribute(model: nn.Module, batch: dict[str, torch.Tensor], *, method: str = "EAP-IG-inputs",
              ig_steps: int = 5, baseline: Baseline = "zero", rule: str = "left",
              metric: str = "answer_logprob", backend: str | Backend = "hooks",
              level: str = "edges", positions: str = "all", chunk_size: int | None = None
              ) -> AttributionResult:
    """Per-sample EAP / EAP-IG edge scores of a HF causal LM on a right-padded batch.

    batch: `input_ids`, `attention_mask`, `labels` `[batch, pos]` (labels -100 outside the
    answer). baseline: `"zero"`, `"pad"`, `"mean"`, corrupted input ids `[batch, pos]`,
    baseline embeddings `[batch, pos, d_model]`, or `"zero-activations"` (every writer at zero,
    EAP-IG-activations with the hooks backend only; see the module docstring). backend:
    `"hooks"` (hooks on the HF modules) or `"bridge"` (TransformerLens' TransformerBridge), same
    numbers, or a backend `make_backend` built once for many batches. level: `"edges"` or
    `"nodes"` (one score per writer, the sum of its edge scores); positions: `"all"` or
    `"answer"` (the sum over positions only over the answer's). chunk_size: samples attributed
    together by the hooks backend (None: `default_chunk_size`). Returns scores `[batch,
    n_forward, n_backward]` (`[batch, n_forward]` for nodes).
    """
    backend_name = backend if isinstance(backend, str) else backend.name
    check_variant(level, positions, method, backend_name)
    check_options(method, rule, ig_steps)
    zero_writers = isinstance(baseline, str) and baseline == ZERO_ACTIVATIONS
    if zero_writers and (method != "EAP-IG-activations" or backend_name != "hooks"):
        raise DataError(f"baseline '{ZERO_ACTIVATIONS}' needs method 'EAP-IG-activations' and "
                        f"backend 'hooks', got '{method}' and '{backend_name}'", field="baseline")
    if chunk_size is not None and chunk_size < 1:
        raise DataError(f"chunk_size must be at least 1, got {chunk_size}", field="chunk_size")
    runner = make_backend(model, backend) if isinstance(backend, str) else backend
    options = {"method": method, "ig_steps": ig_steps, "rule": rule, "metric": metric}
    variant = {"level": level, "positions": positions, "zero_writers": zero_writers}

    def one_chunk(rows: dict[str, torch.Tensor], rows_baseline: Baseline) -> AttributionResult:
        plan = plan_attribution(model, rows, baseline="zero" if zero_writers else rows_baseline,
                                **options)
        if zero_writers:
            plan.baseline_name = ZERO_ACTIVATIONS
        return plan.result(*runner(plan, **variant))

    if runner.name != "hooks":
        return one_chunk(batch, baseline)
    n_samples, length = checked_batch(batch, model_parts(model).embedding.weight.device)[0].shape
    size = chunk_size or default_chunk_size(model, length, level)
    if size >= n_samples:
        return one_chunk(batch, baseline)
    if isinstance(baseline, torch.Tensor) and tuple(baseline.shape[:2]) != (n_samples, length):
        raise DataError(f"the baseline tensor has shape {tuple(baseline.shape)}, expected "
                        f"[{n_samples}, {length}, ...] as input_ids", field="baseline")
    results = [one_chunk(*_chunk(batch, baseline, start, start + size))
               for start in range(0, n_samples, size)]
    return AttributionResult(torch.cat([r.scores for r in results]), results[0].layout,
                             torch.cat([r.metric_clean for r in results]),
                             torch.cat([r.metric_baseline for r in results]))


def default_chunk_size(model: nn.Module, length: int, level: str = "edges") -> int:
    """Samples of `length` tokens whose gradient sums and activation differences fit
    `MEMORY_BUDGET` (at least 1); on a GPU, a quarter of its free memory."""
    layout = graph_layout(model)
    rows = layout.n_forward + (layout.n_backward if level == "edges" else layout.n_forward)
    per_sample = 4 * rows * max(length, 1) * int(model.config.hidden_size)  # float32 bytes
    device = model_device(model)
    budget = (torch.cuda.mem_get_info(device)[0] // 4 if device.type == "cuda"
              else MEMORY_BUDGET)
    return max(1, budget // per_sample)


def _chunk(batch: dict[str, torch.Tensor], baseline: Baseline, start: int, stop: int
           ) -> tuple[dict[str, torch.Tensor], Baseline]:
    """Rows `start:stop` of a right-padded batch (and of a tensor baseline), trimmed to their
    longest sample."""
    length = max(1, int(batch["attention_mask"][start:stop].sum(dim=1).max()))
    rows = {key: value[start:stop, :length] for key, value in batch.items()}
    if isinstance(baseline, torch.Tensor):
        baseline = baseline[start:stop, :length]
    return rows, baseline


class Backend(Protocol):
    """Computes a plan's edge scores: `(plan, level=, positions=, zero_writers=) -> (scores,
    clean logits, baseline logits)`; `name` is its `BACKENDS` key."""

    name: str

    def __call__(self, plan: Plan, *, level: str, positions: str, zero_writers: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


class HooksBackend:
    """Hooks on the HF modules (`recorder`, `readers`); see the module docstring."""

    name = "hooks"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, plan: Plan, *, level: str, positions: str, zero_writers: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model, parts, method = self.model, plan.parts, plan.method
        input_ids, attention_mask = plan.input_ids, plan.attention_mask
        recorder = GraphRecorder(parts)
        with _eval_mode(model), recorder.installed():
            # The gradient pass at the clean input (EAP) or at the baseline (alpha = 0, left
            # rule) records that run's writers too, which saves one forward pass.
            shared = {"EAP": "clean",
                      "EAP-IG-inputs": "base" if plan.alphas[0] == 0 else None}.get(method)
            runs: dict[str, tuple[Writers, torch.Tensor]] = {}
            for role, embeds in (("clean", plan.clean_embeds), ("base", plan.base_embeds)):
                if role == "base" and zero_writers:
                    runs[role] = _zero_writer_run(model, parts, recorder, runs["clean"][0],
                                                  input_ids, attention_mask)
                elif role != shared:
                    with torch.no_grad(), recorder.recording(writers=True, embedding=embeds):
                        logits = _forward(model, input_ids, attention_mask)
                    runs[role] = (recorder.writers, logits)
            clean_logits = runs["clean"][1] if "clean" in runs else None

            edges = level == "edges"
            gradient_sum = _GradientSum(parts) if edges else WriterGradientSum(parts)
            n_nodes = 2 * parts.n_layers + 1 if method == "EAP-IG-activations" else 1
            passes = _passes(method, parts, plan.clean_embeds, plan.base_embeds, runs,
                             plan.alphas, shared)
            for embeds, overrides, role in progress_bar(passes, total=n_nodes * len(plan.alphas),
                                                        desc=f"{method} passes", leave=False,
                                                        disable=None):
                leaf = embeds.detach().requires_grad_(True)
                with recorder.recording(grads=edges, writer_grads=not edges,
                                        writers=role is not None, embedding=leaf,
                                        overrides=overrides):
                    logits = _forward(model, input_ids, attention_mask)
                    if role == "clean":
                        clean_logits = logits.detach()
                    values = plan.metric(logits, plan.labels, clean_logits)
                    check_finite(values, f"{plan.metric_name} during {method}")
                    torch.autograd.grad(values.sum(), leaf)
                    gradient_sum.add(recorder, plan.clean_embeds)
                    if role is not None:
                        runs[role] = (recorder.writers, logits.detach())
            (clean, clean_logits), (base, base_logits) = runs["clean"], runs["base"]
            delta = writer_differences(parts, base, clean)
            if positions == "answer":
                delta = delta * (plan.labels != IGNORE_INDEX)[:, None, :, None]
            return gradient_sum.contract(delta, plan.layout), clean_logits, base_logits


# name -> "module:class" of each backend; the bridge's module (and TransformerLens) is imported
# only when it is asked for.
BACKENDS = {"hooks": f"{__name__}:HooksBackend",
            "bridge": "unlearnscope.circuits.bridge:BridgeBackend"}


def make_backend(model: nn.Module, name: str) -> Backend:
    """The backend `name` for `model`, built once (the bridge backend builds its
    TransformerBridge here) and reusable for every batch of that model."""
    if name not in BACKENDS:
        raise UnknownNameError("attribution backend", name, list(BACKENDS))
    module, _, attribute_name = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attribute_name)(model)


@torch.no_grad()
def _zero_writer_run(model: nn.Module, parts: ModelParts, recorder: GraphRecorder, clean: Writers,
                     input_ids: torch.Tensor, attention_mask: torch.Tensor
                     ) -> tuple[Writers, torch.Tensor]:
    """The `zero-activations` baseline: writers at zero (`clean`'s shapes; a head's z = 0, so
    the attention output is the output projection of zeros, i.e. its bias) and the logits of
    the run with every writer at that value."""
    zero = Writers(embed=torch.zeros_like(clean.embed),
                   z={layer: torch.zeros_like(z) for layer, z in clean.z.items()},
                   mlp_out={layer: torch.zeros_like(m) for layer, m in clean.mlp_out.items()})
    overrides: dict[nn.Module, torch.Tensor] = {}
    for layer, block in enumerate(parts.blocks):
        zero.attn_out[layer] = block.o_proj(zero.z[layer])
        overrides[block.o_proj] = zero.attn_out[layer]
        overrides[block.mlp] = zero.mlp_out[layer]
    with recorder.recording(embedding=zero.embed, overrides=overrides):
        logits = _forward(model, input_ids, attention_mask)
    return zero, logits


def _passes(method: str, parts: ModelParts, clean_embeds: torch.Tensor,
            base_embeds: torch.Tensor, runs: dict[str, tuple[Writers, torch.Tensor]],
            alphas: list[float], shared: str | None
            ) -> Iterator[tuple[torch.Tensor, dict[nn.Module, torch.Tensor], str | None]]:
    """(token embedding, output overrides, run it also records or None) of each gradient pass."""
    for index, alpha in enumerate(alphas):
        role = shared if index == 0 or method == "EAP" else None
        embeds = clean_embeds if alpha == 1 else base_embeds + alpha * (clean_embeds - base_embeds)
        yield embeds, {}, role
    if method != "EAP-IG-activations":
        return
    clean, base = runs["clean"][0], runs["base"][0]
    for layer, block in enumerate(parts.blocks):
        for module, outputs in ((block.o_proj, (clean.attn_out, base.attn_out)),
                                (block.mlp, (clean.mlp_out, base.mlp_out))):
            clean_out, base_out = outputs[0][layer], outputs[1][layer]
            for alpha in alphas:
                yield clean_embeds, {module: alpha * clean_out + (1 - alpha) * base_out}, None

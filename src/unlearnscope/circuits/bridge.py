"""Per-sample EAP / EAP-IG on TransformerLens' `TransformerBridge`: TransformerLens hook semantics.

A second, independent backend for the definitions of `attribution` (DESIGN 5.5):

    S[b, u, v] = sum_pos (a_u(baseline) - a_u(clean)) . mean_k dm_b/d(input of v)(alpha_k)

read directly off the bridge's hook points, as the reference EAP-IG library reads them off a
`HookedTransformer`: writers `hook_embed` (token embedding only), `blocks.{l}.attn.hook_result`
`[batch, pos, head, d_model]` (each head after the output projection, without its bias) and
`blocks.{l}.hook_mlp_out`; readers `blocks.{l}.hook_q_input` / `hook_k_input` / `hook_v_input`
`[batch, pos, head, d_model]` (the residual stream copied per head before the attention norm),
`blocks.{l}.hook_mlp_in` and the last block's `hook_resid_post` (`logits`). Reader gradients are
taken with `torch.autograd.grad` of the batch-summed metric, so each sample's gradient is its
own; padded positions are excluded.

The bridge is built (TransformerLens 4.3 `build_bridge_from_module`, offline, no tokenizer
needed) over a clone of the model's module tree that shares every parameter tensor with the
model, because the bridge rewires the module tree it wraps in place (and switches it to eager
attention); the caller's model is left as it was. Grouped-query models are ungrouped first:
the bridge keeps one k/v input hook per key/value head, so the clone gets K/V projections
expanded to one per query head (the only weights copied), which computes the same function.

Methods as in `attribution`: `EAP`, `EAP-IG-inputs` (the `hook_embed` output interpolated),
`EAP-IG-activations` (each `blocks.{l}.hook_attn_out` / `hook_mlp_out` interpolated in turn).

Cost: the bridge runs each head's norm and projections on its own copy of the residual stream
and forces eager attention; all reader gradients are kept, summed over steps, as one
`[batch, n_backward, pos, d_model]` float32 tensor (SmolLM2-135M, 4 samples of 74 tokens:
0.6 GB) and contracted with the writer differences in one batched product (non-edges
included, then masked). It is slower than the hooks backend of `attribute` and serves
TransformerLens users and as an independent cross-check of it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from importlib.metadata import version

import torch
from torch import nn
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources import build_bridge_from_module

from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.plan import Plan, graph_layout
from unlearnscope.circuits.ungroup import repeat_kv_heads
from unlearnscope.errors import UnlearnscopeError
from unlearnscope.models.architecture import ModelParts, model_parts
from unlearnscope.progress import progress_bar
from unlearnscope.runs import check_finite


def _expanded_linear(linear: nn.Linear, n_kv_heads: int, groups: int) -> nn.Linear:
    """A K or V projection `[n_kv_heads * head_dim, d_model]` repeated to one per query head
    (the weight rows and bias entries repeated as `ungroup.repeat_kv_heads` repeats outputs)."""
    def repeat(tensor: torch.Tensor) -> torch.Tensor:
        return repeat_kv_heads(tensor.detach().movedim(0, -1), n_kv_heads, groups).movedim(-1, 0)

    expanded = nn.Linear(linear.in_features, linear.out_features * groups,
                         bias=linear.bias is not None, device=linear.weight.device,
                         dtype=linear.weight.dtype)
    with torch.no_grad():
        expanded.weight.copy_(repeat(linear.weight))
        if linear.bias is not None:
            expanded.bias.copy_(repeat(linear.bias))
    return expanded


def shared_clone(model: nn.Module) -> nn.Module:
    """A copy of `model`'s module tree and config that shares every parameter tensor with it.

    Ungrouped: in a grouped-query model, the clone's K/V projections are expanded to one per
    query head (`num_key_value_heads = num_attention_heads`), which computes the same logits.
    """
    memo = {id(param): param for param in model.parameters()}
    clone = copy.deepcopy(model, memo)
    parts = model_parts(clone)
    if parts.kv_groups > 1:
        _ungroup(clone, parts)
    return clone


def _ungroup(clone: nn.Module, parts: ModelParts) -> None:
    for block in parts.blocks:
        attention = block.attention
        for name in ("k_proj", "v_proj"):
            setattr(attention, name, _expanded_linear(getattr(attention, name),
                                                      parts.n_kv_heads, parts.kv_groups))
        attention.num_key_value_groups = 1
    clone.config.num_key_value_heads = parts.n_heads


def build_bridge(model: nn.Module, tokenizer=None) -> TransformerBridge:
    """A TransformerBridge in eval mode over `shared_clone(model)` with the EAP hooks enabled.

    Enabled: split q/k/v inputs (`hook_q_input` etc. per head), per-head attention results
    (`attn.hook_result`) and `hook_mlp_in`. `tokenizer` is optional (attribution passes token
    ids); nothing is fetched from the hub.
    """
    clone = shared_clone(model).eval()
    bridge = build_bridge_from_module(clone, type(model).__name__, hf_config=clone.config,
                                      tokenizer=tokenizer)
    bridge.set_use_split_qkv_input(True)
    bridge.set_use_attn_result(True)
    bridge.set_use_hook_mlp_in(True)
    return bridge.eval()


class _BridgeGraph:
    """The EAP graph's hook points on a bridge, in the reference layout."""

    def __init__(self, bridge: TransformerBridge, layout: GraphLayout) -> None:
        self.bridge = bridge
        self.layout = layout
        self.n_layers = layout.n_layers
        self.writer_hooks = ["hook_embed"]
        self.reader_hooks: list[str] = []
        for layer in range(self.n_layers):
            self.writer_hooks += [f"blocks.{layer}.attn.hook_result", f"blocks.{layer}.hook_mlp_out"]
            self.reader_hooks += [f"blocks.{layer}.hook_{qkv}_input" for qkv in "qkv"]
            self.reader_hooks.append(f"blocks.{layer}.hook_mlp_in")
        self.reader_hooks.append(f"blocks.{self.n_layers - 1}.hook_resid_post")

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             embeds: torch.Tensor, names: list[str],
             overrides: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits `[batch, pos, vocab]` and the activations at `names`, with `hook_embed` set to
        `embeds` and each hook in `overrides` replaced by its tensor."""
        seen: dict[str, torch.Tensor] = {}
        replace = {"hook_embed": embeds, **overrides}

        # One closure per name: the bridge calls hooks under canonical names (`embed.hook_out`),
        # not the aliases used here (`hook_embed`). Each hook hands on a fresh view: the bridge's
        # hook points are identities, so `hook_mlp_in` would otherwise be the very tensor the
        # residual connection also adds, and its gradient would include the skip path. A view
        # used only downstream of the hook gives each reader its own input, as the reference's
        # `HookedTransformer` (which clones `mlp_in`) does.
        def hook_for(name: str):
            def hook(tensor: torch.Tensor, hook) -> torch.Tensor:
                seen[name] = replace.get(name, tensor).view_as(tensor)
                return seen[name]
            return hook

        hooked = sorted(set(names) | set(replace))
        with self.bridge.hooks(fwd_hooks=[(name, hook_for(name)) for name in hooked]):
            logits = self.bridge(input_ids, attention_mask=attention_mask, return_type="logits")
        missing = [name for name in hooked if name not in seen]
        if missing:
            raise UnlearnscopeError(
                f"the TransformerLens {version('transformer-lens')} bridge of "
                f"{self.bridge.cfg.architecture} never fires the hook points {missing}, so "
                "this backend cannot read those graph nodes; use `attribute` (hooks on the "
                "Hugging Face modules) for this model")
        return logits, seen

    def writers(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Writer activations `[batch, n_forward, pos, d_model]` float32, logits and the
        attention / MLP block outputs (for EAP-IG-activations) of one no-grad run."""
        outputs = [f"blocks.{layer}.hook_{kind}_out" for layer in range(self.n_layers)
                   for kind in ("attn", "mlp")]
        with torch.no_grad():
            logits, seen = self._run(input_ids, attention_mask, embeds,
                                     self.writer_hooks + outputs, {})
        rows = [seen["hook_embed"][:, None]]
        for layer in range(self.n_layers):
            rows.append(seen[f"blocks.{layer}.attn.hook_result"].transpose(1, 2))
            rows.append(seen[f"blocks.{layer}.hook_mlp_out"][:, None])
        return torch.cat([row.float() for row in rows], dim=1), logits, seen

    def reader_gradients(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         embeds: torch.Tensor, overrides: dict[str, torch.Tensor],
                         metric: Callable[[torch.Tensor], torch.Tensor], where: str
                         ) -> torch.Tensor:
        """dm_b/d(input of v) `[batch, n_backward, pos, d_model]` float32 of one pass."""
        logits, seen = self._run(input_ids, attention_mask, embeds, self.reader_hooks, overrides)
        values = metric(logits)
        check_finite(values, where)
        grads = torch.autograd.grad(values.sum(), [seen[name] for name in self.reader_hooks],
                                    materialize_grads=True)
        rows = []
        for layer in range(self.n_layers):
            q, k, v, mlp = grads[4 * layer: 4 * layer + 4]
            rows += [q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mlp[:, None]]
        rows.append(grads[-1][:, None])
        return torch.cat([row.float() for row in rows], dim=1)


def _activation_overrides(n_layers: int, clean: dict[str, torch.Tensor],
                          base: dict[str, torch.Tensor], alphas: list[float]
                          ) -> list[dict[str, torch.Tensor]]:
    """EAP-IG-activations: each attention / MLP output in turn set between baseline and clean."""
    passes = []
    for layer in range(n_layers):
        for kind in ("attn", "mlp"):
            name = f"blocks.{layer}.hook_{kind}_out"
            passes += [{name: alpha * clean[name] + (1 - alpha) * base[name]} for alpha in alphas]
    return passes


class BridgeBackend:
    """The `bridge` attribution backend: a TransformerBridge over `model`, built once and used
    for every batch (`attribution.make_backend`); definitions and result as `attribute`'s."""

    name = "bridge"

    def __init__(self, model: nn.Module) -> None:
        self.graph = _BridgeGraph(build_bridge(model), graph_layout(model))

    def __call__(self, plan: Plan, *, level: str, positions: str, zero_writers: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Edge scores `[batch, n_forward, n_backward]` and the clean and baseline logits
        (`level`, `positions`, `zero_writers`: only the defaults, which `attribute` checks)."""
        graph, layout, method = self.graph, plan.layout, plan.method
        input_ids, attention_mask = plan.input_ids, plan.attention_mask
        clean, clean_logits, clean_outputs = graph.writers(input_ids, attention_mask,
                                                           plan.clean_embeds)
        base, base_logits, base_outputs = graph.writers(input_ids, attention_mask,
                                                        plan.base_embeds)
        difference = plan.clean_embeds - plan.base_embeds
        passes = [(plan.clean_embeds if alpha == 1 else plan.base_embeds + alpha * difference,
                   {}) for alpha in plan.alphas]
        if method == "EAP-IG-activations":
            passes += [(plan.clean_embeds, overrides) for overrides in
                       _activation_overrides(layout.n_layers, clean_outputs, base_outputs,
                                             plan.alphas)]

        gradient_sum = plan.clean_embeds.new_zeros(len(input_ids), layout.n_backward,
                                                   *plan.clean_embeds.shape[1:],
                                                   dtype=torch.float32)
        for embeds, overrides in progress_bar(passes, desc=f"{method} passes (bridge)",
                                              leave=False, disable=None):
            leaf = embeds.detach().requires_grad_(True)
            gradient_sum += graph.reader_gradients(
                input_ids, attention_mask, leaf, overrides,
                lambda logits: plan.metric(logits, plan.labels, clean_logits),
                f"{plan.metric_name} during {method}")

        real = attention_mask[:, None, :, None].float()
        delta = ((base - clean) * real).flatten(2)
        scores = torch.bmm(delta, gradient_sum.flatten(2).transpose(1, 2)) / len(passes)
        return scores * layout.real_edge_mask.to(scores.device), clean_logits, base_logits

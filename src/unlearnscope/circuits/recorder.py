"""Forward hooks that record the EAP graph's writers and the gradients at its readers.

One `GraphRecorder` is installed on a model for the duration of an attribution call. Per
forward pass it can:

- record the writers: the token-embedding output `[batch, pos, d_model]`, per layer the
  concatenated head outputs `z` before the output projection `[batch, pos, n_heads * head_dim]`
  (each head's contribution to the residual stream is `z_h @ W_O[h]`) and the attention and MLP
  outputs `[batch, pos, d_model]`;
- replace the token-embedding output, or one attention/MLP output, with a given tensor;
- record, during the backward pass, the gradient at each q/k/v projection output, at the MLP's
  own (post-norm) input, at the final norm's input (the `logits` reader), and the inputs of the
  attention/MLP norms, from which `reader_gradients` builds the per-reader gradients;
- or record the gradient at each writer's output instead (`writer_grads`: the token embedding,
  each attention output, each MLP output), what node-level attribution needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from unlearnscope.circuits.ungroup import ungrouped_kv
from unlearnscope.models.architecture import ModelParts


@dataclass
class Writers:
    """Writer activations of one forward pass (detached)."""

    embed: torch.Tensor | None = None
    z: dict[int, torch.Tensor] = field(default_factory=dict)
    attn_out: dict[int, torch.Tensor] = field(default_factory=dict)
    mlp_out: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class ReaderGrads:
    """Gradients of one backward pass, keyed by layer; a missing key means no gradient."""

    qkv: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict)
    mlp_in: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    norm_inputs: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class WriterGrads:
    """Gradients at the writers' outputs of one backward pass, `[batch, pos, d_model]` each:
    the token embedding, per layer the attention output (after the output projection, shared
    by its heads) and the MLP output; a missing key means no gradient."""

    embed: torch.Tensor | None = None
    attn_out: dict[int, torch.Tensor] = field(default_factory=dict)
    mlp_out: dict[int, torch.Tensor] = field(default_factory=dict)


class GraphRecorder:
    """Hooks on a model's writer/reader modules; see the module docstring."""

    def __init__(self, parts: ModelParts) -> None:
        self.parts = parts
        self.writers: Writers | None = None
        self.grads: ReaderGrads | None = None
        self.writer_grads: WriterGrads | None = None
        self.embedding_override: torch.Tensor | None = None
        self.output_overrides: dict[nn.Module, torch.Tensor] = {}
        self.active = False

    @contextmanager
    def installed(self) -> Iterator[GraphRecorder]:
        """Install the hooks (and the k/v ungrouping) for the duration of the block."""
        handles = []
        parts = self.parts
        with ungrouped_kv(parts):
            try:
                handles.append(parts.embedding.register_forward_hook(self._embedding_hook))
                handles.append(parts.final_norm.register_forward_pre_hook(self._logits_hook))
                for layer, block in enumerate(parts.blocks):
                    for index, module in enumerate(block.qkv_modules):
                        handles.append(module.register_forward_hook(self._qkv_hook(layer, index)))
                    handles.append(block.o_proj.register_forward_hook(self._o_proj_hook(layer)))
                    handles.append(block.mlp.register_forward_pre_hook(self._mlp_in_hook(layer)))
                    handles.append(block.mlp.register_forward_hook(self._mlp_out_hook(layer)))
                    for norm in {id(block.attn_norm): block.attn_norm,
                                 id(block.mlp_norm): block.mlp_norm}.values():
                        handles.append(norm.register_forward_pre_hook(self._norm_hook(norm)))
                yield self
            finally:
                for handle in handles:
                    handle.remove()

    @contextmanager
    def recording(self, *, writers: bool = False, grads: bool = False,
                  writer_grads: bool = False, embedding: torch.Tensor | None = None,
                  overrides: dict[nn.Module, torch.Tensor] | None = None) -> Iterator[None]:
        """Configure the next forward pass (and its backward)."""
        self.writers = Writers() if writers else None
        self.grads = ReaderGrads() if grads else None
        self.writer_grads = WriterGrads() if writer_grads else None
        self.embedding_override = embedding
        self.output_overrides = overrides or {}
        self.active = True
        try:
            yield
        finally:
            self.active = False
            self.embedding_override = None
            self.output_overrides = {}

    # -- hooks ---------------------------------------------------------------------------------

    def _embedding_hook(self, module: nn.Module, args: tuple, output: torch.Tensor):
        if not self.active:
            return output
        if self.embedding_override is not None:
            output = self.embedding_override
        if self.writers is not None:
            self.writers.embed = output.detach()
        if self.writer_grads is not None and output.requires_grad:
            writer_grads = self.writer_grads
            output.register_hook(lambda grad: setattr(writer_grads, "embed", grad))
        return output

    def _qkv_hook(self, layer: int, index: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if self.active and self.grads is not None and output.requires_grad:
                grads = self.grads

                def store(grad: torch.Tensor) -> None:
                    grads.qkv.setdefault(layer, {})[index] = grad

                output.register_hook(store)

        return hook

    def _o_proj_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor):
            if not self.active:
                return output
            if self.writers is not None:
                self.writers.z[layer] = args[0].detach()
                self.writers.attn_out[layer] = output.detach()
            output = self.output_overrides.get(module, output)
            self._store_writer_grad(output, "attn_out", layer)
            return output

        return hook

    def _mlp_in_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple):
            if not self.active or self.grads is None or not args[0].requires_grad:
                return None
            # A private view of the normed input, so that its gradient holds the MLP's share
            # only (in Phi the attention reads the same normed tensor).
            private = args[0].view_as(args[0])
            grads = self.grads

            def store(grad: torch.Tensor) -> None:
                grads.mlp_in[layer] = grad

            private.register_hook(store)
            return (private, *args[1:])

        return hook

    def _mlp_out_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor):
            if not self.active:
                return output
            if self.writers is not None:
                self.writers.mlp_out[layer] = output.detach()
            output = self.output_overrides.get(module, output)
            self._store_writer_grad(output, "mlp_out", layer)
            return output

        return hook

    def _store_writer_grad(self, output: torch.Tensor, kind: str, layer: int) -> None:
        if self.writer_grads is None or not output.requires_grad:
            return
        found = getattr(self.writer_grads, kind)

        def store(grad: torch.Tensor) -> None:
            found[layer] = grad

        output.register_hook(store)

    def _norm_hook(self, norm: nn.Module):
        def hook(module: nn.Module, args: tuple) -> None:
            if self.active and self.grads is not None:
                self.grads.norm_inputs[id(norm)] = args[0].detach()

        return hook

    def _logits_hook(self, module: nn.Module, args: tuple):
        if not self.active or self.grads is None or not args[0].requires_grad:
            return None
        private = args[0].view_as(args[0])
        grads = self.grads

        def store(grad: torch.Tensor) -> None:
            grads.logits = grad

        private.register_hook(store)
        return (private, *args[1:])

"""Node-level attribution: one score per writer instead of one per edge.

A writer u's node score is

    N[b, u] = sum_pos (a_u(baseline) - a_u(clean)) . mean_k dm_b/d(output of u)(alpha_k),

the gradient taken at the tensor the writer adds to the residual stream (the token embedding,
the attention output for each of its heads, the MLP output). Every reader reads the residual
stream, and u's output reaches the metric only through the readers after it, so the gradient at
u's output is the sum of the gradients at those readers: N[b, u] = sum_v S[b, u, v] over the real
edges u -> v of the edge scores S (`node_scores_from_edges`). Computed from the writers' own
gradients (`WriterGradientSum`), it needs none of the per-reader gradients (no norm
vector-Jacobian products, no `[n_forward, n_backward]` contraction).
"""

from __future__ import annotations

import torch

from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.recorder import GraphRecorder
from unlearnscope.circuits.selection import edge_index
from unlearnscope.models.architecture import ModelParts


def node_scores_from_edges(edge_scores: torch.Tensor, layout: GraphLayout) -> torch.Tensor:
    """Node scores `[..., n_forward]` of edge scores on the real edges `[..., n_edges]`
    (`selection.edge_vector` order): each writer's edge scores summed."""
    writers, _ = edge_index(layout)
    out = edge_scores.new_zeros((*edge_scores.shape[:-1], layout.n_forward))
    return out.index_add_(-1, writers.to(edge_scores.device), edge_scores)


class WriterGradientSum:
    """Gradients at the writers' outputs summed over passes, `[batch, pos, d_model]` each."""

    def __init__(self, parts: ModelParts) -> None:
        self.parts = parts
        self.embed: torch.Tensor | None = None
        self.attn_out: list[torch.Tensor] = []
        self.mlp_out: list[torch.Tensor] = []
        self.n_passes = 0

    def add(self, recorder: GraphRecorder, like: torch.Tensor) -> None:
        """Add one backward pass's writer gradients; like: the `[batch, pos, d_model]` input."""
        grads = recorder.writer_grads
        if self.embed is None:
            self.embed = like.new_zeros(like.shape, dtype=torch.float32)
            self.attn_out = [torch.zeros_like(self.embed) for _ in range(self.parts.n_layers)]
            self.mlp_out = [torch.zeros_like(self.embed) for _ in range(self.parts.n_layers)]
        if grads.embed is not None:
            self.embed += grads.embed.float()
        for layer in range(self.parts.n_layers):
            for found, total in ((grads.attn_out, self.attn_out), (grads.mlp_out, self.mlp_out)):
                if layer in found:
                    total[layer] += found[layer].float()
        self.n_passes += 1

    def contract(self, delta: torch.Tensor, layout: GraphLayout) -> torch.Tensor:
        """delta `[batch, n_forward, pos, d_model]` -> node scores `[batch, n_forward]`."""
        scores = delta.new_zeros(delta.shape[0], layout.n_forward)
        scores[:, 0] = (delta[:, 0] * self.embed).sum(dim=(1, 2))
        for layer in range(layout.n_layers):
            first, mlp = layout.head_forward_index(layer, 0), layout.mlp_forward_index(layer)
            scores[:, first:mlp] = torch.einsum("bhpd,bpd->bh", delta[:, first:mlp],
                                                self.attn_out[layer])
            scores[:, mlp] = (delta[:, mlp] * self.mlp_out[layer]).sum(dim=(1, 2))
        return scores / self.n_passes

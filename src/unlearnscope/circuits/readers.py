"""Per-reader gradients of the EAP graph from one backward pass.

Every q/k/v reader of a layer reads the same residual stream `x` through the same attention
norm, and differs only in which slice of the q/k/v projection consumes the normed vector. So
the gradient at reader (head h, q/k/v s) is the norm's vector-Jacobian product at `x` applied to
that slice's cotangent `grad_out[s, h] @ W[s, h]`. The norm's VJP is linear in the cotangent,
so all `3 * n_heads` readers go through the norm in one batched call, with `x` repeated along a
reader axis: autograd does the norm backward, we only pick the slice. This is what TransformerLens
computes with `use_split_qkv_input` (the norm applied per head copy), without running the attention
block once per head. The MLP reader is the same construction with the MLP's norm and the gradient
at the MLP's own input; the `logits` reader is the gradient at the final norm's input.
"""

from __future__ import annotations

import torch
from torch import nn

from unlearnscope.circuits.recorder import ReaderGrads
from unlearnscope.models.architecture import ModelParts


def _rms_norm_vjp(norm: nn.Module, x: torch.Tensor, cotangents: torch.Tensor) -> torch.Tensor:
    # y = w * x * r with r = rsqrt(mean(x^2) + eps):  J^T c = r (g - x_hat mean(g x_hat)),
    # g = w c, x_hat = x r.
    x = x.float()
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    x_hat = x * r
    g = cotangents * norm.weight.detach().float()
    dot = (g * x_hat).mean(-1, keepdim=True)
    return g.addcmul_(x_hat, dot, value=-1).mul_(r)


def _layer_norm_vjp(norm: nn.LayerNorm, x: torch.Tensor, cotangents: torch.Tensor
                    ) -> torch.Tensor:
    # y = w * x_hat + b with x_hat = (x - mean) s, s = rsqrt(var + eps):
    # J^T c = s (g - mean(g) - x_hat mean(g x_hat)), g = w c.
    x = x.float()
    centered = x - x.mean(-1, keepdim=True)
    s = torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + norm.eps)
    x_hat = centered * s
    g = cotangents if norm.weight is None else cotangents * norm.weight.detach().float()
    dot = (g * x_hat).mean(-1, keepdim=True)
    g = g - g.mean(-1, keepdim=True)
    return g.addcmul_(x_hat, dot, value=-1).mul_(s)


def _is_rms_norm(norm: nn.Module) -> bool:
    # Llama-style RMSNorm (`weight * x * rsqrt(mean(x^2) + variance_epsilon)`), as in Llama,
    # Mistral, Qwen2/3; Gemma's `(1 + weight)` variant names its epsilon `eps` and is excluded.
    return type(norm).__name__.endswith("RMSNorm") and hasattr(norm, "variance_epsilon")


def norm_vjp(norm: nn.Module, x: torch.Tensor, cotangents: torch.Tensor) -> torch.Tensor:
    """Gradient at the norm's input for several cotangents at its output.

    x `[batch, pos, d_model]`, cotangents `[n, batch, pos, d_model]` -> `[n, batch, pos, d_model]`
    float32 (`n` independent VJPs at the same input). LayerNorm and RMSNorm use their closed-form
    VJP, faster than autograd through `n` copies of the norm (this runs for every reader
    of every layer at every step); other norms go through `torch.func.vjp`.
    """
    if isinstance(norm, nn.LayerNorm) and len(norm.normalized_shape) == 1:
        return _layer_norm_vjp(norm, x, cotangents.float())
    if _is_rms_norm(norm):
        return _rms_norm_vjp(norm, x, cotangents.float())
    return autograd_norm_vjp(norm, x, cotangents)


def autograd_norm_vjp(norm: nn.Module, x: torch.Tensor, cotangents: torch.Tensor
                      ) -> torch.Tensor:
    """`norm_vjp` by autograd through the norm applied to `n` copies of `x`."""
    repeated = x[None].expand(cotangents.shape[0], *x.shape).contiguous()
    _, vjp = torch.func.vjp(norm.forward, repeated)
    (grad,) = vjp(cotangents.to(x.dtype))
    return grad.float()


def add_layer_reader_gradients(parts: ModelParts, layer: int, grads: ReaderGrads,
                               qkv_weight: torch.Tensor, out: torch.Tensor) -> None:
    """Add the gradients at the `3 * n_heads + 1` readers of `layer` into `out`.

    qkv_weight `[3 * n_heads, head_dim, d_model]`; out `[3 * n_heads + 1, batch, pos, d_model]`
    float32, readers in graph order (q of every head, k, v, then the MLP); reader-major so that
    every piece here is a contiguous block. Readers that got no gradient in this pass (their
    node's output was replaced) add nothing.
    """
    block = parts.blocks[layer]
    n_qkv, batch, pos, _ = out.shape
    n_qkv -= 1
    qkv_grads = grads.qkv.get(layer, {})
    if len(qkv_grads) == len(block.qkv_modules):
        per_head = block.split_qkv_grad([qkv_grads[i] for i in range(len(block.qkv_modules))])
        # [3 * heads, batch * pos, head_dim] @ [3 * heads, head_dim, d_model]: per-head cotangents
        per_head = per_head.float().permute(2, 3, 0, 1, 4).reshape(n_qkv, batch * pos, -1)
        cot_qkv = torch.bmm(per_head, qkv_weight).view(n_qkv, batch, pos, -1)
        out[:n_qkv] += norm_vjp(block.attn_norm, grads.norm_inputs[id(block.attn_norm)], cot_qkv)
    mlp_grad = grads.mlp_in.get(layer)
    if mlp_grad is not None:
        out[n_qkv:] += norm_vjp(block.mlp_norm, grads.norm_inputs[id(block.mlp_norm)],
                                mlp_grad.float()[None])

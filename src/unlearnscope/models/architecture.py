"""Where the parts of a Hugging Face causal LM live: the one registry of model families.

Circuits (the EAP graph's writers and readers), circuit masks and RMU (its steered block) all
look modules up here. One small description per model family names the modules that matter:
the token embedding, and per block the block module itself, the attention norm, the q/k/v projections (and how their
output features map to `[qkv, head, head_dim]`), the output projection, the MLP norm, the MLP,
and the final norm. Attribution only hooks these modules; everything between them (RoPE,
q/k norms, the attention kernel, dropout in eval mode) is the model's own code.

Supported `model_type`s: `gpt2`; the Llama family (`llama`, `mistral`, `qwen2`, `qwen3`,
`smollm3`), including grouped-query attention; `gpt_neox` (parallel or sequential
residual); `phi` (parallel attention and MLP sharing one norm).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from unlearnscope.errors import UnknownNameError

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "smollm3")


@dataclass(frozen=True)
class BlockParts:
    """The modules of one transformer block that the EAP graph touches.

    `qkv_modules` are the projection modules whose outputs are q, k and v (one fused module or
    three); `split_qkv_grad` maps their output gradients to `[batch, pos, 3, n_heads, head_dim]`
    (k/v already ungrouped to one per query head) and `qkv_weight()` gives the matching
    `[3, n_heads, head_dim, d_model]` weights, so `grad @ weight` is each head's cotangent at
    the normed input. `o_proj` takes the concatenated head outputs `z` `[batch, pos, n_heads *
    head_dim]`; `o_weight()` is `[n_heads, head_dim, d_model]`. `mlp_norm` is the norm whose
    output the MLP reads (the attention norm itself in Phi). `layer` is the block module itself
    (its output is the residual stream after the block).
    """

    layer: nn.Module
    attn_norm: nn.Module
    qkv_modules: tuple[nn.Module, ...]
    split_qkv_grad: Callable[[list[torch.Tensor]], torch.Tensor]
    qkv_weight: Callable[[], torch.Tensor]
    o_proj: nn.Module
    o_weight: Callable[[], torch.Tensor]
    mlp_norm: nn.Module
    mlp: nn.Module
    attention: nn.Module


@dataclass(frozen=True)
class ModelParts:
    """Everything attribution needs to know about a model's structure."""

    embedding: nn.Module
    blocks: tuple[BlockParts, ...]
    final_norm: nn.Module
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    parallel_attn_mlp: bool

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def kv_groups(self) -> int:
        return self.n_heads // self.n_kv_heads


def _heads_view(weight: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """A `[n_heads * head_dim, d_model]` projection weight as `[n_heads, head_dim, d_model]`."""
    return weight.reshape(n_heads, head_dim, weight.shape[-1])


def _separate_qkv_block(layer: nn.Module, attn: nn.Module, o_proj: nn.Module, mlp_norm: nn.Module,
                        n_heads: int, n_kv_heads: int, head_dim: int) -> BlockParts:
    groups = n_heads // n_kv_heads

    def split(grads: list[torch.Tensor]) -> torch.Tensor:
        batch, pos = grads[0].shape[:2]
        return torch.stack([g.reshape(batch, pos, n_heads, head_dim) for g in grads], dim=2)

    def weight() -> torch.Tensor:
        q = _heads_view(attn.q_proj.weight, n_heads, head_dim)
        k = _heads_view(attn.k_proj.weight, n_kv_heads, head_dim).repeat_interleave(groups, 0)
        v = _heads_view(attn.v_proj.weight, n_kv_heads, head_dim).repeat_interleave(groups, 0)
        return torch.stack([q, k, v])

    def o_weight() -> torch.Tensor:
        # Linear weight `[d_model, n_heads * head_dim]`.
        return o_proj.weight.T.reshape(n_heads, head_dim, -1)

    return BlockParts(
        layer=layer,
        attn_norm=layer.input_layernorm,
        qkv_modules=(attn.q_proj, attn.k_proj, attn.v_proj),
        split_qkv_grad=split,
        qkv_weight=weight,
        o_proj=o_proj,
        o_weight=o_weight,
        mlp_norm=mlp_norm,
        mlp=layer.mlp,
        attention=attn,
    )


def _llama_like(model: nn.Module) -> ModelParts:
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    blocks = tuple(
        _separate_qkv_block(layer, layer.self_attn, layer.self_attn.o_proj,
                            layer.post_attention_layernorm, n_heads, n_kv, head_dim)
        for layer in model.model.layers
    )
    return ModelParts(model.model.embed_tokens, blocks, model.model.norm, n_heads, n_kv,
                      head_dim, cfg.hidden_size, parallel_attn_mlp=False)


def _phi(model: nn.Module) -> ModelParts:
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = cfg.hidden_size // n_heads
    blocks = tuple(
        _separate_qkv_block(layer, layer.self_attn, layer.self_attn.dense,
                            layer.input_layernorm, n_heads, n_kv, head_dim)
        for layer in model.model.layers
    )
    return ModelParts(model.model.embed_tokens, blocks, model.model.final_layernorm, n_heads,
                      n_kv, head_dim, cfg.hidden_size, parallel_attn_mlp=True)


def _gpt2(model: nn.Module) -> ModelParts:
    cfg = model.config
    n_heads = cfg.n_head
    d_model = cfg.n_embd
    head_dim = d_model // n_heads

    def block(layer: nn.Module) -> BlockParts:
        attn = layer.attn

        def split(grads: list[torch.Tensor]) -> torch.Tensor:
            # c_attn output is `[q | k | v]`, each `[n_heads, head_dim]`.
            batch, pos = grads[0].shape[:2]
            return grads[0].reshape(batch, pos, 3, n_heads, head_dim)

        def weight() -> torch.Tensor:
            # Conv1D weight is `[d_model, 3 * d_model]` (input-major).
            return attn.c_attn.weight.T.reshape(3, n_heads, head_dim, d_model)

        def o_weight() -> torch.Tensor:
            return attn.c_proj.weight.reshape(n_heads, head_dim, d_model)

        return BlockParts(layer, layer.ln_1, (attn.c_attn,), split, weight, attn.c_proj, o_weight,
                          layer.ln_2, layer.mlp, attn)

    blocks = tuple(block(layer) for layer in model.transformer.h)
    return ModelParts(model.transformer.wte, blocks, model.transformer.ln_f, n_heads, n_heads,
                      head_dim, d_model, parallel_attn_mlp=False)


def _gpt_neox(model: nn.Module) -> ModelParts:
    cfg = model.config
    n_heads = cfg.num_attention_heads
    d_model = cfg.hidden_size
    head_dim = d_model // n_heads

    def block(layer: nn.Module) -> BlockParts:
        attn = layer.attention

        def split(grads: list[torch.Tensor]) -> torch.Tensor:
            # query_key_value output is `[n_heads, (q | k | v), head_dim]`.
            batch, pos = grads[0].shape[:2]
            return grads[0].reshape(batch, pos, n_heads, 3, head_dim).transpose(2, 3)

        def weight() -> torch.Tensor:
            w = attn.query_key_value.weight.reshape(n_heads, 3, head_dim, d_model)
            return w.transpose(0, 1)

        def o_weight() -> torch.Tensor:
            return attn.dense.weight.T.reshape(n_heads, head_dim, d_model)

        return BlockParts(layer, layer.input_layernorm, (attn.query_key_value,), split, weight,
                          attn.dense, o_weight, layer.post_attention_layernorm, layer.mlp, attn)

    blocks = tuple(block(layer) for layer in model.gpt_neox.layers)
    return ModelParts(model.gpt_neox.embed_in, blocks, model.gpt_neox.final_layer_norm, n_heads,
                      n_heads, head_dim, d_model, parallel_attn_mlp=bool(cfg.use_parallel_residual))


_FAMILIES: dict[str, Callable[[nn.Module], ModelParts]] = {
    **dict.fromkeys(LLAMA_LIKE, _llama_like),
    "phi": _phi,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
}


def model_parts(model: nn.Module) -> ModelParts:
    """Describe `model` (a `*ForCausalLM`, or a wrapper holding it as `.module`, e.g. DDP);
    unknown families raise."""
    model = getattr(model, "module", model)
    model_type = getattr(model.config, "model_type", None)
    if model_type not in _FAMILIES:
        raise UnknownNameError("model family for circuits", str(model_type), list(_FAMILIES))
    return _FAMILIES[model_type](model)


def decoder_layers(model: nn.Module) -> tuple[nn.Module, ...]:
    """The transformer blocks of `model` in order (see `model_parts`)."""
    return tuple(block.layer for block in model_parts(model).blocks)

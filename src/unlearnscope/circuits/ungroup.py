"""Ungrouped keys and values: one k and one v per query head, with the model's function unchanged.

In a grouped-query attention block, `n_heads / n_kv_heads` query heads share each key/value
head, so the k (or v) projection output has one slice per key/value head and its gradient mixes
the query heads of a group. The EAP graph gives each query head its own k and v reader, as if
the K/V projections were expanded to one per query head. Expanding the projection *outputs*
(repeating each key/value head for the query heads of its group) is that same model without
copying weights: the expanded projection computes the same values, and with
`num_key_value_groups = 1` the attention kernel uses them as they are instead of repeating them
itself. Each query head's k/v gradient then arrives in its own slice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from unlearnscope.models.architecture import ModelParts


def repeat_kv_heads(output: torch.Tensor, n_kv_heads: int, groups: int) -> torch.Tensor:
    """A k or v projection output `[..., n_kv_heads * head_dim]` with each key/value head
    repeated for the `groups` query heads sharing it: `[..., n_kv_heads * groups * head_dim]`."""
    *lead, width = output.shape
    heads = output.reshape(*lead, n_kv_heads, width // n_kv_heads)
    return heads.repeat_interleave(groups, dim=-2).reshape(*lead, width * groups)


def _repeat_heads(n_kv_heads: int, groups: int):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return repeat_kv_heads(output, n_kv_heads, groups)

    return hook


@contextmanager
def ungrouped_kv(parts: ModelParts) -> Iterator[None]:
    """Within the block, every attention layer of the model has one k/v head per query head.

    A no-op for models without grouped-query attention. Restores the model on exit.
    """
    if parts.kv_groups == 1:
        yield
        return
    handles = []
    attentions = [block.attention for block in parts.blocks]
    saved = [attn.num_key_value_groups for attn in attentions]
    try:
        for block in parts.blocks:
            _, k_proj, v_proj = block.qkv_modules
            hook = _repeat_heads(parts.n_kv_heads, parts.kv_groups)
            handles += [k_proj.register_forward_hook(hook), v_proj.register_forward_hook(hook)]
            block.attention.num_key_value_groups = 1
        yield
    finally:
        for handle in handles:
            handle.remove()
        for attn, groups in zip(attentions, saved, strict=True):
            attn.num_key_value_groups = groups

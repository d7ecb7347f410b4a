"""Tiny randomly initialized models of each supported family and a padded batch, shared by the
circuit tests."""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 61
SMALL = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
         "num_attention_heads": 4, "vocab_size": VOCAB, "max_position_embeddings": 32,
         "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}

FAMILIES = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB,
                                               n_positions=32, bos_token_id=0, eos_token_id=0)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SMALL)),
    "llama-gqa": lambda: LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=2)),
    "qwen2-gqa": lambda: Qwen2ForCausalLM(Qwen2Config(**SMALL, num_key_value_heads=2)),
    "neox-parallel": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(**SMALL, use_parallel_residual=True,
                                                              rotary_pct=0.5)),
    "neox-sequential": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(**SMALL,
                                                                use_parallel_residual=False)),
    "phi-gqa": lambda: PhiForCausalLM(PhiConfig(**SMALL, num_key_value_heads=2)),
}


def tiny(family: str, *, perturb_vectors: bool = False):
    """A seeded model of `family` in eval mode, its matrices scaled up so that scores are far
    from zero; `perturb_vectors` also moves the biases and norm weights off the init's 0 and 1."""
    torch.manual_seed(0)
    model = FAMILIES[family]()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.mul_(3.0)
            elif perturb_vectors:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def padded_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """Three samples of lengths 9, 6, 8, right padded; the answer starts at position 4."""
    torch.manual_seed(seed)
    ids = torch.randint(1, VOCAB, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 8:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}

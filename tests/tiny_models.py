"""Tiny models for the tests: one explicit, seeded builder per kind, so every call gives the
same weights.

- `family_model(family)`: a randomly initialized 2-layer model of each architecture family the
  circuit code supports (`FAMILIES`, vocabulary `VOCAB`, no tokenizer); `padded_batch` is a
  right-padded batch of random ids for it.
- `tiny_llama(samples)`: the package's tiny Llama (`build_tiny`) at the small size
  `TINY_LLAMA`, with a tokenizer trained on the samples' texts (the `tiny_lm` fixture).
- `toy_tokenizer()` and `toy_llama(tokenizer)`: a byte-level BPE tokenizer trained on the toy
  facts of `unlearning_support` and a GQA Llama over its vocabulary.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from unlearning_support import FACTS
from unlearnscope.models.finetune import build_tiny
from unlearnscope.models.tiny import TinyConfig

# ---- one model per architecture family (the circuit tests) --------------------------------

VOCAB = 61
FAMILY_CONFIG = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "vocab_size": VOCAB, "max_position_embeddings": 32,
                 "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


def gpt2_model() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB,
                                      n_positions=32, bos_token_id=0, eos_token_id=0))


def llama_model() -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(**FAMILY_CONFIG))


def llama_gqa_model() -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(**FAMILY_CONFIG, num_key_value_heads=2))


def qwen2_gqa_model() -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM(Qwen2Config(**FAMILY_CONFIG, num_key_value_heads=2))


def neox_parallel_model() -> GPTNeoXForCausalLM:
    return GPTNeoXForCausalLM(GPTNeoXConfig(**FAMILY_CONFIG, use_parallel_residual=True,
                                            rotary_pct=0.5))


def neox_sequential_model() -> GPTNeoXForCausalLM:
    return GPTNeoXForCausalLM(GPTNeoXConfig(**FAMILY_CONFIG, use_parallel_residual=False))


def phi_gqa_model() -> PhiForCausalLM:
    return PhiForCausalLM(PhiConfig(**FAMILY_CONFIG, num_key_value_heads=2))


FAMILIES = {
    "gpt2": gpt2_model,
    "llama": llama_model,
    "llama-gqa": llama_gqa_model,
    "qwen2-gqa": qwen2_gqa_model,
    "neox-parallel": neox_parallel_model,
    "neox-sequential": neox_sequential_model,
    "phi-gqa": phi_gqa_model,
}


def family_model(family: str, *, perturb_vectors: bool = False):
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


# ---- the package's tiny Llama with a tokenizer trained on the samples ---------------------

TINY_LLAMA = TinyConfig(vocab_size=400, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=256)


def tiny_llama(samples, *, seed: int = 0):
    """(model, tokenizer): a randomly initialized 2-layer GQA Llama (`TINY_LLAMA`) with its own
    tokenizer trained on `samples`' texts, as `finetune --model tiny` builds one."""
    return build_tiny(samples, seed=seed, config=TINY_LLAMA)


# ---- a tokenizer of the toy facts and a Llama over it (the unlearning tests) --------------


def toy_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (320 tokens, `<pad>`, `<s>`, `</s>`, `<unk>`) trained on the toy facts in
    the prompt format."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [f"Question: {q}\nAnswer: {a}" for q, a in FACTS]
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def toy_llama(tokenizer, seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    """A seeded GQA Llama (4 query heads, 2 key/value heads) in eval mode over `tokenizer`'s
    vocabulary and special tokens."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval()

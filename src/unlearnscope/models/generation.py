"""Batched greedy answers to questions and their ROUGE-L recall against the reference answer.

Shared by per-sample unlearning outcomes and the TOFU metrics. Generation needs left padding (every prompt must end at the same position so the new tokens
line up), unlike the right-padded teacher-forced batches used everywhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from rouge_score import rouge_scorer

from unlearnscope.data.sample import Sample
from unlearnscope.data.tokenize import encode_sample, pad_id
from unlearnscope.models.inputs import model_device
from unlearnscope.progress import progress_bar

DEFAULT_MAX_NEW_TOKENS = 200

# rouge_score logs an INFO line per scorer through absl
logging.getLogger("absl").setLevel(logging.WARNING)


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
    """Left-pad token id lists -> (input_ids `[batch, width]`, attention_mask `[batch, width]`)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            input_ids[row, width - len(prompt):] = torch.tensor(list(prompt))
            attention_mask[row, width - len(prompt):] = 1
    return input_ids, attention_mask


@torch.no_grad()
def greedy_answers(model, tokenizer, samples: Sequence[Sample], *, batch_size: int = 16,
                   max_new_tokens: int | None = DEFAULT_MAX_NEW_TOKENS, desc: str = "generate"
                   ) -> list[str]:
    """Greedy continuation of each sample's prompt (the same prompt text as in training), cut at
    the end-of-sequence token, special tokens removed, whitespace stripped.

    `max_new_tokens=None`: the longest reference answer of the batch in tokens (plus EOS),
    enough for a memorized answer to be reproduced whole. Prompts are sorted by length so
    batches carry little padding; results come back in the order of `samples`.
    """
    encoded = [encode_sample(tokenizer, s) for s in samples]
    prompts = [e.prompt_ids for e in encoded]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    pad = pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    answers: list[str] = [""] * len(samples)
    device = model_device(model)
    was_training = model.training
    model.eval()
    starts = range(0, len(order), batch_size)
    for start in progress_bar(starts, desc=desc, leave=False, total=len(starts)):
        chunk = order[start:start + batch_size]
        input_ids, attention_mask = left_pad([prompts[i] for i in chunk], pad)
        new = max_new_tokens or max(len(encoded[i].answer_ids) for i in chunk)
        output = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
            max_new_tokens=new, do_sample=False, num_beams=1,
            pad_token_id=pad, eos_token_id=eos, temperature=None, top_p=None, top_k=None,
        )
        new_tokens = output[:, input_ids.shape[1]:].cpu()
        for row, index in enumerate(chunk):
            tokens = new_tokens[row].tolist()
            if eos is not None and eos in tokens:
                tokens = tokens[: tokens.index(eos)]
            answers[index] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    model.train(was_training)
    return answers


def rouge_l_recall(references: Sequence[str], predictions: Sequence[str]) -> np.ndarray:
    """ROUGE-L recall (longest common subsequence / reference length, Porter-stemmed tokens) of
    each prediction against its reference, via the `rouge-score` package. `[n]` float64."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array([scorer.score(ref, pred)["rougeL"].recall
                     for ref, pred in zip(references, predictions, strict=True)], dtype=np.float64)

"""Per-sample loss gradients and their Gram matrix, exact or sketched by a random projection.

The Gram matrix G = [g_i . g_j] of the forget samples' answer-loss gradients is all the
one-step bilevel objective needs. For a large model the gradients (`[N, n_params]`) do not fit
in memory, so each is sketched to `dim` coordinates with E[s_i . s_j] = g_i . g_j
(Johnson-Lindenstrauss), with an error of order |g_i| |g_j| / sqrt(dim):

- `rademacher` / `gaussian`: s = R g / sqrt(dim), R a seeded `[n_params, dim]` matrix of +-1
  or N(0, 1) entries. R is never stored: it is regenerated block by block from the seed, in
  the same order for every batch of samples, on the gradients' device, and each block
  multiplies the whole batch at once, so generation costs `dim * n_params / batch` random
  numbers per sample (fine on a GPU, slow on a CPU for 100M+ parameters).
- `countsketch` (Clarkson-Woodruff, a sparse JL transform): each coordinate is added with a
  random sign to one random bucket, s_b = sum_{h(p) = b} sign_p g_p; O(n_params) per batch
  whatever `dim`, the practical choice on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from unlearnscope.data.tokenize import EncodedSample, iter_batches
from unlearnscope.errors import UnknownNameError
from unlearnscope.models.gradients import per_sample_gradients, trainable_parameters
from unlearnscope.models.inputs import model_device, move_batch
from unlearnscope.models.logprobs import mean_answer_nll
from unlearnscope.progress import progress_bar

SKETCH_KINDS = ("rademacher", "gaussian", "countsketch")


def mean_loss_gradient(model: torch.nn.Module, encoded: Sequence[EncodedSample],
                       pad_token_id: int, *, batch_size: int = 8) -> list[torch.Tensor]:
    """Gradient of the mean answer NLL over `encoded`, per parameter `[1, *param.shape]`."""
    params = trainable_parameters(model)
    device = model_device(model)
    total = [torch.zeros((1, *p.shape), dtype=torch.float32, device=device) for p in params]
    for _, batch in iter_batches(encoded, batch_size, pad_token_id):
        batch = move_batch(batch, device)
        with torch.enable_grad():
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
            loss = mean_answer_nll(logits, batch["labels"]).sum() / len(encoded)
            grads = torch.autograd.grad(loss, params)
        for accumulated, grad in zip(total, grads, strict=True):
            accumulated += grad.float()
    return total


class GradientSketch:
    """Seeded random projection of flattened gradients to `dim` coordinates.

    `project(grads)` maps per-parameter gradients `[batch, *param.shape]` (in a fixed parameter
    order) to `[batch, dim]`; the same seed gives the same projection on every call.
    `block_entries` bounds the random numbers held at once: blocks of `block_entries // dim`
    parameters for the dense kinds, of `block_entries` parameters for the count sketch (few
    large operations rather than many small ones).
    """

    def __init__(self, dim: int, *, seed: int = 0, kind: str = "rademacher",
                 block_entries: int = 1 << 24) -> None:
        if kind not in SKETCH_KINDS:
            raise UnknownNameError("sketch", kind, list(SKETCH_KINDS))
        self.dim = dim
        self.seed = seed
        self.kind = kind
        self.block_size = (block_entries if kind == "countsketch"
                           else max(1, block_entries // dim))

    def _block(self, rows: int, generator: torch.Generator,
               device: torch.device) -> torch.Tensor:
        if self.kind == "gaussian":
            return torch.randn((rows, self.dim), generator=generator, device=device)
        return torch.randint(0, 2, (rows, self.dim), generator=generator,
                             device=device).float() * 2 - 1

    def project(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """`[batch, *param.shape]` per parameter -> `[batch, dim]` float32 (on the CPU)."""
        device = grads[0].device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        batch = grads[0].shape[0]
        out = torch.zeros((batch, self.dim), dtype=torch.float32, device=device)
        for grad in grads:
            flat = grad.reshape(batch, -1).float()
            for start in range(0, flat.shape[1], self.block_size):
                block = flat[:, start: start + self.block_size]
                if self.kind == "countsketch":
                    columns = block.shape[1]
                    buckets = torch.randint(0, self.dim, (columns,), generator=generator,
                                            device=device)
                    signs = torch.randint(0, 2, (columns,), generator=generator,
                                          device=device).float() * 2 - 1
                    out.index_add_(1, buckets, block * signs)
                else:
                    out += block @ self._block(block.shape[1], generator, device)
        if self.kind != "countsketch":
            out = out / self.dim ** 0.5
        return out.cpu()


def gradient_features(model: torch.nn.Module, encoded: Sequence[EncodedSample],
                      pad_token_id: int, *, sketch: GradientSketch | None = None,
                      batch_size: int = 8) -> torch.Tensor:
    """Per-sample gradients `[N, n_params]` (flattened, `sketch=None`) or their sketches
    `[N, dim]`, float32; G = features @ features.T is the (approximate) Gram matrix."""
    rows: list[torch.Tensor | None] = [None] * len(encoded)
    bar = progress_bar(total=len(encoded), desc="per-sample gradients", unit="sample")
    for indices, grads in per_sample_gradients(model, encoded, pad_token_id,
                                               batch_size=batch_size):
        grads = [g.float() for g in grads]
        features = (sketch.project(grads) if sketch is not None
                    else torch.cat([g.reshape(len(indices), -1).cpu() for g in grads], dim=1))
        for row, index in enumerate(indices):
            rows[index] = features[row]
        bar.update(len(indices))
    bar.close()
    return torch.stack(rows)


def retain_feature(model: torch.nn.Module, encoded: Sequence[EncodedSample], pad_token_id: int,
                   *, sketch: GradientSketch | None = None, batch_size: int = 8) -> torch.Tensor:
    """The mean retain loss's gradient as one feature row `[D]`, like `gradient_features`."""
    grads = mean_loss_gradient(model, encoded, pad_token_id, batch_size=batch_size)
    if sketch is not None:
        return sketch.project(grads)[0]
    return torch.cat([g.reshape(-1).cpu() for g in grads])


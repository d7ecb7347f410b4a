"""`attribute` against an independent, slow implementation of the EAP / EAP-IG definitions.

The reference below re-implements tiny GPT-2 and Llama forwards by hand from the HF weights, with
every reader's input built explicitly as (constant part) + (sum of the writers that precede it),
plus a zero tensor of its own whose gradient is exactly dm/d(input of that reader). Each head
applies the norm and its own q/k/v weight slice to its own copy of the residual stream, and a
grouped-query head uses its group's k/v weights, so the per-head split is explicit, not derived
from projection gradients. Scores are then the plain definition
S[u, v] = sum_pos (a_u(baseline) - a_u(clean)) . mean_k g_v(alpha_k), edge by edge.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tiny_models import family_model
from unlearnscope.circuits import attribute
from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.errors import DataError


def _layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _rms_norm(x, weight, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def _gelu_new(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _rope(x, theta):
    # x [batch, pos, head_dim]; rotate pairs (i, i + head_dim/2) by pos * theta^(-2i/head_dim).
    pos, dim = x.shape[1], x.shape[2]
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = torch.arange(pos, dtype=torch.float32)[:, None] * inv_freq[None]
    cos, sin = torch.cos(angles), torch.sin(angles)
    first, second = x[..., : dim // 2], x[..., dim // 2:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def _attend(q, k, v, attention_mask):
    # q, k, v [batch, pos, head_dim] of one head; causal, padded keys masked.
    pos = q.shape[1]
    scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
    allowed = torch.tril(torch.ones(pos, pos, dtype=torch.bool))[None] & attention_mask.bool()[:, None]
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) @ v


class HandWrittenModel:
    """A hand-written forward of a tiny HF GPT-2 or Llama with explicit per-reader inputs."""

    def __init__(self, model):
        self.model = model
        self.gpt2 = model.config.model_type == "gpt2"
        cfg = model.config
        self.n_heads = cfg.n_head if self.gpt2 else cfg.num_attention_heads
        self.n_kv = self.n_heads if self.gpt2 else cfg.num_key_value_heads
        self.d_model = cfg.n_embd if self.gpt2 else cfg.hidden_size
        self.head_dim = self.d_model // self.n_heads
        self.blocks = model.transformer.h if self.gpt2 else model.model.layers
        self.layout = GraphLayout(len(self.blocks), self.n_heads)

    def embed(self, input_ids):
        table = self.model.transformer.wte if self.gpt2 else self.model.model.embed_tokens
        return table.weight[input_ids]

    def _head_qkv_weights(self, block, kind, head):
        """(weight [d_model, head_dim], bias [head_dim] or None) of one head's q, k or v."""
        hd = self.head_dim
        if self.gpt2:
            index = "qkv".index(kind)
            cols = slice(index * self.d_model + head * hd, index * self.d_model + (head + 1) * hd)
            return block.attn.c_attn.weight[:, cols], block.attn.c_attn.bias[cols]
        proj = getattr(block.self_attn, f"{kind}_proj")
        group_head = head if kind == "q" else head // (self.n_heads // self.n_kv)
        return proj.weight[group_head * hd:(group_head + 1) * hd].T, None

    def _norm(self, block, which, x):
        if self.gpt2:
            ln = block.ln_1 if which == 1 else block.ln_2
            return _layer_norm(x, ln.weight, ln.bias, ln.eps)
        ln = block.input_layernorm if which == 1 else block.post_attention_layernorm
        return _rms_norm(x, ln.weight, ln.variance_epsilon)

    def run(self, embeds, input_ids, attention_mask, reader_offsets, replace=None):
        """Forward with `reader_offsets[v]` `[batch, pos, d_model]` added to reader v's input.

        `replace` maps writer indices to tensors that replace those writers' outputs.
        Returns (logits, writers `[batch, n_forward, pos, d_model]`).
        """
        replace = replace or {}
        pos = embeds.shape[1]
        layout = self.layout
        const = torch.zeros_like(embeds)
        if self.gpt2:
            const = const + self.model.transformer.wpe.weight[:pos][None]
        writers = [embeds]
        for layer, block in enumerate(self.blocks):
            head_outputs = []
            for head in range(self.n_heads):
                qkv = {}
                for kind in "qkv":
                    reader = layout.qkv_backward_index(layer, head, kind)
                    x = const + sum(writers) + reader_offsets[reader]
                    weight, bias = self._head_qkv_weights(block, kind, head)
                    value = self._norm(block, 1, x) @ weight
                    qkv[kind] = value + bias if bias is not None else value
                if not self.gpt2:
                    theta = self.model.config.rope_parameters["rope_theta"]
                    qkv["q"], qkv["k"] = _rope(qkv["q"], theta), _rope(qkv["k"], theta)
                z = _attend(qkv["q"], qkv["k"], qkv["v"], attention_mask)
                rows = slice(head * self.head_dim, (head + 1) * self.head_dim)
                out_w = block.attn.c_proj.weight[rows] if self.gpt2 else block.self_attn.o_proj.weight[:, rows].T
                index = layout.head_forward_index(layer, head)
                head_outputs.append(replace.get(index, z @ out_w))
            if self.gpt2:
                const = const + block.attn.c_proj.bias
            writers += head_outputs
            x = const + sum(writers) + reader_offsets[layout.mlp_backward_index(layer)]
            normed = self._norm(block, 2, x)
            if self.gpt2:
                mlp = block.mlp.c_proj(_gelu_new(block.mlp.c_fc(normed)))
            else:
                m = block.mlp
                mlp = m.down_proj(F.silu(m.gate_proj(normed)) * m.up_proj(normed))
            writers.append(replace.get(layout.mlp_forward_index(layer), mlp))
        x = const + sum(writers) + reader_offsets[layout.logits_backward_index]
        if self.gpt2:
            ln = self.model.transformer.ln_f
            final = _layer_norm(x, ln.weight, ln.bias, ln.eps)
        else:
            final = _rms_norm(x, self.model.model.norm.weight, self.model.model.norm.variance_epsilon)
        return final @ self.model.lm_head.weight.T, torch.stack(writers, dim=1)


def _mean_answer_logprob(logits, labels):
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    target = labels[:, 1:]
    mask = target != -100
    picked = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    return (picked * mask).sum(1) / mask.sum(1)


def _paper_prob_diff(logits, labels, clean_logits):
    """The CUD authors' metric as their code writes it: kl_div(p, q, log_target=True) of the
    length-normalized answer probabilities p (current run) and q (clean run)."""
    p = _mean_answer_logprob(logits, labels).exp()
    q = _mean_answer_logprob(clean_logits, labels).exp()
    return F.kl_div(p, q, log_target=True, reduction="none")


def reference_scores(model, batch, *, method, steps, baseline_embeds=None, zero_writers=False,
                     metric=None, alphas=None, positions=None):
    """Edge scores `[batch, n_forward, n_backward]` float64 straight from the definition.

    `zero_writers`: every writer's baseline activation is zero (instead of its activation on
    the baseline embeddings); `metric(logits, labels, clean_logits)`, default the mean answer
    log-probability; `alphas`: the interpolation coefficients, of the input embedding (EAP /
    EAP-IG-inputs) or of each node group's output (EAP-IG-activations), default EAP's 1 and the
    reference's k/steps, k = 0..steps-1 for inputs and 1..steps for activations; `positions`
    `[batch, pos]` bool: the positions the sum runs over (default: all)."""
    ref = HandWrittenModel(model)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    clean = ref.embed(ids).detach()
    base = torch.zeros_like(clean) if baseline_embeds is None else baseline_embeds
    n_backward = ref.layout.n_backward
    zeros = [torch.zeros_like(clean) for _ in range(n_backward)]
    with torch.no_grad():
        clean_logits, writers_clean = ref.run(clean, ids, mask, zeros)
        _, writers_base = ref.run(base, ids, mask, zeros)
    if zero_writers:
        writers_base = torch.zeros_like(writers_clean)
    delta = (writers_base - writers_clean).double()
    if positions is not None:
        delta = delta * positions[:, None, :, None]
    layout = ref.layout
    if method == "EAP-IG-activations":
        # Each node group in turn (input, all heads of a layer, an MLP) is set to
        # alpha * clean + (1 - alpha) * baseline for each alpha.
        if alphas is None:
            alphas = [k / steps for k in range(1, steps + 1)]
        groups = [[0]]
        for layer in range(layout.n_layers):
            groups.append([layout.head_forward_index(layer, h) for h in range(layout.n_heads)])
            groups.append([layout.mlp_forward_index(layer)])
        passes = []
        for group in groups:
            for alpha in alphas:
                mixed = {u: alpha * writers_clean[:, u] + (1 - alpha) * writers_base[:, u]
                         for u in group}
                passes.append((mixed[0] if group == [0] else clean, {} if group == [0] else mixed))
    else:
        if alphas is None:
            alphas = [1.0] if method == "EAP" else [k / steps for k in range(steps)]
        passes = [(base + alpha * (clean - base), {}) for alpha in alphas]
    grads = torch.zeros(clean.shape[0], n_backward, *clean.shape[1:], dtype=torch.float64)
    for embeds, replace in passes:
        offsets = [torch.zeros_like(clean, requires_grad=True) for _ in range(n_backward)]
        logits, _ = ref.run(embeds, ids, mask, offsets, replace)
        if metric is None:
            value = _mean_answer_logprob(logits, labels).sum()
        else:
            value = metric(logits, labels, clean_logits).sum()
        step = torch.autograd.grad(value, offsets, allow_unused=True)
        grads += torch.stack([torch.zeros_like(clean) if g is None else g for g in step],
                             dim=1).double()
    grads /= len(passes)
    scores = torch.zeros(clean.shape[0], ref.layout.n_forward, n_backward, dtype=torch.float64)
    real = ref.layout.real_edge_mask
    for u, v in real.nonzero().tolist():
        scores[:, u, v] = (delta[:, u] * grads[:, v]).sum(dim=(1, 2))
    return scores, ref


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(1, 61, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 8:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("kind", ["gpt2", "llama", "llama-gqa"])
def test_hand_written_forward_matches_hf(kind):
    model = family_model(kind)
    batch = _batch()
    ref = HandWrittenModel(model)
    zeros = [torch.zeros(3, 9, 32) for _ in range(ref.layout.n_backward)]
    with torch.no_grad():
        logits, _ = ref.run(ref.embed(batch["input_ids"]), batch["input_ids"],
                            batch["attention_mask"], zeros)
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[real], expected[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "llama-gqa"])
@pytest.mark.parametrize("method", ["EAP", "EAP-IG-inputs", "EAP-IG-activations"])
def test_attribute_matches_reference_definition(kind, method):
    model = family_model(kind)
    batch = _batch()
    steps = 2 if method == "EAP-IG-activations" else 5
    expected, _ = reference_scores(model, batch, method=method, steps=steps)
    result = attribute(model, batch, method=method, ig_steps=steps, baseline="zero", rule="left")
    assert result.scores.dtype == torch.float32
    assert result.scores.shape == expected.shape
    largest = expected.abs().max().item()
    assert largest > 1e-3
    assert (result.scores.double() - expected).abs().max().item() <= 1e-4 * largest


@pytest.mark.parametrize("kind", ["gpt2", "llama", "llama-gqa"])
@pytest.mark.parametrize(("method", "steps"), [("EAP-IG-inputs", 4), ("EAP-IG-activations", 3)])
def test_midpoint_rule_matches_reference_definition(kind, method, steps):
    """`rule="midpoint"`: the gradients are averaged at alpha = (k + 1/2)/m, k = 0..m-1
    (DESIGN 5.5), by the definition above: one autograd pass per interpolation point (per node
    group for activations), contracted edge by edge."""
    model = family_model(kind)
    batch = _batch()
    midpoints = [(k + 0.5) / steps for k in range(steps)]
    expected, _ = reference_scores(model, batch, method=method, steps=steps, alphas=midpoints)
    result = attribute(model, batch, method=method, ig_steps=steps, baseline="zero",
                       rule="midpoint")
    assert result.scores.shape == expected.shape
    largest = expected.abs().max().item()
    assert largest > 1e-3
    # float32 rounding stays below 1e-6 of the largest score here
    assert (result.scores.double() - expected).abs().max().item() <= 1e-5 * largest
    # the points matter: the left rule's scores are far outside that tolerance
    left = attribute(model, batch, method=method, ig_steps=steps, baseline="zero", rule="left")
    assert (left.scores.double() - expected).abs().max().item() > 1e-2 * largest


@pytest.mark.parametrize("kind", ["gpt2", "llama", "llama-gqa"])
def test_zero_activations_baseline_with_the_paper_metric_matches_reference(kind):
    """The CUD authors' attribution: each node interpolated from zero to its clean output,
    activation differences -a_u(clean), their metric."""
    model = family_model(kind)
    batch = _batch()
    expected, _ = reference_scores(model, batch, method="EAP-IG-activations", steps=2,
                                   zero_writers=True, metric=_paper_prob_diff)
    result = attribute(model, batch, method="EAP-IG-activations", ig_steps=2,
                       baseline="zero-activations", metric="paper_prob_diff")
    largest = expected.abs().max().item()
    assert largest > 1e-4
    assert (result.scores.double() - expected).abs().max().item() <= 1e-4 * largest
    # Against the run on a zero token embedding: in a bias-free Llama that run's writers are
    # all zero too (every norm, projection and MLP maps zero to zero), so the two agree; GPT-2's
    # positional embeddings and biases make them differ.
    zero_run = attribute(model, batch, method="EAP-IG-activations", ig_steps=2,
                         baseline="zero", metric="paper_prob_diff")
    gap = (zero_run.scores - result.scores).abs().max().item()
    assert gap > 0.1 * largest if kind == "gpt2" else gap <= 1e-6 * largest
    torch.testing.assert_close(result.metric_clean, torch.zeros(3))


def test_zero_activations_baseline_needs_activation_interpolation():
    model = family_model("llama")
    for method, backend in (("EAP", "hooks"), ("EAP-IG-inputs", "hooks"),
                            ("EAP-IG-activations", "bridge")):
        with pytest.raises(DataError, match="zero-activations"):
            attribute(model, _batch(), method=method, baseline="zero-activations",
                      backend=backend)


def test_eap_matches_exact_patching_of_single_edges():
    """For a small corruption, EAP predicts the metric change of patching one edge."""
    model = family_model("gpt2")
    batch = _batch()
    ref = HandWrittenModel(model)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    clean = ref.embed(ids).detach()
    torch.manual_seed(2)
    base = clean + 1e-3 * torch.randn_like(clean)
    result = attribute(model, batch, method="EAP", baseline=base)
    zeros = [torch.zeros_like(clean) for _ in range(ref.layout.n_backward)]
    with torch.no_grad():
        clean_logits, writers_clean = ref.run(clean, ids, mask, zeros)
        _, writers_base = ref.run(base, ids, mask, zeros)
        m_clean = _mean_answer_logprob(clean_logits, labels)
        edges = result.real_edge_mask.nonzero().tolist()
        torch.manual_seed(3)
        picks = [edges[i] for i in torch.randperm(len(edges))[:40].tolist()]
        predicted, patched = [], []
        for u, v in picks:
            offsets = list(zeros)
            offsets[v] = writers_base[:, u] - writers_clean[:, u]
            logits, _ = ref.run(clean, ids, mask, offsets)
            patched.append(_mean_answer_logprob(logits, labels) - m_clean)
            predicted.append(result.scores[:, u, v].double())
    patched, predicted = torch.stack(patched), torch.stack(predicted)
    scale = patched.abs().max()
    assert scale > 0
    assert (patched - predicted).abs().max() <= 0.02 * scale

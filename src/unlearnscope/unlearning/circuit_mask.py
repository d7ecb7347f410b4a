"""Circuit-guided unlearning: updates restricted to the parameters of a circuit's components.

A circuit's components are its attention heads and MLP blocks (the nodes `a{l}.h{h}` and
`m{l}` of `circuits.selection.circuit_nodes`; the input and the logits are not components).
The parameters of a component (`models.architecture.model_parts` says where they live):

- head h of layer l: its output features of the q, k and v projections (rows of a Linear's
  weight, columns of GPT-2's Conv1D, and the matching bias entries) and its input features of
  the output projection (columns of a Linear, rows of a Conv1D), `head_dim` each. Under
  grouped-query attention a key/value head belongs to every query head of its group: it is
  updated when any of them is in the circuit. The output projection's bias is shared by the
  heads and stays frozen, as do embeddings, norms and the unembedding.
- MLP l: every parameter of the block's MLP module.

Masks (`CircuitMask`): `hard-anchors`, the union of the top-n pruned circuits of the run's
hard anchor samples (`anchors.json` `hard`); `batch`, per optimizer step the union of the
circuits of the step's forget samples; `random`, a control of randomly chosen components
(seeded) with the same number of query heads, key/value heads and MLPs as the hard-anchor
mask, hence the same parameter count.

`MaskedUpdates` enforces a mask in the trainer: masked gradient entries are zeroed (before
clipping, so the clip norm sees only updated entries) or dropped (`grad = None`, which AdamW
skips); partially updated parameters are copied before the optimizer step and their masked
entries written back after it, so neither weight decay nor Adam's momentum moves them: masked
entries stay bit-exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from unlearnscope.anchors.sets import read_anchors
from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.selection import circuit_nodes, edge_count
from unlearnscope.circuits.store import CircuitStore
from unlearnscope.circuits.ungroup import repeat_kv_heads
from unlearnscope.errors import DataError, UnknownNameError
from unlearnscope.layout import HEADER_FILE, anchors_file, store_folder
from unlearnscope.models.architecture import ModelParts, model_parts

CIRCUIT_MASKS = ("hard-anchors", "batch", "random")


@dataclass(frozen=True)
class Components:
    """Attention heads `[n_layers, n_heads]` bool and MLP blocks `[n_layers]` bool."""

    heads: torch.Tensor
    mlps: torch.Tensor

    def union(self, other: Components) -> Components:
        return Components(self.heads | other.heads, self.mlps | other.mlps)

    @property
    def n_heads(self) -> int:
        return int(self.heads.sum())

    @property
    def n_mlps(self) -> int:
        return int(self.mlps.sum())


def circuit_components(in_graph: torch.Tensor, layout: GraphLayout) -> Components:
    """The heads and MLPs that are nodes of the circuits `in_graph` `[..., n_forward,
    n_backward]` bool, united over the leading dimensions."""
    nodes = circuit_nodes(in_graph, layout).reshape(-1, layout.n_forward).any(dim=0)
    per_layer = nodes[1:].view(layout.n_layers, layout.n_heads + 1)
    return Components(per_layer[:, : layout.n_heads].clone(), per_layer[:, layout.n_heads].clone())


def sample_components(in_graph: torch.Tensor, layout: GraphLayout) -> Components:
    """Per-sample components of circuits `[n, n_forward, n_backward]`: heads `[n, n_layers,
    n_heads]`, MLPs `[n, n_layers]`."""
    nodes = circuit_nodes(in_graph, layout)[:, 1:].view(len(in_graph), layout.n_layers,
                                                         layout.n_heads + 1)
    return Components(nodes[..., : layout.n_heads].clone(), nodes[..., layout.n_heads].clone())


def kv_heads(heads: torch.Tensor, groups: int) -> torch.Tensor:
    """Key/value heads touched by query heads `[..., n_heads]` bool: `[..., n_heads // groups]`,
    True where any query head of the group is."""
    return heads.view(*heads.shape[:-1], -1, groups).any(dim=-1)


def _output_dim(module: nn.Module) -> int:
    """The weight dimension that indexes a projection's output features."""
    if isinstance(module, Conv1D):
        return 1
    if isinstance(module, nn.Linear):
        return 0
    raise DataError(f"circuit masks know Linear and Conv1D projections, not "
                    f"{type(module).__name__}")


def _out_features(module: nn.Module) -> int:
    return module.weight.shape[_output_dim(module)]


def _qkv_features(parts: ModelParts, layer: int) -> list[list[tuple[int, torch.Tensor]]]:
    """Per query head of `layer`: `(module index, output feature indices)` of its q, k and v
    projections, found by passing feature ids through the block's own `split_qkv_grad`."""
    block = parts.blocks[layer]
    offsets = np.cumsum([0] + [_out_features(m) for m in block.qkv_modules])
    ids = [torch.arange(offsets[i], offsets[i + 1])[None, None, :]
           for i in range(len(block.qkv_modules))]
    if len(ids) == 3 and parts.kv_groups > 1:
        ids = [ids[0], *(repeat_kv_heads(t, parts.n_kv_heads, parts.kv_groups) for t in ids[1:])]
    per_head = block.split_qkv_grad(ids)[0, 0]  # [3, n_heads, head_dim] of feature ids
    out = []
    for head in range(parts.n_heads):
        features = per_head[:, head].flatten()
        module = torch.as_tensor(np.searchsorted(offsets, features.numpy(), side="right") - 1)
        out.append([(int(m), features[module == m] - int(offsets[m])) for m in module.unique()])
    return out


def _mark(masks: dict[str, torch.Tensor], names: dict[int, str], param: torch.Tensor | None,
          dim: int, features: torch.Tensor | None = None) -> None:
    """Mark `features` along `dim` of `param` (all entries when None) as updated."""
    if param is None:
        return
    mask = masks.setdefault(names[id(param)], torch.zeros(param.shape, dtype=torch.bool))
    if features is None:
        mask[...] = True
    else:
        mask.index_fill_(dim, features, True)


def parameter_masks(model: nn.Module, components: Components) -> dict[str, torch.Tensor]:
    """`{parameter name: bool mask of its shape}`, True on the entries of `components` (see
    the module docstring); parameters without any updated entry are left out."""
    parts = model_parts(model)
    if tuple(components.heads.shape) != (parts.n_layers, parts.n_heads):
        raise DataError(f"circuit components of {tuple(components.heads.shape)} heads do not fit "
                        f"the model's {parts.n_layers} layers x {parts.n_heads} heads")
    names = {id(p): name for name, p in model.named_parameters()}
    masks: dict[str, torch.Tensor] = {}
    for layer, block in enumerate(parts.blocks):
        if components.mlps[layer]:
            for param in block.mlp.parameters():
                _mark(masks, names, param, 0)
        heads = components.heads[layer].nonzero().flatten().tolist()
        if not heads:
            continue
        per_head = _qkv_features(parts, layer)
        o_dim = 1 - _output_dim(block.o_proj)
        for head in heads:
            for index, features in per_head[head]:
                module = block.qkv_modules[index]
                dim = _output_dim(module)
                _mark(masks, names, module.weight, dim, features)
                _mark(masks, names, getattr(module, "bias", None), 0, features)
            columns = torch.arange(head * parts.head_dim, (head + 1) * parts.head_dim)
            _mark(masks, names, block.o_proj.weight, o_dim, columns)
    return masks


def parameter_count(masks: dict[str, torch.Tensor]) -> int:
    """Number of updated parameter entries of `parameter_masks`."""
    return int(sum(int(m.sum()) for m in masks.values()))


def random_components(like: Components, groups: int, seed: int) -> Components:
    """Random heads and MLPs (seeded) with as many MLPs, query heads and key/value heads as
    `like` (query heads of `groups` share a key/value head): one query head from each of
    the drawn key/value groups, the rest drawn from the other query heads of those groups."""
    n_layers, n_heads = like.heads.shape
    rng = np.random.default_rng(seed)
    mlps = torch.zeros(n_layers, dtype=torch.bool)
    mlps[torch.as_tensor(rng.choice(n_layers, like.n_mlps, replace=False))] = True
    n_kv = int(kv_heads(like.heads, groups).sum())
    flat = torch.zeros(n_layers * n_heads, dtype=torch.bool)
    groups_drawn = rng.choice(n_layers * n_heads // groups, n_kv, replace=False)
    firsts = groups_drawn * groups + rng.integers(0, groups, size=n_kv)
    flat[torch.as_tensor(firsts)] = True
    if like.n_heads > n_kv:
        others = np.setdiff1d((groups_drawn[:, None] * groups + np.arange(groups)).ravel(),
                              firsts)
        flat[torch.as_tensor(rng.choice(others, like.n_heads - n_kv, replace=False))] = True
    return Components(flat.view(n_layers, n_heads), mlps)


@dataclass
class CircuitMask:
    """The components a run may update: one fixed set, or (`per_sample`, `batch` mode) the
    components of each forget sample `[n_forget, ...]`, united over a step's samples."""

    kind: str
    fixed: Components | None
    per_sample: Components | None
    top_n: int
    details: dict

    def for_step(self, forget_indices: Sequence[int]) -> Components:
        if self.per_sample is None:
            return self.fixed
        index = torch.as_tensor(list(forget_indices), dtype=torch.long)
        return Components(self.per_sample.heads[index].any(dim=0),
                          self.per_sample.mlps[index].any(dim=0))

    def reachable(self) -> Components:
        """Every component some step may update."""
        if self.per_sample is None:
            return self.fixed
        return Components(self.per_sample.heads.any(dim=0), self.per_sample.mlps.any(dim=0))


def _open_store(circuits: str | Path) -> tuple[CircuitStore, Path | None]:
    """The store and, when `circuits` is a run folder, that folder."""
    path = Path(circuits)
    store = store_folder(path)
    if (store / HEADER_FILE).is_file():
        return CircuitStore.open(store), None if store == path else path
    raise DataError("not a circuit store or a run folder with circuits/", source=str(path))


def build_circuit_mask(kind: str, circuits: str | Path, model: nn.Module, *,
                       forget_ids: Sequence[str], top_n: float = 0.05,
                       anchors: str | Path | None = None, seed: int = 0) -> CircuitMask:
    """The mask of `kind` (`CIRCUIT_MASKS`) from the circuit store `circuits` (a store folder,
    or a run folder holding `circuits/`); hard anchors from `anchors` (default: the run
    folder's `anchors/anchors.json`); circuits are each sample's top-`top_n` edges (a count or
    a fraction of the edges), pruned."""
    if kind not in CIRCUIT_MASKS:
        raise UnknownNameError("circuit mask", kind, list(CIRCUIT_MASKS))
    store, run_dir = _open_store(circuits)
    layout = store.layout
    parts = model_parts(model)
    if (layout.n_layers, layout.n_heads) != (parts.n_layers, parts.n_heads):
        raise DataError(f"the circuits have {layout.n_layers} layers x {layout.n_heads} heads, "
                        f"the model {parts.n_layers} x {parts.n_heads}",
                        source=str(store.directory / HEADER_FILE))
    n = edge_count(top_n, layout.n_edges)
    details = {"kind": kind, "circuits": str(store.directory), "top_n": n}
    if kind == "batch":
        per_sample = sample_components(store.circuits(list(forget_ids), "topn", n=n), layout)
        return CircuitMask(kind, None, per_sample, n, details)
    if anchors is None:
        if run_dir is None:
            raise DataError(f"circuit mask '{kind}' needs the hard anchors: give an anchors "
                            "file, or a run folder holding circuits/ and anchors/",
                            field="mask_anchors")
        anchors = anchors_file(run_dir)
    hard = read_anchors(anchors).hard
    fixed = circuit_components(store.circuits(hard, "topn", n=n), layout)
    details.update(anchors=str(anchors), hard_anchors=list(hard))
    if kind == "random":
        details["like_hard_anchors"] = {"heads": fixed.n_heads, "mlps": fixed.n_mlps}
        fixed = random_components(fixed, parts.kv_groups, seed)
        details["seed"] = seed
    return CircuitMask(kind, fixed, None, n, details)


class MaskedUpdates:
    """Keeps every parameter entry outside the step's components unchanged (module docstring).

    Construct before the optimizer: parameters no step can update stop requiring gradients.
    Per step: `before_step(components)` after the backward passes and before clipping,
    `after_step()` after `optimizer.step()`.
    """

    def __init__(self, model: nn.Module, mask: CircuitMask) -> None:
        self.model = model
        self.mask = mask
        self.params = dict(model.named_parameters())
        reachable = parameter_masks(model, mask.reachable())
        for name, param in self.params.items():
            if name not in reachable:
                param.requires_grad_(False)
        self.trainable = [n for n, p in self.params.items() if p.requires_grad]
        if not self.trainable:
            raise DataError(f"circuit mask '{mask.kind}' leaves no trainable parameter (an "
                            "empty circuit, or none of its components is trained by the "
                            "method)", field="circuit_mask")
        self._saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.last_count = 0

    def before_step(self, components: Components) -> None:
        masks = parameter_masks(self.model, components)
        self._saved = []
        self.last_count = 0
        for name in self.trainable:
            param = self.params[name]
            update = masks.get(name)
            if update is None:
                param.grad = None
                continue
            update = update.to(param.device)
            self.last_count += int(update.sum())
            if bool(update.all()):
                continue
            if param.grad is not None:
                param.grad.masked_fill_(~update, 0)
            self._saved.append((param, update, param.detach().clone()))

    @torch.no_grad()
    def after_step(self) -> None:
        for param, update, saved in self._saved:
            param.copy_(torch.where(update, param, saved))
        self._saved = []

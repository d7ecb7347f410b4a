"""CUD: circuit-based unlearning difficulty (DESIGN 5.6).

Given the circuit vectors of the easy and hard anchor sets, C_E and C_H, and a sample's circuit
vector c: s_E = sim(c, C_E), s_H = sim(c, C_H) and

    CUD = (1 - s_E) / ((1 - s_E) + (1 - s_H))   in [0, 1], 0.5 when both distances are 0.

Higher = closer to the hard anchors = harder to unlearn.

Circuit vectors live on the graph's real edges (`[..., n_edges]`, `circuits.selection` order).
A circuit is the top-n edges by |score| (with a `GraphLayout`: the reference's top-n or greedy
selection, then pruning of dangling nodes unless `prune=False`); its vector is the binary
in-circuit mask, or mask * score (`weighted`). An anchor set's circuit is selected from its
aggregate: the edge scores averaged over the set's samples. Per-method anchors take the set a
single method's vote gives; the method-averaged anchor (`anchor_method="mean"`) averages the
per-method aggregates (each method's set weighs the same, however many samples it shares with
the others) and selects once from that average.

Two scorers: `cud` (our defaults, every option free) and `cud_paper`, the CUD authors'
configuration (`PAPER_PRESET`), so both can sit side by side in one score table. What their
code (github.com/chengjiali/Explain-Sample-Unlearnability) computes, and `cud_paper` with it:
per-sample and per-anchor-set scores by EAP-IG-activations, 5 steps, every node interpolated
from zero activations (`baseline="zero-activations"`) on the metric
`circuits.metrics.paper_prob_diff`; the reference's greedy search to 75 edges with no pruning
afterwards; binary vectors; cosine similarity; d_E / (d_E + d_H). The anchors are one easy and
one hard set (`anchor_method="combined"` by default) whose circuit is the mean of its samples'
scores.

Cheaper approximations of CUD (`CUD_PROXIES`, the scorer's `proxy` option; `bench/cud_proxy.py`
measures each against full CUD): fewer gradients (`eap`: EAP's one; `ig2`: EAP-IG with 2 steps),
node-level circuits (`nodes`: one score per writer, `circuits.nodes`; the circuit is the top
`node_top_n` writers by |score|), the sum over answer positions only (`answer_positions`), and a
seeded random sketch of the circuit vectors (`sketch256`: cosine on `sketch_dim` = 256
coordinates, `anchors.gradient_sketch.GradientSketch`, `rademacher`; E[sketch . sketch] = c . c', an
error of order |c| |c'| / sqrt(dim), which preserves cosine similarity approximately).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from unlearnscope.anchors.gradient_sketch import GradientSketch
from unlearnscope.anchors.sets import read_anchors
from unlearnscope.circuits import attribute, graph_layout
from unlearnscope.circuits.attribution import check_variant
from unlearnscope.circuits.compute import ATTRIBUTION_DEFAULTS, ATTRIBUTION_PRESETS
from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.metrics import get_metric
from unlearnscope.circuits.nodes import node_scores_from_edges
from unlearnscope.circuits.plan import check_options
from unlearnscope.circuits.selection import (
    circuit_vector,
    edge_count,
    edge_matrix,
    edge_vector,
    select,
)
from unlearnscope.circuits.store import (
    ATTRIBUTION_KEYS,
    CircuitStore,
    check_attribution,
)
from unlearnscope.data import load_samples
from unlearnscope.data.sample import Sample
from unlearnscope.data.tokenize import (
    EncodedSample,
    iter_batches,
    pad_id,
)
from unlearnscope.errors import DataError, UnknownNameError
from unlearnscope.layout import HEADER_FILE, store_folder
from unlearnscope.models.inputs import encode_for
from unlearnscope.runs import check_finite
from unlearnscope.scoring.base import Scorer, register_scorer

SIMILARITIES = ("cosine", "jaccard", "hamming")
VECTORS = ("binary", "weighted")
SELECTIONS = ("topn", "greedy")
# the CUD authors' configuration: every option `cud_paper` fixes
PAPER_PRESET = {**ATTRIBUTION_PRESETS["paper"], "selection": "greedy", "top_n": 75,
                "prune": False, "vector": "binary", "similarity": "cosine"}
# Cheaper approximations of CUD (see the module docstring): the `cud` scorer options each sets.
CUD_PROXIES: dict[str, dict[str, Any]] = {
    "eap": {"method": "EAP"},
    "ig2": {"ig_steps": 2},
    "nodes": {"level": "nodes"},
    "answer_positions": {"positions": "answer"},
    "sketch256": {"sketch_dim": 256},
}
# the values of the options a proxy sets when the scorer is given none
_PROXY_OPTION_DEFAULTS = {"method": None, "ig_steps": None, "level": "edges", "positions": "all",
                          "sketch_dim": None}


def similarity(vectors: torch.Tensor, anchor: torch.Tensor, kind: str = "cosine"
               ) -> torch.Tensor:
    """Similarity of each row of `vectors` `[n, E]` to `anchor` `[E]`: `[n]` float64.

    - `cosine`: v . a / (|v| |a|); two zero vectors are identical (1), a zero vector and a
      non-zero one share no direction (0).
    - `jaccard`: sum min(|v|, |a|) / sum max(|v|, |a|): |intersection| / |union| on binary
      vectors, its weighted generalization otherwise; 1 for two zero vectors.
    - `hamming`: 1 - fraction of edges where the masks (v != 0, a != 0) differ.
    """
    v, a = vectors.double(), anchor.double()[None, :]
    if kind == "cosine":
        norms = v.norm(dim=1) * a.norm()
        both_zero = (v.norm(dim=1) == 0) & (a.norm() == 0)
        cosine = (v * a).sum(dim=1) / norms.clamp(min=torch.finfo(torch.float64).tiny)
        return torch.where(both_zero, torch.ones_like(cosine), cosine.clamp(-1.0, 1.0))
    if kind == "jaccard":
        low = torch.minimum(v.abs(), a.abs()).sum(dim=1)
        high = torch.maximum(v.abs(), a.abs()).sum(dim=1)
        return torch.where(high == 0, torch.ones_like(high), low / high.clamp(min=1e-300))
    if kind == "hamming":
        return 1.0 - ((v != 0) != (a != 0)).double().mean(dim=1)
    raise UnknownNameError("similarity", kind, list(SIMILARITIES))


def cud_from_similarities(s_easy: torch.Tensor, s_hard: torch.Tensor) -> torch.Tensor:
    """CUD `[n]` from the similarities to the easy and hard anchors `[n]` (0.5 where both
    distances are 0)."""
    d_easy = (1.0 - s_easy.double()).clamp(min=0.0)
    d_hard = (1.0 - s_hard.double()).clamp(min=0.0)
    total = d_easy + d_hard
    return torch.where(total == 0, torch.full_like(total, 0.5), d_easy / total.clamp(min=1e-300))


def cud(vectors: torch.Tensor, easy_vector: torch.Tensor, hard_vector: torch.Tensor,
        kind: str = "cosine") -> torch.Tensor:
    """CUD of circuit vectors `[n, E]` against the anchor circuit vectors `[E]`: `[n]`."""
    return cud_from_similarities(similarity(vectors, easy_vector, kind),
                                 similarity(vectors, hard_vector, kind))


def circuit_vectors(edge_scores: torch.Tensor, top_n: float, *, vector: str = "binary",
                    layout: GraphLayout | None = None, selection: str = "topn",
                    prune: bool = True) -> torch.Tensor:
    """Circuit vectors `[n, E]` float32 of edge scores `[n, E]`, as a mask or mask * score.

    With `layout`: the reference's `selection` (`topn` or `greedy`) of top_n edges, then
    pruning of dangling nodes when `prune`; without: the top-n edges by |score|.
    """
    if vector not in VECTORS:
        raise UnknownNameError("circuit vector", vector, list(VECTORS))
    if selection not in SELECTIONS:
        raise UnknownNameError("circuit selection", selection, list(SELECTIONS))
    n = edge_count(top_n, edge_scores.shape[-1])
    scores = edge_scores.float()
    if layout is not None:
        matrix = edge_matrix(scores, layout)
        mask = select(matrix, layout, selection, n=n, prune_nodes=prune)
        return circuit_vector(mask, layout, matrix if vector == "weighted" else None)
    if selection != "topn":
        raise DataError(f"selection '{selection}' needs the graph layout", field="selection")
    top = scores.abs().topk(n, dim=-1).indices
    mask = torch.zeros_like(scores).scatter_(-1, top, 1.0)
    return mask * scores if vector == "weighted" else mask


def anchor_aggregate(sets: Sequence[torch.Tensor]) -> torch.Tensor:
    """One anchor's aggregate edge scores `[E]`: the mean over sets (methods) of each set's
    mean over its samples `[n_m, E]`."""
    if not sets or any(len(s) == 0 for s in sets):
        raise DataError("an anchor set has no samples")
    return torch.stack([s.double().mean(dim=0) for s in sets]).mean(dim=0)


def cud_from_aggregates(sample_edge_scores: torch.Tensor, easy_aggregate: torch.Tensor,
                        hard_aggregate: torch.Tensor, *, top_n: float = 0.05,
                        similarity: str = "cosine", vector: str = "binary",
                        layout: GraphLayout | None = None, selection: str = "topn",
                        prune: bool = True, sketch_dim: int | None = None,
                        sketch_seed: int = 0) -> torch.Tensor:
    """CUD `[n]` of samples' edge scores `[n, E]` against anchor aggregates `[E]`.

    `sketch_dim`: the similarity is taken between seeded random sketches of the circuit
    vectors (`[n, sketch_dim]`, `GradientSketch` with `sketch_seed`), cosine only.
    """
    def vectors(scores: torch.Tensor) -> torch.Tensor:
        return circuit_vectors(scores, top_n, vector=vector, layout=layout, selection=selection,
                               prune=prune)

    anchors = vectors(torch.stack([easy_aggregate, hard_aggregate]).float())
    samples = vectors(sample_edge_scores)
    if sketch_dim is not None:
        if similarity != "cosine":
            raise DataError(f"a sketch preserves inner products, so it needs similarity "
                            f"'cosine', got '{similarity}'", field="similarity")
        sketch = GradientSketch(int(sketch_dim), seed=sketch_seed)
        anchors, samples = sketch.project([anchors]), sketch.project([samples])
    return cud(samples, anchors[0], anchors[1], similarity)


@register_scorer
class CUD(Scorer):
    """CUD of each sample against anchor circuits (see the module docstring).

    Options: `anchors` (an `anchors.json` or its folder; required), `circuits` (a run folder of
    `unlearnscope circuits` or its store; without it circuits are attributed on the fly),
    `similarity`, `vector`, `top_n` (count or fraction of edges), `selection` (`topn` or
    `greedy`), `prune`, `anchor_method` (a method name, `mean`, or `combined` for the overall
    vote), `anchor_data` (dataset spec of the anchor samples for on-the-fly circuits; default:
    the anchors file's `data`, else the samples being scored), and the attribution settings
    `method`, `ig_steps`, `baseline`, `rule`, `metric`: with `circuits`, those given must match
    the store's header (the config reports the store's), else they default to
    `ATTRIBUTION_DEFAULTS`. The approximations (module docstring): `level` (`edges` or `nodes`,
    the circuit then the top `node_top_n` writers; from a store, each writer's edge scores
    summed), `positions` (`all` or `answer`, on-the-fly circuits only), `sketch_dim` and
    `sketch_seed`; `proxy` (a name of `CUD_PROXIES`) sets the options it names, which must then
    be left unset or given the proxy's value.
    """

    name = "cud"
    higher_is_harder = True
    uses_anchors = True

    def __init__(self, anchors: str | None = None, circuits: str | None = None, *,
                 similarity: str = "cosine", vector: str = "binary", top_n: float = 0.05,
                 selection: str = "topn", prune: bool = True, anchor_method: str = "mean",
                 method: str | None = None, ig_steps: int | None = None,
                 baseline: str | None = None, rule: str | None = None,
                 metric: str | None = None, anchor_data: str | None = None,
                 data_dir: str | None = None, level: str = "edges", positions: str = "all",
                 node_top_n: float = 0.25, sketch_dim: int | None = None, sketch_seed: int = 0,
                 proxy: str | None = None) -> None:
        if anchors is None:
            raise DataError(f"the {self.name} scorer needs an anchors file", field="anchors")
        chosen = {"method": method, "ig_steps": ig_steps, "level": level,
                  "positions": positions, "sketch_dim": sketch_dim}
        if proxy is not None:
            if proxy not in CUD_PROXIES:
                raise UnknownNameError("CUD proxy", proxy, list(CUD_PROXIES))
            for key, value in CUD_PROXIES[proxy].items():
                if chosen[key] not in (_PROXY_OPTION_DEFAULTS[key], value):
                    raise DataError(f"proxy '{proxy}' sets {key}={value!r}, got "
                                    f"{key}={chosen[key]!r}", field=key)
                chosen[key] = value
        method, ig_steps, level, positions, sketch_dim = chosen.values()
        if level == "nodes" and selection != "topn":
            raise DataError(f"node-level circuits are the top writers, selection 'topn', got "
                            f"'{selection}'", field="selection")
        if sketch_dim is not None and similarity != "cosine":
            raise DataError(f"a sketch needs similarity 'cosine', got '{similarity}'",
                            field="similarity")
        if similarity not in SIMILARITIES:
            raise UnknownNameError("similarity", similarity, list(SIMILARITIES))
        if vector not in VECTORS:
            raise UnknownNameError("circuit vector", vector, list(VECTORS))
        if selection not in SELECTIONS:
            raise UnknownNameError("circuit selection", selection, list(SELECTIONS))
        given = {key: value for key, value in zip(ATTRIBUTION_KEYS, (method, ig_steps, baseline,
                                                                     rule, metric), strict=True)
                 if value is not None}
        self.store = CircuitStore.open(store_folder(circuits)) if circuits else None
        if self.store is not None:
            check_attribution(self.store.header, given,
                              source=str(self.store.directory / HEADER_FILE),
                              needed_by=f"the {self.name} scorer")
            attribution = {key: self.store.header.get(key) for key in ATTRIBUTION_KEYS}
            if positions != "all":
                raise DataError(f"positions '{positions}' needs circuits attributed on the fly "
                                "(a store holds the sum over every position)", field="positions")
        else:
            attribution = {**ATTRIBUTION_DEFAULTS, **given}
            check_options(attribution["method"], attribution["rule"], attribution["ig_steps"])
            check_variant(level, positions, attribution["method"], "hooks")
            get_metric(attribution["metric"])
        super().__init__(anchors=anchors, circuits=circuits, similarity=similarity,
                         vector=vector, top_n=top_n, selection=selection, prune=prune,
                         anchor_method=anchor_method, **attribution, anchor_data=anchor_data,
                         data_dir=data_dir, level=level, positions=positions,
                         node_top_n=node_top_n, sketch_dim=sketch_dim, sketch_seed=sketch_seed,
                         proxy=proxy)
        self.anchors = read_anchors(anchors)
        self.anchor_sets = self.anchors.sets_for(anchor_method)
        self._aggregates: tuple[torch.Tensor, torch.Tensor] | None = None

    def _attribute(self, model, tokenizer, encoded: Sequence[EncodedSample], batch_size: int
                   ) -> torch.Tensor:
        """Edge scores `[n, E]` (node scores `[n, n_forward]` at level `nodes`) of encoded
        samples, attributed on the fly."""
        layout = graph_layout(model)
        nodes = self.options["level"] == "nodes"
        out = torch.empty((len(encoded), layout.n_forward if nodes else layout.n_edges),
                          dtype=torch.float32)
        for indices, batch in iter_batches(encoded, batch_size, pad_id(tokenizer)):
            result = attribute(model, batch, **{k: self.options[k] for k in ATTRIBUTION_KEYS},
                               level=self.options["level"], positions=self.options["positions"])
            out[indices] = (result.scores if nodes else edge_vector(result.scores, layout)).cpu()
        return out

    def _stored(self, ids: Sequence[str]) -> torch.Tensor:
        """The store's edge scores `[n, E]` of `ids` (node scores `[n, n_forward]` at level
        `nodes`)."""
        scores = self.store.edge_scores(list(ids))
        if self.options["level"] == "nodes":
            return node_scores_from_edges(scores, self.store.layout)
        return scores

    def _cud_options(self, layout: GraphLayout) -> dict[str, Any]:
        """`cud_from_aggregates` options: node-level circuits are the top `node_top_n` writers."""
        options = {k: self.options[k] for k in ("top_n", "similarity", "vector", "selection",
                                                "prune", "sketch_dim", "sketch_seed")}
        if self.options["level"] == "nodes":
            return {**options, "top_n": self.options["node_top_n"], "layout": None}
        return {**options, "layout": layout}

    def _anchor_samples(self, ids: set[str], samples: Sequence[Sample]) -> list[Sample]:
        spec = self.options["anchor_data"] or self.anchors.diagnostics.get("data")
        pool = load_samples(spec, data_dir=self.options["data_dir"]) if spec else samples
        found = [s for s in pool if s.id in ids]
        missing = sorted(ids - {s.id for s in found})
        if missing:
            raise DataError(f"anchor samples {', '.join(missing[:10])} are not among "
                            f"{'the samples of ' + spec if spec else 'the scored samples'}; "
                            f"give the {self.name} scorer `circuits` or `anchor_data`",
                            field="anchor_data")
        return found

    def _anchor_edge_scores(self, model, tokenizer, samples: Sequence[Sample], batch_size: int
                            ) -> dict[str, torch.Tensor]:
        ids = sorted({i for lists in self.anchor_sets.values() for i in lists["easy"] +
                      lists["hard"]})
        if self.store is not None:
            scores = self._stored(ids)
        else:
            anchor_samples = self._anchor_samples(set(ids), samples)
            encoded = encode_for(model, tokenizer, anchor_samples).samples
            scores = self._attribute(model, tokenizer, encoded, batch_size)
            ids = [s.id for s in anchor_samples]
        return dict(zip(ids, scores, strict=True))

    def anchor_aggregates(self, model, tokenizer, samples: Sequence[Sample], *,
                          batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """Aggregate edge scores `[E]` of the easy and the hard anchor, computed once."""
        if self._aggregates is None:
            by_id = self._anchor_edge_scores(model, tokenizer, samples, batch_size)
            self._aggregates = tuple(
                anchor_aggregate([torch.stack([by_id[i] for i in lists[side]])
                                  for lists in self.anchor_sets.values()])
                for side in ("easy", "hard"))
        return self._aggregates

    def score(self, model, tokenizer, samples: Sequence[Sample],
              encoded: Sequence[EncodedSample], *, batch_size: int) -> torch.Tensor:
        if self.store is not None:
            edge_scores = self._stored([s.id for s in samples])
            layout = self.store.layout
        else:
            edge_scores = self._attribute(model, tokenizer, encoded, batch_size)
            layout = graph_layout(model)
        easy, hard = self.anchor_aggregates(model, tokenizer, samples, batch_size=batch_size)
        values = cud_from_aggregates(edge_scores, easy, hard, **self._cud_options(layout))
        check_finite(values, f"{self.name} scores")
        return values

    def config(self) -> dict[str, Any]:
        return {**super().config(), "uses_anchors": self.uses_anchors,
                "anchor_sets": self.anchor_sets, "anchor_fit_ids": list(self.anchors.fit_ids)}


@register_scorer
class PaperCUD(CUD):
    """CUD in the CUD authors' configuration (`PAPER_PRESET`, see the module docstring).

    Options: `anchors`, `circuits` (a store computed with the paper's attribution settings,
    e.g. `unlearnscope circuits --preset paper`; a store with other settings is refused,
    naming them), `anchor_method` (default `combined`: one easy and one hard set, as the
    authors'), `anchor_data`, `data_dir`. The options of `PAPER_PRESET` may be given only with
    the paper's values.
    """

    name = "cud_paper"

    def __init__(self, anchors: str | None = None, circuits: str | None = None, *,
                 anchor_method: str = "combined", anchor_data: str | None = None,
                 data_dir: str | None = None, **preset: Any) -> None:
        for key, value in preset.items():
            if key not in PAPER_PRESET:
                raise DataError(f"unknown option '{key}' of the {self.name} scorer", field=key)
            if value != PAPER_PRESET[key]:
                raise DataError(f"the {self.name} scorer fixes {key}={PAPER_PRESET[key]!r} "
                                f"(the paper's); for {key}={value!r} use the cud scorer",
                                field=key)
        super().__init__(anchors, circuits, anchor_method=anchor_method, anchor_data=anchor_data,
                         data_dir=data_dir, **PAPER_PRESET)

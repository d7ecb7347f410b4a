"""Circuits: the EAP graph, per-sample EAP / EAP-IG attribution, selection, analysis, storage."""

from unlearnscope.circuits.attribution import attribute
from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.plan import AttributionResult, graph_layout

__all__ = ["AttributionResult", "GraphLayout", "attribute", "graph_layout"]

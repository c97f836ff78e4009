"""GraphML and GEXF (networkx readwrite). Neither can hold None or graph attributes: the core
attributes (`NODE_ATTRS` / `EDGE_ATTRS`) are simply left out when None and come back as
None; extra attributes that are None, and the graph attributes, ride along as one JSON string on
the graph, so the files read back without loss. Booleans are written ``true`` / ``false``.
"""

from __future__ import annotations

import io
import json
from typing import Any

import networkx as nx
from networkx.readwrite.graphml import GraphMLWriter

from circuitkit.circuit.core import EDGE_ATTRS, NODE_ATTRS, Circuit
from circuitkit.circuit.io.common import check_header, graph_attrs, header, rebuild
from circuitkit.errors import InputError

_NONE_KEY = "_none_attrs"  # older files listed None-valued attributes on each element; still read

_GRAPH_KEY = "circuitkit_graph"  # graph attributes as JSON (GEXF keeps no graph attributes)


def _flatten(circuit: Circuit) -> nx.MultiDiGraph:
    """A copy without None values and with the graph attributes, plus the extra attributes that
    are None (``{"nodes": {id: [keys]}, "edges": {id: [keys]}}``), as one JSON string."""
    flat = nx.MultiDiGraph()
    nones: dict[str, dict[str, list[str]]] = {"nodes": {}, "edges": {}}

    def strip(data: dict[str, Any], core: tuple[str, ...], where: dict[str, list[str]], key: str) -> dict[str, Any]:
        extra_nones = sorted(k for k, v in data.items() if v is None and k not in core)
        if extra_nones:
            where[key] = extra_nones
        return {k: v for k, v in data.items() if v is not None}

    for node, data in circuit.graph.nodes(data=True):
        flat.add_node(node, **strip(data, NODE_ATTRS, nones["nodes"], node))
    for u, v, k, data in circuit.graph.edges(keys=True, data=True):
        flat.add_edge(u, v, key=k, **strip(data, EDGE_ATTRS, nones["edges"], k))
    found = {**header(), "graph": graph_attrs(circuit)}
    if nones["nodes"] or nones["edges"]:
        found["none_attrs"] = nones
    flat.graph[_GRAPH_KEY] = json.dumps(found)
    return flat


def _unflatten(graph: nx.MultiDiGraph, where: str, drop_node: tuple[str, ...] = (), drop_edge: tuple[str, ...] = ()) -> Circuit:
    raw = graph.graph.get(_GRAPH_KEY) or graph.graph.get("name")
    try:
        found = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        found = None
    check_header(found, where)
    nones = found.get("none_attrs", {"nodes": {}, "edges": {}})
    out = nx.MultiDiGraph()
    out.graph.update(found.get("graph", {}))

    def restore(data: dict[str, Any], drop: tuple[str, ...], core: tuple[str, ...], extra_nones: list[str]) -> dict[str, Any]:
        data = {k: v for k, v in data.items() if k not in drop}
        for key in [*core, *extra_nones, *filter(None, str(data.pop(_NONE_KEY, "")).split(","))]:
            data.setdefault(key, None)
        return data

    for node, data in graph.nodes(data=True):
        out.add_node(str(node), **restore(data, drop_node, NODE_ATTRS, nones["nodes"].get(str(node), [])))
    for u, v, k, data in graph.edges(keys=True, data=True):
        out.add_edge(str(u), str(v), key=str(k), **restore(data, drop_edge, EDGE_ATTRS, nones["edges"].get(str(k), [])))
    return rebuild(out, where)


class _Writer(GraphMLWriter):
    """networkx writes a boolean as Python spells it (``True``); GraphML's booleans are XML
    Schema's, ``true`` / ``false``, which other readers (Gephi, yEd, igraph) expect."""

    def add_data(self, name, element_type, value, scope="all", default=None):
        element = super().add_data(name, element_type, value, scope, default)
        if element_type is bool:  # networkx passes the value already as str(value)
            element.text = str(value).lower()
        return element


def to_graphml(circuit: Circuit) -> bytes:
    writer = _Writer(encoding="utf-8", prettyprint=True)
    writer.add_graph_element(_flatten(circuit))
    buffer = io.BytesIO()
    writer.dump(buffer)
    return buffer.getvalue()

def from_graphml(raw: bytes, where: str) -> Circuit:
    try:
        graph = nx.read_graphml(io.BytesIO(raw), node_type=str, edge_key_type=str, force_multigraph=True)
    except Exception as exc:  # the XML parser raises several types
        raise InputError(f"{where} is not valid GraphML ({exc}); re-export it with circuitkit") from None
    return _unflatten(graph, where)

def to_gexf(circuit: Circuit) -> bytes:
    flat = _flatten(circuit)
    # GEXF stores no graph attributes except the graph's name: the JSON header goes there.
    flat.graph = {"name": flat.graph[_GRAPH_KEY]}
    buffer = io.BytesIO()
    nx.write_gexf(flat, buffer)
    return buffer.getvalue()

def from_gexf(raw: bytes, where: str) -> Circuit:
    try:
        graph = nx.read_gexf(io.BytesIO(raw), node_type=str)
    except Exception as exc:
        raise InputError(f"{where} is not valid GEXF ({exc}); re-export it with circuitkit") from None
    if not isinstance(graph, nx.MultiDiGraph):
        graph = nx.MultiDiGraph(graph)
    return _unflatten(graph, where, drop_node=("label",), drop_edge=("id",))

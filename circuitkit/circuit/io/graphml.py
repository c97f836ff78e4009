"""GraphML and GEXF (networkx readwrite): attribute values they cannot hold (None, graph
attributes) ride along so the files read back without loss."""

from __future__ import annotations

import io
import json
from typing import Any

import networkx as nx

from circuitkit.circuit.core import Circuit
from circuitkit.circuit.io.common import check_header, graph_attrs, header, rebuild

_NONE_KEY = "_none_attrs"  # GraphML / GEXF cannot hold None: list the None-valued attributes instead

_GRAPH_KEY = "circuitkit_graph"  # graph attributes as JSON (GEXF keeps no graph attributes)

def _flatten(circuit: Circuit) -> nx.MultiDiGraph:
    """A copy without None values (recorded per element in ``_none_attrs``) and with graph
    attributes as one JSON string."""
    flat = nx.MultiDiGraph()
    flat.graph[_GRAPH_KEY] = json.dumps({**header(), "graph": graph_attrs(circuit)})

    def strip(data: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in data.items() if v is not None}
        nones = sorted(k for k, v in data.items() if v is None)
        if nones:
            out[_NONE_KEY] = ",".join(nones)
        return out

    for node, data in circuit.graph.nodes(data=True):
        flat.add_node(node, **strip(data))
    for u, v, k, data in circuit.graph.edges(keys=True, data=True):
        flat.add_edge(u, v, key=k, **strip(data))
    return flat

def _unflatten(graph: nx.MultiDiGraph, where: str, drop_node: tuple[str, ...] = (), drop_edge: tuple[str, ...] = ()) -> Circuit:
    raw = graph.graph.get(_GRAPH_KEY) or graph.graph.get("name")
    try:
        found = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        found = None
    check_header(found, where)
    out = nx.MultiDiGraph()
    out.graph.update(found.get("graph", {}))

    def restore(data: dict[str, Any], drop: tuple[str, ...]) -> dict[str, Any]:
        data = {k: v for k, v in data.items() if k not in drop}
        for key in filter(None, str(data.pop(_NONE_KEY, "")).split(",")):
            data[key] = None
        return data

    for node, data in graph.nodes(data=True):
        out.add_node(str(node), **restore(data, drop_node))
    for u, v, k, data in graph.edges(keys=True, data=True):
        out.add_edge(str(u), str(v), key=str(k), **restore(data, drop_edge))
    return rebuild(out, where)

def to_graphml(circuit: Circuit) -> bytes:
    buffer = io.BytesIO()
    nx.write_graphml(_flatten(circuit), buffer)
    return buffer.getvalue()

def from_graphml(raw: bytes, where: str) -> Circuit:
    try:
        graph = nx.read_graphml(io.BytesIO(raw), node_type=str, edge_key_type=str, force_multigraph=True)
    except Exception as exc:  # the XML parser raises several types
        raise ValueError(f"{where} is not valid GraphML ({exc}); re-export it with circuitkit") from None
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
        raise ValueError(f"{where} is not valid GEXF ({exc}); re-export it with circuitkit") from None
    if not isinstance(graph, nx.MultiDiGraph):
        graph = nx.MultiDiGraph(graph)
    return _unflatten(graph, where, drop_node=("label",), drop_edge=("id",))

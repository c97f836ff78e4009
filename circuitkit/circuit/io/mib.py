"""The circuit JSON of EAP-IG and the Mechanistic Interpretability Benchmark: ``cfg`` / ``nodes`` /
``edges``."""

from __future__ import annotations

from typing import Any

import networkx as nx

from circuitkit import names
from circuitkit.circuit.core import Circuit, edge_attrs, node_attrs
from circuitkit.circuit.io.common import check_header, graph_attrs, header, rebuild

_DERIVED = {"kind", "layer", "head", "sign", "qkv", "score", "in_graph"}

def to_mib(circuit: Circuit) -> dict[str, Any]:
    """``{"cfg", "nodes": {id: {"in_graph", "score"}}, "edges": {id: {"score", "in_graph"}}}``.

    Attributes that differ from the circuit's method / task, and any extra attributes, ride
    along in each entry (EAP-IG reads only ``in_graph`` and ``score``); graph attributes go in
    ``cfg["circuitkit"]``.
    """
    g = circuit.graph.graph
    cfg: dict[str, Any] = {"n_layers": g.get("n_layers"), "n_heads": g.get("n_heads"), "parallel_attn_mlp": False}
    if g.get("meta", {}).get("d_model") is not None:
        cfg["d_model"] = g["meta"]["d_model"]
    cfg["circuitkit"] = {**header(), "graph": graph_attrs(circuit)}
    defaults = {"method": circuit.method, "task": circuit.task}

    def entry(data: dict[str, Any]) -> dict[str, Any]:
        out = {"in_graph": bool(data["in_graph"]), "score": data["score"]}
        out.update({k: v for k, v in data.items() if k not in _DERIVED and defaults.get(k, object()) != v})
        return out

    return {"cfg": cfg,
            "nodes": {n: entry(circuit.graph.nodes[n]) for n in circuit.all_nodes},
            "edges": {k: entry(circuit.edge_data(k)) for k in circuit.all_edges}}

def from_mib(data: dict[str, Any], where: str = "MIB circuit JSON") -> Circuit:
    """Read an EAP-IG / MIB circuit file (also the older ``nodes: {id: bool}`` form)."""
    if not isinstance(data, dict) or not {"nodes", "edges"} <= set(data):
        raise ValueError(f"{where} is not an EAP-IG/MIB circuit: it needs 'cfg', 'nodes' and 'edges' keys")
    cfg = data.get("cfg") or {}
    ours = cfg.get("circuitkit")
    if ours is not None:
        check_header(ours, where)
        attrs = dict(ours.get("graph", {}))
    else:
        attrs = {"method": "eap-ig", "task": "", "n_layers": cfg.get("n_layers"), "n_heads": cfg.get("n_heads"),
                       "has_mlp": None, "meta": {"d_model": cfg["d_model"]} if "d_model" in cfg else {}}
    method, task = attrs.get("method", ""), attrs.get("task", "")
    graph = nx.MultiDiGraph()
    graph.graph.update(attrs)
    try:
        for name, value in data["nodes"].items():
            entry = {"in_graph": value} if isinstance(value, bool) else dict(value)
            extra = {k: v for k, v in entry.items() if k not in ("in_graph", "score", "method", "task")}
            graph.add_node(name, **node_attrs(name, entry.get("score"), entry.get("method", method),
                                              entry.get("task", task), bool(entry.get("in_graph", False)), **extra))
        for name, value in data["edges"].items():
            e = names.parse_edge(name)
            entry = dict(value)
            for endpoint in (e.parent, e.child):
                if endpoint not in graph:  # old files list edges only for some nodes
                    graph.add_node(endpoint, **node_attrs(endpoint, None, method, task, False))
            extra = {k: v for k, v in entry.items() if k not in ("in_graph", "score", "method", "task")}
            graph.add_edge(e.parent, e.child, key=name,
                           **edge_attrs(name, entry.get("score"), entry.get("method", method),
                                        entry.get("task", task), bool(entry.get("in_graph", False)), **extra))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{where} has a malformed entry: {exc}") from None
    circuit = rebuild(graph, where)
    circuit.infer_shape()
    return circuit

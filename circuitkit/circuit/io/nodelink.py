"""circuitkit's own circuit JSON: networkx node-link data plus the version header (lossless)."""

from __future__ import annotations

from typing import Any

import networkx as nx
from networkx.readwrite import json_graph

from circuitkit.circuit.core import Circuit
from circuitkit.circuit.io.common import check_header, header, rebuild
from circuitkit.errors import InputError


def to_node_link(circuit: Circuit) -> dict[str, Any]:
    data = json_graph.node_link_data(circuit.graph, edges="links")
    return {**header(), **data}

def from_node_link(data: dict[str, Any], where: str = "node-link data") -> Circuit:
    check_header(data, where)
    for key, fields in (("nodes", ("id",)), ("links", ("source", "target", "key"))):
        entries = data.get(key)
        if not isinstance(entries, list):
            raise InputError(f"{where}: {key!r} must be a list of objects, got {type(entries).__name__}; "
                             "re-export it with circuitkit")
        for i, entry in enumerate(entries):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise InputError(f"{where}: {key}[{i}] lacks {missing}; each of {key} needs {list(fields)}"
                                 if isinstance(entry, dict) else f"{where}: {key}[{i}] must be an object, got {entry!r}")
    try:
        graph = json_graph.node_link_graph(data, directed=True, multigraph=True, edges="links")
    except (KeyError, TypeError, nx.NetworkXError) as exc:
        raise InputError(f"{where} is malformed node-link JSON ({exc!r}); re-export it with circuitkit") from None
    return rebuild(nx.MultiDiGraph(graph), where)

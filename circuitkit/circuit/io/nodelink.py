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
    try:
        graph = json_graph.node_link_graph(data, directed=True, multigraph=True, edges="links")
    except (KeyError, TypeError, nx.NetworkXError) as exc:
        raise InputError(f"{where} is malformed node-link JSON ({exc!r}); re-export it with circuitkit") from None
    return rebuild(nx.MultiDiGraph(graph), where)

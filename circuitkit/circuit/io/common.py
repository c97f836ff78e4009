"""What every circuit format shares: the version header, rebuilding a Circuit with a clear error."""

from __future__ import annotations

from typing import Any

import networkx as nx

from circuitkit import names
from circuitkit.circuit.core import Circuit
from circuitkit.errors import InputError
from circuitkit.version import __version__

FORMAT_VERSION = 1

FORMAT_NAME = "circuitkit-circuit"

def header() -> dict[str, Any]:
    """The version fields every circuitkit file carries."""
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "circuitkit_version": __version__}

def check_header(data: Any, where: str) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise InputError(f"{where} is not a circuitkit circuit (no format={FORMAT_NAME!r} field); "
                         "pass format='mib' or 'attribution-graph' for those files, or re-export it with circuitkit")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        hint = "upgrade circuitkit" if isinstance(version, int) and version > FORMAT_VERSION else "re-export it"
        raise InputError(f"{where} has circuit format_version {version!r}; this circuitkit "
                         f"({__version__}) reads version {FORMAT_VERSION}: {hint}")

def graph_attrs(circuit: Circuit) -> dict[str, Any]:
    """The circuit's graph attributes as a plain dict."""
    return {k: v for k, v in circuit.graph.graph.items()}

def rebuild(graph: nx.MultiDiGraph, where: str) -> Circuit:
    """``Circuit(graph)``, with a read error naming the file instead of the failed check; NaN or
    infinite scores (GraphML / GEXF store them as text) are refused, naming the component."""
    import math

    items = [(k, d) for _, _, k, d in graph.edges(keys=True, data=True)] + list(graph.nodes(data=True))
    for key, attrs in items:
        score = attrs.get("score")
        if isinstance(score, (int, float)) and not math.isfinite(score):
            raise InputError(f"{where}: {key} has score {score}, which is not a finite number; fix or drop that "
                             "score in the file (circuitkit never writes one)")
    try:
        return Circuit(graph)
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{where} holds an invalid circuit: {exc}") from None

def endpoints(edge_id: str) -> tuple[str, str]:
    """``(parent, child)`` of an edge id."""
    e = names.parse_edge(edge_id)
    return e.parent, e.child

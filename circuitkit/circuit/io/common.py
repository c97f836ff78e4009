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
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise InputError(f"{where}: {key} has score {score!r} ({type(score).__name__}); a score is a number "
                             "or null: fix that score in the file")
        if isinstance(score, (int, float)) and not math.isfinite(score):
            raise InputError(f"{where}: {key} has score {score}, which is not a finite number; fix or drop that "
                             "score in the file (circuitkit never writes one)")
        if "in_graph" in attrs and not isinstance(attrs["in_graph"], bool):
            raise InputError(f"{where}: {key} has in_graph {attrs['in_graph']!r} ({type(attrs['in_graph']).__name__}); "
                             "in_graph is true or false: fix it in the file")
        for field in ("layer", "head"):
            value = attrs.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InputError(f"{where}: {key} has {field} {value!r} ({type(value).__name__}); {field} is a whole "
                                 "number or null: fix it in the file")
    check_shape(graph.graph, where)
    try:
        return Circuit(graph)
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{where} holds an invalid circuit: {exc}") from None

def check_shape(attrs: Any, where: str, field: str = "graph") -> None:
    """``InputError`` naming the file and the field when ``n_layers`` / ``n_heads`` / ``d_model``
    (a circuit's graph attributes, a MIB file's ``cfg``) are not positive whole numbers (or null),
    or ``has_mlp`` / ``parallel_attn_mlp`` not true / false (or null)."""
    if not isinstance(attrs, dict):
        raise InputError(f"{where}: {field} must be a mapping (n_layers, n_heads, ...), got {type(attrs).__name__}")
    for key in ("n_layers", "n_heads", "d_model"):
        value = attrs.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{where}: {field}.{key} must be a positive whole number, got {value!r}; fix it in the file")
    for key in ("has_mlp", "parallel_attn_mlp"):
        value = attrs.get(key)
        if value is not None and not isinstance(value, bool):
            raise InputError(f"{where}: {field}.{key} must be true or false, got {value!r}; fix it in the file")


def endpoints(edge_id: str) -> tuple[str, str]:
    """``(parent, child)`` of an edge id."""
    e = names.parse_edge(edge_id)
    return e.parent, e.child

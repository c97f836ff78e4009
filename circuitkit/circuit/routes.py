"""Edge scores capped by the best route from each edge to the logits.

An edge matters to the output only through its receiver. Mean-ablating the query input of a head
the circuit does not need can move the metric a lot *in the full model* (the head starts writing
something unusual), yet once that head's own output edges are ablated the edge does nothing, so
circuits (ACDC's, and the zoo's references built by exact ablation) leave it out. Attribution
scores cannot see this: they are marginal effects in the full model. Capping each edge's |score|
by the widest route from its receiver to the logits (the route whose weakest edge is strongest)
ranks such dangling edges by what they can pass on, which is what circuit discovery needs.
"""

from __future__ import annotations

import math

import networkx as nx
import torch

from circuitkit import names
from circuitkit.errors import InputError
from circuitkit.scores import Scores


def route_widths(scores: Scores) -> dict[str, float]:
    """For every node, the widest route to ``logits``: max over routes of the smallest |score|
    on the route (``inf`` for ``logits``, 0 for a node with no scored route)."""
    if not scores.is_edge:
        raise InputError("route widths need edge Scores (labels like 'a0.h0->a1.h0<q>'), e.g. from eap_ig")
    graph = nx.DiGraph()
    for label, value in zip(scores.labels, scores.values.abs().tolist(), strict=True):
        edge = names.parse_edge(label)
        if not math.isfinite(value):
            raise InputError(f"edge {label!r} has score {value}; route widths need finite scores")
        # q, k and v edges between the same two nodes: the widest one is the route
        best = graph.edges[edge.parent, edge.child]["width"] if graph.has_edge(edge.parent, edge.child) else 0.0
        graph.add_edge(edge.parent, edge.child, width=max(best, value))
    for parent, child in names.attention_links(list(graph)):  # position-resolved heads: attention carries p to q > p
        graph.add_edge(parent, child, width=math.inf)
    # logits (one node per position in a position-resolved graph) are where every route ends
    width = {node: math.inf if names.parse_node(node).kind == "logits" else 0.0 for node in graph}
    for node in reversed(list(nx.topological_sort(graph))):
        for child in graph.successors(node):
            width[node] = max(width[node], min(graph.edges[node, child]["width"], width[child]))
    return width


def cap_by_route(scores: Scores) -> Scores:
    """``scores`` with each edge's |score| capped at its receiver's widest route to the logits
    (sign kept). Edges into ``logits`` are unchanged; an edge into a node whose every route to the
    logits is weak drops to that route's width. ``meta["route_capped"]`` records it.

    Shape: ``[n_edges]`` in, ``[n_edges]`` out, same labels.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> scores = ck.eap_ig(model, ck.zoo_task("induction-handbuilt", model), steps=3, progress=False)
        >>> capped = ck.cap_by_route(scores)
        >>> capped.labels == scores.labels, capped.meta["route_capped"]
        (True, True)
        >>> all(abs(capped[edge]) <= abs(scores[edge]) for edge in scores.labels)
        True
    """
    width = route_widths(scores)
    children = [names.parse_edge(label).child for label in scores.labels]
    caps = torch.tensor([width[child] for child in children], dtype=torch.float32)
    values = torch.sign(scores.values) * torch.minimum(scores.values.abs(), caps)
    return Scores(values, list(scores.labels), scores.method, task=scores.task, metric=scores.metric,
                  meta={**scores.meta, "route_capped": True})

"""``Circuit``: a networkx graph of model components with typed attributes.

The graph is a `networkx.MultiDiGraph` (a ``DiGraph`` subclass) so that the three inputs
of an attention head (``<q>``, ``<k>``, ``<v>``) can each carry their own edge between the same
two nodes. Every edge's networkx key is its edge id (``names.edge(...)``), node ids are
``circuitkit.names`` ids. ``in_graph`` marks membership: a circuit keeps the scores of pruned
components (for ROC-AUC, re-thresholding and the EAP-IG/MIB export) and prunes by flag.

Node attributes: ``kind`` (input | head | mlp | logits | feature | error | site), ``layer``, ``head``, ``score``,
``sign`` (+1 / -1 / 0, None without a score), ``method``, ``task``, ``in_graph``.
Edge attributes: ``qkv``, ``score``, ``sign``, ``method``, ``task``, ``in_graph``.
Graph attributes (``circuit.graph.graph``): ``method``, ``task``, ``n_layers``, ``n_heads``,
``has_mlp`` and ``meta`` (a JSON-able dict, e.g. a faithfulness result).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx
import torch

from circuitkit import names
from circuitkit.errors import InputError, InputTypeError, UnknownNameError
from circuitkit.scores import Scores

NODE_ATTRS = ("kind", "layer", "head", "score", "sign", "method", "task", "in_graph")
EDGE_ATTRS = ("qkv", "score", "sign", "method", "task", "in_graph")
GRAPH_ATTRS = ("method", "task", "n_layers", "n_heads", "has_mlp", "meta")
SCALAR_TYPES = (str, int, float, bool, type(None))


def _sign(score: float | None) -> int | None:
    if score is None or (isinstance(score, float) and math.isnan(score)):
        return None
    return int((score > 0) - (score < 0))


def node_attrs(node_id: str, score: float | None = None, method: str = "", task: str = "",
               in_graph: bool = True, **extra: Any) -> dict[str, Any]:
    """The typed attribute dict of node ``node_id`` (parsed with `circuitkit.names`)."""
    node = names.parse_node(node_id)
    score = None if score is None else float(score)
    return {"kind": node.kind, "layer": node.layer, "head": node.head, "score": score, "sign": _sign(score),
            "method": method, "task": task, "in_graph": bool(in_graph), **extra}


def edge_attrs(edge_id: str, score: float | None = None, method: str = "", task: str = "",
               in_graph: bool = True, **extra: Any) -> dict[str, Any]:
    edge = names.parse_edge(edge_id)
    score = None if score is None else float(score)
    return {"qkv": edge.qkv, "score": score, "sign": _sign(score), "method": method, "task": task,
            "in_graph": bool(in_graph), **extra}


class Circuit:
    """A set of model components (nodes and/or edges) with scores, as a networkx graph.

    ``circuit.graph`` is the ``networkx.MultiDiGraph`` itself: use any networkx algorithm on it.
    ``circuit.nodes`` / ``circuit.edges`` list the in-graph ids in computation order.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> scores = ck.eap_ig(model, ck.zoo_task("induction-handbuilt", model), steps=3, progress=False)
        >>> circuit = ck.Circuit.from_scores(scores).top_k(5)
        >>> circuit
        Circuit(method='eap-ig', task='induction', nodes=4/10, edges=5/81)
        >>> circuit.nodes, "a0.h0->a1.h0<k>" in circuit
        (['input', 'a0.h0', 'a1.h0', 'logits'], True)
    """

    def __init__(self, graph: nx.MultiDiGraph | None = None, **graph_attrs: Any) -> None:
        self.graph = graph if graph is not None else nx.MultiDiGraph()
        if not isinstance(self.graph, nx.MultiDiGraph):
            raise InputTypeError(
                f"Circuit wraps a networkx.MultiDiGraph (edge key = edge id), got {type(self.graph).__name__}; "
                "build one with Circuit.from_nodes_edges or Circuit.from_scores"
            )
        defaults = {"method": "", "task": "", "n_layers": None, "n_heads": None, "has_mlp": None, "meta": {}}
        for key, value in {**defaults, **graph_attrs}.items():
            if key in graph_attrs or key not in self.graph.graph:
                self.graph.graph[key] = value
        self.validate()

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_scores(cls, scores: Scores, *, n_layers: int | None = None, n_heads: int | None = None,
                    has_mlp: bool | None = None, in_graph: bool = True) -> Circuit:
        """Every scored component becomes a node (node scores) or an edge plus its endpoints
        (edge scores), carrying its score, sign, the method and the task; all marked ``in_graph``
        (prune with `threshold` / `top_k`)."""
        if len(scores) == 0:
            raise InputError("cannot build a circuit from empty Scores; run a method that scores components first")
        meta = scores.meta or {}
        circuit = cls(method=scores.method, task=scores.task,
                      n_layers=n_layers if n_layers is not None else meta.get("n_layers"),
                      n_heads=n_heads if n_heads is not None else meta.get("n_heads"),
                      has_mlp=has_mlp if has_mlp is not None else meta.get("has_mlp"),
                      meta={"metric": scores.metric})
        values = scores.values.tolist()
        if scores.is_edge:
            circuit.add_edges(zip(scores.labels, values, strict=True), scores.method, scores.task, in_graph)
        else:
            for label, value in zip(scores.labels, values, strict=True):
                circuit.graph.add_node(label, **node_attrs(label, value, scores.method, scores.task, in_graph))
        circuit.infer_shape()
        return circuit

    @classmethod
    def from_nodes_edges(cls, nodes: Iterable[str] = (), edges: Iterable[str] = (), *, method: str = "reference",
                         task: str = "", scores: Mapping[str, float] | None = None, n_layers: int | None = None,
                         n_heads: int | None = None, has_mlp: bool | None = None) -> Circuit:
        """A circuit from component ids, e.g. a zoo card's reference circuit
        (``Circuit.from_nodes_edges(card.circuit_nodes, card.circuit_edges)``)."""
        scores = dict(scores or {})
        circuit = cls(method=method, task=task, n_layers=n_layers, n_heads=n_heads, has_mlp=has_mlp)
        edges = list(edges)
        circuit.add_edges(((e, scores.get(e)) for e in edges), method, task, True)
        for node in nodes:
            if node in circuit.graph:
                circuit.graph.nodes[node].update(score=scores.get(node), sign=_sign(scores.get(node)))
            else:
                circuit.graph.add_node(node, **node_attrs(node, scores.get(node), method, task, True))
        if not circuit.graph:
            raise InputError("a circuit needs at least one node or edge; give nodes=[...] and/or edges=[...]")
        circuit.infer_shape()
        return circuit

    def add_edges(self, items: Iterable[tuple[str, float | None]], method: str, task: str, in_graph: bool) -> None:
        """Add ``(edge id, score)`` pairs with their endpoints (an in-graph edge marks both in-graph)."""
        for label, value in items:
            e = names.parse_edge(label)
            for endpoint in (e.parent, e.child):
                if endpoint not in self.graph:
                    self.graph.add_node(endpoint, **node_attrs(endpoint, None, method, task, in_graph))
                elif in_graph:
                    self.graph.nodes[endpoint]["in_graph"] = True
            self.graph.add_edge(e.parent, e.child, key=label, **edge_attrs(label, value, method, task, in_graph))

    def infer_shape(self) -> None:
        """Fill in ``n_layers`` / ``n_heads`` / ``has_mlp`` the graph attributes lack from its node ids."""
        g = self.graph.graph
        heads = [names.parse_node(n) for n in self.graph if names.parse_node(n).kind in ("head", "mlp")]
        if g.get("n_layers") is None and heads:
            g["n_layers"] = 1 + max(n.layer for n in heads)
        if g.get("n_heads") is None and any(n.kind == "head" for n in heads):
            g["n_heads"] = 1 + max(n.head for n in heads if n.kind == "head")
        if g.get("has_mlp") is None and any(n.kind == "mlp" for n in heads):
            g["has_mlp"] = True

    @classmethod
    def for_model(cls, model) -> dict[str, Any]:
        """Graph attributes describing ``model``'s shape (pass as ``**`` to constructors)."""
        cfg = model.cfg
        return {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "has_mlp": not cfg.attn_only}

    def validate(self) -> None:
        """Raise ``ValueError`` if a node or edge id is malformed or an attribute is missing / mistyped."""
        for node, data in self.graph.nodes(data=True):
            parsed = names.parse_node(node)
            missing = [a for a in NODE_ATTRS if a not in data]
            if missing:
                raise InputError(f"circuit node {node!r} lacks attributes {missing}; build nodes with circuit.graph.add_node(id, **node_attrs(id, score))")
            if data["kind"] != parsed.kind:
                raise InputError(f"circuit node {node!r} has kind {data['kind']!r} but its id says {parsed.kind!r}")
            _check_scalars(data, f"node {node!r}")
        for parent, child, key, data in self.graph.edges(keys=True, data=True):
            e = names.parse_edge(key)
            if (e.parent, e.child) != (parent, child):
                raise InputError(f"circuit edge key {key!r} does not match its endpoints {parent!r} -> {child!r}")
            missing = [a for a in EDGE_ATTRS if a not in data]
            if missing:
                raise InputError(f"circuit edge {key!r} lacks attributes {missing}; build edges with edge_attrs(id, score)")
            _check_scalars(data, f"edge {key!r}")

    # --- views --------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.graph.graph.get("method", "")

    @property
    def task(self) -> str:
        return self.graph.graph.get("task", "")

    @property
    def meta(self) -> dict[str, Any]:
        return self.graph.graph.setdefault("meta", {})

    @property
    def n_layers(self) -> int | None:
        return self.graph.graph.get("n_layers")

    @property
    def level(self) -> str:
        """``"edge"`` when the circuit has edges, else ``"node"``."""
        return "edge" if self.graph.number_of_edges() else "node"

    def _order(self, node_ids: Iterable[str]) -> list[str]:
        return names.sort_nodes(node_ids, self.n_layers)

    @property
    def nodes(self) -> list[str]:
        """In-graph node ids, in computation order."""
        return self._order(n for n, d in self.graph.nodes(data=True) if d["in_graph"])

    @property
    def edges(self) -> list[str]:
        """In-graph edge ids (sorted by child, then parent, in computation order)."""
        return self._sort_edges((u, v, k, d) for u, v, k, d in self.graph.edges(keys=True, data=True) if d["in_graph"])

    @property
    def all_nodes(self) -> list[str]:
        return self._order(self.graph.nodes)

    @property
    def all_edges(self) -> list[str]:
        return self._sort_edges(self.graph.edges(keys=True, data=True))

    def _sort_edges(self, edges: Iterable[tuple[str, str, str, dict]]) -> list[str]:
        """Edge ids of ``(parent, child, id, data)`` in computation order: by child, parent, q / k /
        v, id. Node keys are computed once per node (a graph has far fewer nodes than edges)."""
        n_layers, node_key = self.n_layers, {}

        def of(node: str):
            if node not in node_key:
                node_key[node] = names.parse_node(node).sort_key(n_layers)
            return node_key[node]

        qkv_rank = {None: -1, **{q: i for i, q in enumerate(names.QKV)}}
        return [k for *_, k in sorted((of(v), of(u), qkv_rank[d.get("qkv")], k) for u, v, k, d in edges)]

    def edge_data(self, edge_id: str) -> dict[str, Any]:
        e = names.parse_edge(edge_id)
        try:
            return self.graph.edges[e.parent, e.child, edge_id]
        except KeyError:
            raise UnknownNameError(f"edge {edge_id!r} is not in this circuit") from None

    def node_data(self, node_id: str) -> dict[str, Any]:
        try:
            return self.graph.nodes[node_id]
        except KeyError:
            raise UnknownNameError(f"node {node_id!r} is not in this circuit") from None

    def subgraph(self) -> nx.MultiDiGraph:
        """A read-only view of the in-graph nodes and edges."""
        return nx.subgraph_view(self.graph, filter_node=lambda n: self.graph.nodes[n]["in_graph"],
                                filter_edge=lambda u, v, k: self.graph.edges[u, v, k]["in_graph"])

    def scores(self, level: str | None = None) -> Scores:
        """The scored components (in-graph or not) as `Scores` (``level``: "edge" or "node")."""
        level = level or self.level
        if level == "edge":
            items = [(k, d["score"]) for _, _, k, d in self.graph.edges(keys=True, data=True) if d["score"] is not None]
        elif level == "node":
            items = [(n, d["score"]) for n, d in self.graph.nodes(data=True) if d["score"] is not None]
        else:
            raise InputError(f"level must be 'edge' or 'node', got {level!r}")
        if not items:
            raise InputError(f"this circuit has no {level} scores; build it with Circuit.from_scores")
        labels, values = zip(*items, strict=True)
        return Scores(torch.tensor(values), list(labels), self.method, self.task,
                      meta={k: self.graph.graph[k] for k in ("n_layers", "n_heads", "has_mlp")})

    def copy(self) -> Circuit:
        graph = self.graph.copy()
        graph.graph["meta"] = dict(self.graph.graph.get("meta") or {})
        out = Circuit.__new__(Circuit)  # a copy of a valid circuit is valid: no second validation
        out.graph = graph
        return out

    def __len__(self) -> int:
        return len(self.edges) if self.level == "edge" else len(self.nodes)

    def __contains__(self, component: object) -> bool:
        if not isinstance(component, str):
            return False
        if names.is_edge(component):
            try:
                return bool(self.edge_data(component)["in_graph"])
            except (KeyError, ValueError):
                return False
        return component in self.graph and bool(self.graph.nodes[component]["in_graph"])

    def __eq__(self, other: object) -> bool:
        """Same nodes, edges and attributes (graph attributes included)."""
        if not isinstance(other, Circuit):
            return NotImplemented
        return (dict(self.graph.nodes(data=True)) == dict(other.graph.nodes(data=True))
                and {(u, v, k): d for u, v, k, d in self.graph.edges(keys=True, data=True)}
                == {(u, v, k): d for u, v, k, d in other.graph.edges(keys=True, data=True)}
                and self.graph.graph == other.graph.graph)

    def __repr__(self) -> str:
        return (f"Circuit(method={self.method!r}, task={self.task!r}, nodes={len(self.nodes)}/{self.graph.number_of_nodes()}, "
                f"edges={len(self.edges)}/{self.graph.number_of_edges()})")

    def to_frames(self):
        """``(nodes, edges)`` pandas DataFrames with every attribute."""
        import pandas as pd

        nodes = pd.DataFrame([{"node": n, **d} for n, d in self.graph.nodes(data=True)])
        edges = pd.DataFrame([{"edge": k, "parent": u, "child": v, **d}
                              for u, v, k, d in self.graph.edges(keys=True, data=True)])
        return nodes, edges

    # --- pruning ------------------------------------------------------------------------------
    def with_members(self, members: Iterable[str], level: str | None = None, prune: bool = True) -> Circuit:
        """A copy whose in-graph set is exactly ``members`` (edge ids, or node ids for node circuits).

        For edge circuits a node is in the graph when an in-graph edge touches it; ``prune``
        then drops edges that lie on no ``input -> logits`` path (see `prune_dangling`).
        """
        level = level or self.level
        members = set(members)
        out = self.copy()
        g = out.graph
        if level == "edge":
            unknown = [m for m in members if not _has_edge(g, m)]
            if unknown:
                raise UnknownNameError(f"edges not in this circuit: {sorted(unknown)[:5]}")
            for _, _, k, d in g.edges(keys=True, data=True):
                d["in_graph"] = k in members
            out._sync_nodes_to_edges()
            if prune:
                out = out.prune_dangling()
        elif level == "node":
            unknown = members - set(g.nodes)
            if unknown:
                raise UnknownNameError(f"nodes not in this circuit: {sorted(unknown)[:5]}")
            for n, d in g.nodes(data=True):
                d["in_graph"] = n in members
            for u, v, _, d in g.edges(keys=True, data=True):
                d["in_graph"] = d["in_graph"] and u in members and v in members
        else:
            raise InputError(f"level must be 'edge' or 'node', got {level!r}")
        return out

    def _sync_nodes_to_edges(self) -> None:
        g = self.graph
        touched = {n for u, v, d in g.edges(data=True) if d["in_graph"] for n in (u, v)}
        for n, d in g.nodes(data=True):
            d["in_graph"] = n in touched

    def _ranked(self, level: str, by_abs: bool) -> list[tuple[str, float]]:
        items = (self.graph.edges(keys=True, data=True) if level == "edge" else
                 ((None, None, n, d) for n, d in self.graph.nodes(data=True)))
        scored = [(k, d["score"]) for _, _, k, d in items if d["score"] is not None]
        if not scored:
            raise InputError(f"this circuit has no {level} scores to prune by; build it with Circuit.from_scores")
        return sorted(scored, key=lambda kv: (-(abs(kv[1]) if by_abs else kv[1]), kv[0]))

    def threshold(self, threshold: float, level: str | None = None, by_abs: bool = True, prune: bool = True) -> Circuit:
        """Keep the components whose score (|score| when ``by_abs``) is at least ``threshold``."""
        level = level or self.level
        keep = [k for k, s in self._ranked(level, by_abs) if (abs(s) if by_abs else s) >= threshold]
        return self.with_members(keep, level, prune)

    def top_k(self, k: int, level: str | None = None, by_abs: bool = True, prune: bool = True) -> Circuit:
        """Keep the ``k`` highest-scoring components (by |score| unless ``by_abs=False``; ties by id)."""
        if not isinstance(k, int) or k < 0:
            raise InputError(f"top_k needs a non-negative integer k, got {k!r}")
        level = level or self.level
        keep = [name for name, _ in self._ranked(level, by_abs)[:k]]
        return self.with_members(keep, level, prune)

    def prune_dangling(self) -> Circuit:
        """A copy keeping only in-graph edges on some ``input -> logits`` path of in-graph edges
        (position-resolved: a head's inputs at position p reach its outputs at later positions
        through attention, `attention_links`)."""
        out = self.copy()
        view = nx.DiGraph(out.subgraph())
        view.add_edges_from(names.attention_links(list(view)))
        # Sources and sinks by kind: position-resolved graphs have one input node per position.
        sources = [n for n in view if self.graph.nodes[n]["kind"] == "input"]
        sinks = [n for n in view if self.graph.nodes[n]["kind"] == "logits"]
        below = _reachable(view, sources)
        above = _reachable(view.reverse(copy=False), sinks)
        on_path = below & above
        for u, v, _, d in out.graph.edges(keys=True, data=True):
            d["in_graph"] = d["in_graph"] and u in on_path and v in on_path
        out._sync_nodes_to_edges()
        return out


def _reachable(graph: nx.DiGraph, starts: list[str]) -> set[str]:
    """Every node reachable from any of ``starts`` (themselves included): one traversal, linear
    in the graph, however many starts (a position-resolved graph has one input per position)."""
    seen = set(starts)
    stack = list(starts)
    while stack:
        for child in graph.successors(stack.pop()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def _has_edge(g: nx.MultiDiGraph, edge_id: str) -> bool:
    e = names.parse_edge(edge_id)
    return g.has_edge(e.parent, e.child, key=edge_id)


def _check_scalars(data: Mapping[str, Any], where: str) -> None:
    for key, value in data.items():
        if not isinstance(value, SCALAR_TYPES):
            raise InputError(
                f"circuit {where} attribute {key!r} is a {type(value).__name__}; attributes must be str, int, "
                "float, bool or None so that every export format keeps them (store a JSON string instead)"
            )

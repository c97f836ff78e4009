"""The circuit JSON of EAP-IG and the Mechanistic Interpretability Benchmark: ``cfg`` / ``nodes`` /
``edges``.

What EAP-IG's ``Graph.from_json`` (the loader MIB's circuit track uses) needs, and so what
`to_mib` writes:

* ``cfg``: ``n_layers``, ``n_heads`` (ints), ``parallel_attn_mlp`` (bool) and ``d_model`` (int;
  the loader allocates per-neuron tensors of that width);
* ``nodes``: ``{name: {"in_graph": bool, "score": float}}``, ``score`` left out when a node has
  none (the loader assigns it into a float tensor, so ``null`` fails);
* ``edges``: ``{name: {"score": float, "in_graph": bool}}`` for edges of its full graph only.

Sign: circuitkit scores estimate ``metric(edge ablated) - metric(clean)``, so with logit
difference the edges a behaviour needs are negative. MIB attributes the loss (``-logit_diff``), so
they are positive there, and MIB's CPR keeps the highest *signed* scores. ``sign="mib"``
(the default) writes ``-score``; ``sign="circuitkit"`` writes the scores as they are.
``cfg["circuitkit"]["sign"]`` records which, so circuitkit reads its own files back either way.

Before evaluating, MIB prunes a circuit (``Graph.prune``): it drops, until nothing changes, nodes
with no in-graph input edge (the input node excepted) or no in-graph output edge, then edges whose
parent or child was dropped; on a DAG that keeps exactly the edges on ``input -> logits`` paths,
which is `Circuit.prune_dangling`. ``dangling="prune"`` (default) writes that pruned
circuit (the dropped edge ids are listed in ``cfg["circuitkit"]["pruned_dangling"]``), so the file
says what MIB will evaluate; ``dangling="error"`` refuses a circuit with dangling edges instead.
"""

from __future__ import annotations

import math
from typing import Any

import networkx as nx

from circuitkit import names
from circuitkit.circuit.core import Circuit, edge_attrs, node_attrs
from circuitkit.circuit.io.common import check_header, check_shape, graph_attrs, header, rebuild
from circuitkit.errors import InputError

SIGNS = ("mib", "circuitkit")
SCORE_CHOICES = ("raw", "circuit")
DANGLING = ("prune", "error")

_DERIVED = {"kind", "layer", "head", "sign", "qkv", "score", "in_graph"}
_OURS = "circuitkit_score"  # the circuit's own score, when the exported one differs (raw / unscored)
_UNSCORED = "circuitkit_unscored"  # written as 0.0 (MIB's default for an unlisted edge), read back as None
_IMPLIED = "circuitkit_implied"  # an edge a node circuit keeps (both endpoints in it), not one of its own


def mib_edges(n_layers: int, n_heads: int, parallel_attn_mlp: bool = False) -> list[str]:
    """Every edge of EAP-IG's graph for this shape (it always has MLP nodes). Sequential blocks:
    circuitkit's `names.all_edges`; parallel ones: an MLP does not read its own layer's heads."""
    edges = names.all_edges(n_layers, n_heads, True)
    if not parallel_attn_mlp:
        return edges

    def same_layer(label: str) -> bool:
        e = names.parse_edge(label)
        parent, child = names.parse_node(e.parent), names.parse_node(e.child)
        return child.kind == "mlp" and parent.kind == "head" and parent.layer == child.layer

    return [label for label in edges if not same_layer(label)]


def _cfg(circuit: Circuit, d_model: int | None, parallel_attn_mlp: bool | None) -> dict[str, Any]:
    g, meta = circuit.graph.graph, circuit.meta
    d_model = d_model if d_model is not None else meta.get("d_model")
    parallel = parallel_attn_mlp if parallel_attn_mlp is not None else meta.get("parallel_attn_mlp", False)
    missing = [k for k, v in (("n_layers", g.get("n_layers")), ("n_heads", g.get("n_heads")), ("d_model", d_model))
               if not isinstance(v, int) or isinstance(v, bool)]
    if missing:
        raise InputError(f"EAP-IG's loader needs the model's {missing} in cfg and this circuit does not record them; "
                         "pass them (to_mib(circuit, d_model=model.cfg.d_model), save_circuit(..., d_model=...)) "
                         "or set circuit.meta['d_model'] (circuits from circuitkit.discover record it)")
    return {"n_layers": g["n_layers"], "n_heads": g["n_heads"], "parallel_attn_mlp": bool(parallel),
            "d_model": int(d_model)}


def _check_nodes(circuit: Circuit) -> None:
    bad = [n for n in circuit.graph if names.parse_node(n).pos is not None
           or names.parse_node(n).kind not in ("input", "head", "mlp", "logits")]
    if bad:
        raise InputError(f"EAP-IG/MIB graphs hold whole heads and MLPs only; this circuit has {bad[:3]} "
                         "(positions, residual sites or SAE features): export it as node-link or attribution-graph")


def _edge_score(circuit: Circuit, data: dict[str, Any], scores: str, key: str) -> float | None:
    if scores == "raw" and "raw_score" in data:
        return data["raw_score"]
    if scores == "raw" and circuit.meta.get("route_cap") and data["score"] is not None:
        raise InputError(f"edge {key!r} has a route-capped score and no raw_score to export; pass scores='circuit' "
                         "to export the capped scores, or rediscover (circuitkit.discover keeps raw_score)")
    return data["score"]


def to_mib(circuit: Circuit, *, sign: str = "mib", scores: str = "raw", dangling: str = "prune",
           d_model: int | None = None, parallel_attn_mlp: bool | None = None) -> dict[str, Any]:
    """The circuit as EAP-IG / MIB JSON, which ``eap.graph.Graph.from_json`` loads as is.

    ``sign``: ``"mib"`` writes ``-score`` (the loss's attribution: needed edges positive, as MIB's
    CPR expects) or ``"circuitkit"`` (as stored). ``scores``: ``"raw"`` writes each edge's
    ``raw_score`` (the estimator's value before route capping, which `discover` keeps) where
    it has one, ``"circuit"`` the scores the circuit was pruned by. ``dangling``: ``"prune"``
    writes the circuit MIB evaluates (see the module docstring), ``"error"`` raises if that
    differs from this one. Node circuits also mark every model edge between their nodes
    in-graph (as circuitkit evaluates them). ``d_model`` / ``parallel_attn_mlp``: the model's, when
    ``circuit.meta`` lacks them. Unscored edges are written with score 0.0 (what MIB assumes for
    an edge the file does not list).
    """
    for value, choices, what in ((sign, SIGNS, "sign"), (scores, SCORE_CHOICES, "scores"), (dangling, DANGLING, "dangling")):
        if value not in choices:
            raise InputError(f"{what} must be one of {choices}, got {value!r}")
    _check_nodes(circuit)
    cfg = _cfg(circuit, d_model, parallel_attn_mlp)
    known = set(mib_edges(cfg["n_layers"], cfg["n_heads"], cfg["parallel_attn_mlp"]))
    foreign = [k for k in circuit.all_edges if k not in known]
    if foreign:
        raise InputError(f"edges {foreign[:3]} are not in EAP-IG's graph of a {cfg['n_layers']}-layer model "
                         f"(parallel_attn_mlp={cfg['parallel_attn_mlp']}); check n_layers / parallel_attn_mlp")
    pruned: list[str] = []
    if circuit.level == "edge":
        kept = circuit.prune_dangling()
        kept_edges = set(kept.edges)
        pruned = [k for k in circuit.edges if k not in kept_edges]
        if pruned and dangling == "error":
            raise InputError(f"{len(pruned)} in-graph edges lie on no input -> logits path (e.g. {pruned[:3]}); MIB's "
                             "prune() drops them before evaluating: pass dangling='prune' or prune_dangling() first")
        circuit = kept
    factor = -1.0 if sign == "mib" else 1.0
    defaults = {"method": circuit.method, "task": circuit.task}

    def entry(data: dict[str, Any], exported: float | None, key: str) -> dict[str, Any]:
        out: dict[str, Any] = {"in_graph": bool(data["in_graph"])}
        if exported is not None:
            if not math.isfinite(exported):
                raise InputError(f"{key!r} has score {exported}; MIB ranks edges by score, give finite scores")
            out["score"] = factor * float(exported) + 0.0  # + 0.0: no -0.0
        if exported != data["score"]:
            out[_OURS] = data["score"]
        out.update({k: v for k, v in data.items() if k not in _DERIVED and defaults.get(k, object()) != v})
        return out

    nodes = {}
    for n in circuit.all_nodes:
        data = circuit.graph.nodes[n]
        nodes[n] = entry(data, data["score"], n)
    edges = {}
    for k in circuit.all_edges:
        data = circuit.edge_data(k)
        e = entry(data, _edge_score(circuit, data, scores, k), k)
        if "score" not in e:
            e = {"score": 0.0, **e, _UNSCORED: True}
        edges[k] = {"score": e.pop("score"), **e}
    if circuit.level == "node":
        inside = set(circuit.nodes) | {names.INPUT, names.LOGITS}
        for k in sorted(known - set(edges)):
            e = names.parse_edge(k)
            if {e.parent, e.child} <= inside:
                edges[k] = {"score": 0.0, "in_graph": True, _IMPLIED: True}
    cfg["circuitkit"] = {**header(), "graph": graph_attrs(circuit), "sign": sign, "scores": scores,
                         "pruned_dangling": pruned}
    return {"cfg": cfg, "nodes": nodes, "edges": edges}


def from_mib(data: dict[str, Any], where: str = "MIB circuit JSON", sign: str = "mib") -> Circuit:
    """Read an EAP-IG / MIB circuit file (also the older ``nodes: {id: bool}`` form).

    Scores come back in circuitkit's sign convention: files circuitkit wrote say theirs; for other
    files ``sign`` says what they hold, ``"mib"`` (default: EAP-IG / MIB attribute the loss, so
    scores are negated) or ``"circuitkit"`` (kept)."""
    if sign not in SIGNS:
        raise InputError(f"sign must be one of {SIGNS}, got {sign!r}")
    if not isinstance(data, dict) or not {"nodes", "edges"} <= set(data):
        raise InputError(f"{where} is not an EAP-IG/MIB circuit: it needs 'cfg', 'nodes' and 'edges' keys")
    cfg = data.get("cfg") or {}
    check_shape(cfg, where, "cfg")
    _check_entries(data, where)
    ours = cfg.get("circuitkit")
    if ours is not None:
        check_header(ours, where)
        attrs = dict(ours.get("graph", {}))
        sign = ours.get("sign", "circuitkit")  # files written before the sign option held circuitkit's
    else:
        meta = {k: cfg[k] for k in ("d_model", "parallel_attn_mlp") if k in cfg}
        attrs = {"method": "eap-ig", "task": "", "n_layers": cfg.get("n_layers"), "n_heads": cfg.get("n_heads"),
                 "has_mlp": None, "meta": meta}
    factor = -1.0 if sign == "mib" else 1.0
    method, task = attrs.get("method", ""), attrs.get("task", "")
    skip = ("in_graph", "score", "method", "task", _OURS, _UNSCORED, _IMPLIED)

    def score(entry: dict[str, Any]) -> float | None:
        if _OURS in entry:
            return entry[_OURS]
        if entry.get(_UNSCORED) or entry.get("score") is None:
            return None
        return factor * float(entry["score"]) + 0.0

    graph = nx.MultiDiGraph()
    graph.graph.update(attrs)
    try:
        for name, value in data["nodes"].items():
            entry = {"in_graph": value} if isinstance(value, bool) else dict(value)
            extra = {k: v for k, v in entry.items() if k not in skip}
            graph.add_node(name, **node_attrs(name, score(entry), entry.get("method", method),
                                              entry.get("task", task), bool(entry.get("in_graph", False)), **extra))
        for name, value in data["edges"].items():
            e = names.parse_edge(name)
            entry = dict(value)
            if entry.get(_IMPLIED) and ours is not None:
                continue  # written for MIB's sake; the node circuit implies it
            for endpoint in (e.parent, e.child):
                if endpoint not in graph:  # old files list edges only for some nodes
                    graph.add_node(endpoint, **node_attrs(endpoint, None, method, task, False))
            extra = {k: v for k, v in entry.items() if k not in skip}
            graph.add_edge(e.parent, e.child, key=name,
                           **edge_attrs(name, score(entry), entry.get("method", method),
                                        entry.get("task", task), bool(entry.get("in_graph", False)), **extra))
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"{where} has a malformed entry: {exc}") from None
    circuit = rebuild(graph, where)
    circuit.infer_shape()
    return circuit


def _check_entries(data: dict[str, Any], where: str) -> None:
    """``nodes`` / ``edges`` are objects of ``{name: {"score": number | null, "in_graph": bool}}``
    (a node may be a bare bool, the older form); ``InputError`` names the file, the entry and the field."""
    for key in ("nodes", "edges"):
        entries = data[key]
        if not isinstance(entries, dict):
            raise InputError(f"{where}: {key!r} must be an object {{name: {{score, in_graph}}}}, got "
                             f"{type(entries).__name__}")
        for name, entry in entries.items():
            if key == "nodes" and isinstance(entry, bool):
                continue
            if not isinstance(entry, dict):
                raise InputError(f"{where}: {key}[{name!r}] must be an object {{score, in_graph}}, got {entry!r}")
            score = entry.get("score")
            if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
                raise InputError(f"{where}: {key}[{name!r}].score must be a number, got {score!r}")
            if "in_graph" in entry and not isinstance(entry["in_graph"], bool):
                raise InputError(f"{where}: {key}[{name!r}].in_graph must be true or false, got {entry['in_graph']!r}")

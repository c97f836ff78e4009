"""Export / import circuits without loss.

Formats: ``node-link`` (circuitkit's own JSON, networkx node-link data plus version fields),
``graphml`` and ``gexf`` (networkx readwrite), ``mib`` (the circuit JSON of EAP-IG and the
Mechanistic Interpretability Benchmark: ``cfg`` / ``nodes`` / ``edges``) and
``attribution-graph`` (circuit-tracer's JSON, opened by Neuronpedia's graph viewer: ``metadata``
/ ``qParams`` / ``nodes`` / ``links``). Files are written to a temp file and renamed, and are
fully serialised before anything is written, so a failing export leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import networkx as nx
from networkx.readwrite import json_graph

from circuitkit import names
from circuitkit.atomic import write_bytes
from circuitkit.circuit.graph import EDGE_ATTRS, NODE_ATTRS, Circuit, edge_attrs, node_attrs

FORMAT_VERSION = 1
FORMAT_NAME = "circuitkit-circuit"
FORMATS = ("node-link", "graphml", "gexf", "mib", "attribution-graph")
_SUFFIX = {".graphml": "graphml", ".gexf": "gexf"}
_NONE_KEY = "_none_attrs"  # GraphML / GEXF cannot hold None: list the None-valued attributes instead
_GRAPH_KEY = "circuitkit_graph"  # graph attributes as JSON (GEXF keeps no graph attributes)


def _version() -> str:
    from circuitkit import __version__

    return __version__


def _header() -> dict[str, Any]:
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "circuitkit_version": _version()}


def _check_header(data: Any, where: str) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ValueError(f"{where} is not a circuitkit circuit (no format={FORMAT_NAME!r} field); "
                         "pass format='mib' or 'attribution-graph' for those files, or re-export it with circuitkit")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        hint = "upgrade circuitkit" if isinstance(version, int) and version > FORMAT_VERSION else "re-export it"
        raise ValueError(f"{where} has circuit format_version {version!r}; this circuitkit "
                         f"({_version()}) reads version {FORMAT_VERSION}: {hint}")


def _graph_attrs(circuit: Circuit) -> dict[str, Any]:
    return {k: v for k, v in circuit.graph.graph.items()}


def _rebuild(graph: nx.MultiDiGraph, where: str) -> Circuit:
    try:
        return Circuit(graph)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{where} holds an invalid circuit: {exc}") from None


# --- node-link JSON --------------------------------------------------------------------------
def to_node_link(circuit: Circuit) -> dict[str, Any]:
    data = json_graph.node_link_data(circuit.graph, edges="links")
    return {**_header(), **data}


def from_node_link(data: dict[str, Any], where: str = "node-link data") -> Circuit:
    _check_header(data, where)
    try:
        graph = json_graph.node_link_graph(data, directed=True, multigraph=True, edges="links")
    except (KeyError, TypeError, nx.NetworkXError) as exc:
        raise ValueError(f"{where} is malformed node-link JSON ({exc!r}); re-export it with circuitkit") from None
    return _rebuild(nx.MultiDiGraph(graph), where)


# --- GraphML / GEXF --------------------------------------------------------------------------
def _flatten(circuit: Circuit) -> nx.MultiDiGraph:
    """A copy without None values (recorded per element in ``_none_attrs``) and with graph
    attributes as one JSON string."""
    flat = nx.MultiDiGraph()
    flat.graph[_GRAPH_KEY] = json.dumps({**_header(), "graph": _graph_attrs(circuit)})

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
        header = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        header = None
    _check_header(header, where)
    out = nx.MultiDiGraph()
    out.graph.update(header.get("graph", {}))

    def restore(data: dict[str, Any], drop: tuple[str, ...]) -> dict[str, Any]:
        data = {k: v for k, v in data.items() if k not in drop}
        for key in filter(None, str(data.pop(_NONE_KEY, "")).split(",")):
            data[key] = None
        return data

    for node, data in graph.nodes(data=True):
        out.add_node(str(node), **restore(data, drop_node))
    for u, v, k, data in graph.edges(keys=True, data=True):
        out.add_edge(str(u), str(v), key=str(k), **restore(data, drop_edge))
    return _rebuild(out, where)


def _to_graphml(circuit: Circuit) -> bytes:
    buffer = io.BytesIO()
    nx.write_graphml(_flatten(circuit), buffer)
    return buffer.getvalue()


def _from_graphml(raw: bytes, where: str) -> Circuit:
    try:
        graph = nx.read_graphml(io.BytesIO(raw), node_type=str, edge_key_type=str, force_multigraph=True)
    except Exception as exc:  # the XML parser raises several types
        raise ValueError(f"{where} is not valid GraphML ({exc}); re-export it with circuitkit") from None
    return _unflatten(graph, where)


def _to_gexf(circuit: Circuit) -> bytes:
    flat = _flatten(circuit)
    # GEXF stores no graph attributes except the graph's name: the JSON header goes there.
    flat.graph = {"name": flat.graph[_GRAPH_KEY]}
    buffer = io.BytesIO()
    nx.write_gexf(flat, buffer)
    return buffer.getvalue()


def _from_gexf(raw: bytes, where: str) -> Circuit:
    try:
        graph = nx.read_gexf(io.BytesIO(raw), node_type=str)
    except Exception as exc:
        raise ValueError(f"{where} is not valid GEXF ({exc}); re-export it with circuitkit") from None
    if not isinstance(graph, nx.MultiDiGraph):
        graph = nx.MultiDiGraph(graph)
    return _unflatten(graph, where, drop_node=("label",), drop_edge=("id",))


# --- EAP-IG / MIB circuit JSON ---------------------------------------------------------------
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
    cfg["circuitkit"] = {**_header(), "graph": _graph_attrs(circuit)}
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
        _check_header(ours, where)
        graph_attrs = dict(ours.get("graph", {}))
    else:
        graph_attrs = {"method": "eap-ig", "task": "", "n_layers": cfg.get("n_layers"), "n_heads": cfg.get("n_heads"),
                       "has_mlp": None, "meta": {"d_model": cfg["d_model"]} if "d_model" in cfg else {}}
    method, task = graph_attrs.get("method", ""), graph_attrs.get("task", "")
    graph = nx.MultiDiGraph()
    graph.graph.update(graph_attrs)
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
    circuit = _rebuild(graph, where)
    circuit._infer_shape()
    return circuit


# --- circuit-tracer attribution-graph JSON ---------------------------------------------------
_FEATURE_TYPES = {"input": "embedding", "logits": "logit", "head": "attention head",
                  "mlp": "mlp reconstruction error", "feature": "cross layer transcoder"}


def to_attribution_graph(circuit: Circuit, prompt: str = "", prompt_tokens: list[str] | None = None,
                         slug: str | None = None) -> dict[str, Any]:
    """circuit-tracer's graph JSON: in-graph and pruned elements alike (influence = |score|).

    Each node / link also carries ``circuitkit`` (its id and attributes) so the file reads back
    without loss; viewers ignore the extra key.
    """
    n_layers = circuit.n_layers if circuit.n_layers is not None else 0
    n_heads = circuit.graph.graph.get("n_heads") or 0
    js_ids: dict[str, str] = {}
    nodes = []
    for node_id in circuit.all_nodes:
        data = circuit.graph.nodes[node_id]
        parsed = names.parse_node(node_id)
        ctx = parsed.pos if parsed.pos is not None else 0
        layer: str
        if parsed.kind == "input":
            layer, feature = "E", 0
        elif parsed.kind == "logits":
            layer, feature = str(n_layers), 0
        elif parsed.kind == "head":
            layer, feature = str(parsed.layer), parsed.head
        elif parsed.kind == "mlp":
            layer, feature = str(parsed.layer), n_heads  # MLP numbered after the layer's heads
        else:
            layer, feature = str(parsed.layer), parsed.index
        js_id = f"{layer}_{feature}_{ctx}"
        if parsed.kind == "feature" and parsed.hook:
            js_id = f"{layer}_{parsed.hook}.{feature}_{ctx}"
        js_ids[node_id] = js_id
        score = data["score"]
        nodes.append({
            "node_id": js_id, "feature": feature, "layer": layer, "ctx_idx": ctx,
            "feature_type": _FEATURE_TYPES[parsed.kind], "token_prob": 0.0,
            "is_target_logit": parsed.kind == "logits", "jsNodeId": js_id,
            "clerp": f"{node_id} ({data['method']} {score:+.3g})" if score is not None else node_id,
            "influence": abs(score) if score is not None else None, "activation": score,
            "circuitkit": {"id": node_id, "attrs": dict(data)},
        })
    links = []
    for key in circuit.all_edges:
        parent, child = _endpoints(key)
        data = circuit.edge_data(key)
        links.append({"source": js_ids[parent], "target": js_ids[child],
                      "weight": data["score"] if data["score"] is not None else 0.0,
                      "circuitkit": {"id": key, "attrs": dict(data)}})
    metadata = {"slug": slug or f"{circuit.task or 'circuit'}-{circuit.method or 'circuit'}", "scan": circuit.method,
                "prompt_tokens": list(prompt_tokens or []), "prompt": prompt, "node_threshold": None,
                "schema_version": 1, "circuitkit": {**_header(), "graph": _graph_attrs(circuit)}}
    q_params = {"pinnedIds": [js_ids[n] for n in circuit.nodes], "supernodes": [], "linkType": "both",
                "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": q_params, "nodes": nodes, "links": links}


def _endpoints(edge_id: str) -> tuple[str, str]:
    e = names.parse_edge(edge_id)
    return e.parent, e.child


def from_attribution_graph(data: dict[str, Any], where: str = "attribution-graph JSON") -> Circuit:
    """Read an attribution graph. Files written by circuitkit come back exactly; circuit-tracer
    files map embeddings to ``input@ctx``, error nodes to ``m{layer}@ctx``, transcoder features to
    ``f{layer}.transcoder.{feature}@ctx`` and logits to ``f{layer}.logit.{token}@ctx`` with
    ``score`` = activation (influence for logits) and link weights as edge scores."""
    if not isinstance(data, dict) or not {"metadata", "nodes", "links"} <= set(data):
        raise ValueError(f"{where} is not an attribution graph: it needs 'metadata', 'nodes' and 'links' keys")
    ours = (data.get("metadata") or {}).get("circuitkit")
    graph = nx.MultiDiGraph()
    try:
        if ours is not None:
            _check_header(ours, where)
            graph.graph.update(ours.get("graph", {}))
            for node in data["nodes"]:
                graph.add_node(node["circuitkit"]["id"], **node["circuitkit"]["attrs"])
            for link in data["links"]:
                key = link["circuitkit"]["id"]
                parent, child = _endpoints(key)
                graph.add_edge(parent, child, key=key, **link["circuitkit"]["attrs"])
        else:
            method = str(data["metadata"].get("scan") or "attribution-graph")
            graph.graph.update(method=method, task=str(data["metadata"].get("slug", "")), meta={
                "prompt": data["metadata"].get("prompt", ""), "prompt_tokens": data["metadata"].get("prompt_tokens", [])})
            ids: dict[str, str] = {}
            for node in data["nodes"]:
                node_id = _tracer_node_id(node)
                ids[node["node_id"]] = node_id
                score = node.get("activation") if node.get("feature_type") != "logit" else node.get("influence")
                extra = {"clerp": str(node.get("clerp", "")), "source_id": str(node["node_id"])}
                graph.add_node(node_id, **node_attrs(node_id, score, method, graph.graph["task"], True, **extra))
            for link in data["links"]:
                parent, child = ids[link["source"]], ids[link["target"]]
                if names.parse_node(child).kind == "head":
                    raise ValueError(f"link into {child!r} needs a q/k/v input, which attribution graphs do not have")
                key = names.edge(parent, child)
                graph.add_edge(parent, child, key=key, **edge_attrs(key, float(link.get("weight", 0.0)), method,
                                                                    graph.graph["task"], True))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where} has a malformed node or link ({exc!r})") from None
    circuit = _rebuild(graph, where)
    circuit._infer_shape()
    return circuit


def _tracer_node_id(node: dict[str, Any]) -> str:
    kind = node.get("feature_type", "")
    ctx = int(node["ctx_idx"])
    if kind == "embedding":
        return names.with_pos(names.INPUT, ctx)
    layer = int(node["layer"])
    if kind == "logit":
        return names.with_pos(names.feature(layer, "logit", int(node["feature"])), ctx)
    if "error" in kind:
        return names.mlp(layer, ctx)
    return names.with_pos(names.feature(layer, "transcoder", int(node["feature"])), ctx)


# --- files -----------------------------------------------------------------------------------
def _serialise(circuit: Circuit, fmt: str) -> bytes:
    if fmt == "node-link":
        return (json.dumps(to_node_link(circuit), indent=1) + "\n").encode()
    if fmt == "graphml":
        return _to_graphml(circuit)
    if fmt == "gexf":
        return _to_gexf(circuit)
    if fmt == "mib":
        return (json.dumps(to_mib(circuit), indent=1) + "\n").encode()
    if fmt == "attribution-graph":
        return (json.dumps(to_attribution_graph(circuit)) + "\n").encode()
    raise ValueError(f"unknown circuit format {fmt!r}; choose one of {FORMATS}")


def _format_for(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown circuit format {fmt!r}; choose one of {FORMATS}")
        return fmt
    return _SUFFIX.get(path.suffix.lower(), "json")


def atomic_write(path: str | os.PathLike, payload: bytes) -> Path:
    """Write ``payload`` to a temp file beside ``path`` and rename it into place."""
    return write_bytes(path, payload)


def save_circuit(circuit: Circuit, path: str | os.PathLike, format: str | None = None) -> Path:
    """Write ``circuit`` to ``path``; ``format`` defaults from the suffix (``.graphml``, ``.gexf``,
    else node-link JSON)."""
    path = Path(path)
    fmt = _format_for(path, format)
    payload = _serialise(circuit, "node-link" if fmt == "json" else fmt)
    return atomic_write(path, payload)


def load_circuit(path: str | os.PathLike, format: str | None = None) -> Circuit:
    """Read a circuit file of any supported format (JSON flavours are recognised by their keys)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no circuit file at {path}")
    fmt = _format_for(path, format)
    raw = path.read_bytes()
    where = str(path)
    if fmt == "graphml":
        return _from_graphml(raw, where)
    if fmt == "gexf":
        return _from_gexf(raw, where)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where} is not valid JSON ({exc}); give a circuit file written by circuitkit, EAP-IG or circuit-tracer") from None
    if fmt == "json":
        fmt = _sniff(data, where)
    if fmt == "node-link":
        return from_node_link(data, where)
    if fmt == "mib":
        return from_mib(data, where)
    return from_attribution_graph(data, where)


def _sniff(data: Any, where: str) -> str:
    if isinstance(data, dict):
        if "format" in data or "format_version" in data:
            return "node-link"
        if {"metadata", "nodes", "links"} <= set(data):
            return "attribution-graph"
        if {"nodes", "edges"} <= set(data):
            return "mib"
    raise ValueError(f"{where} is no known circuit format: expected circuitkit node-link JSON (format/format_version), "
                     "EAP-IG/MIB JSON (cfg/nodes/edges) or an attribution graph (metadata/nodes/links)")


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, src_format: str | None = None) -> Path:
    """Read ``src`` and write it as ``to`` (nothing is written if ``src`` cannot be read)."""
    if to not in FORMATS:
        raise ValueError(f"unknown export format {to!r}; choose one of {FORMATS}")
    return save_circuit(load_circuit(src, src_format), dst, to)


__all__ = ["EDGE_ATTRS", "FORMATS", "FORMAT_VERSION", "NODE_ATTRS", "atomic_write", "convert", "from_attribution_graph",
           "from_mib", "from_node_link", "load_circuit", "save_circuit", "to_attribution_graph", "to_mib",
           "to_node_link"]

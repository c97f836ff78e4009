"""circuit-tracer's attribution-graph JSON (opened by Neuronpedia's graph viewer): ``metadata`` /
``qParams`` / ``nodes`` / ``links``."""

from __future__ import annotations

from typing import Any

import networkx as nx

from circuitkit import names
from circuitkit.circuit.core import Circuit, edge_attrs, node_attrs
from circuitkit.circuit.io.common import check_header, endpoints, graph_attrs, header, rebuild

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
        parent, child = endpoints(key)
        data = circuit.edge_data(key)
        links.append({"source": js_ids[parent], "target": js_ids[child],
                      "weight": data["score"] if data["score"] is not None else 0.0,
                      "circuitkit": {"id": key, "attrs": dict(data)}})
    metadata = {"slug": slug or f"{circuit.task or 'circuit'}-{circuit.method or 'circuit'}", "scan": circuit.method,
                "prompt_tokens": list(prompt_tokens or []), "prompt": prompt, "node_threshold": None,
                "schema_version": 1, "circuitkit": {**header(), "graph": graph_attrs(circuit)}}
    q_params = {"pinnedIds": [js_ids[n] for n in circuit.nodes], "supernodes": [], "linkType": "both",
                "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": q_params, "nodes": nodes, "links": links}

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
            check_header(ours, where)
            graph.graph.update(ours.get("graph", {}))
            for node in data["nodes"]:
                graph.add_node(node["circuitkit"]["id"], **node["circuitkit"]["attrs"])
            for link in data["links"]:
                key = link["circuitkit"]["id"]
                parent, child = endpoints(key)
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
    circuit = rebuild(graph, where)
    circuit.infer_shape()
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

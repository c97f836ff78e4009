"""circuit-tracer's attribution-graph JSON (its local viewer and Neuronpedia's open it):
``metadata`` / ``qParams`` / ``nodes`` / ``links``, plus the ``graph-metadata.json`` index its viewer
lists graphs from.

What circuit-tracer 0.5's data model (``circuit_tracer.frontend.graph_models.Model``) and viewer
need, and so what `to_attribution_graph` writes:

* ``metadata``: ``slug`` (the file's stem: the viewer loads ``graph_data/{slug}.json``), ``scan``,
  ``transcoder_list``, ``prompt_tokens`` (the viewer lays nodes out over them and hides every node
  of a prompt with fewer than two tokens), ``prompt``;
* nodes: ``node_id``, ``feature`` (an int; ``layer_feature_ctx`` must be unique), ``layer``,
  ``ctx_idx``, ``feature_type``, ``jsNodeId``; the logit node's ``clerp`` reads
  ``Output "token" (p=0.123)`` (the viewer parses the token and the probability from it);
* links: one per (source, target) pair.

circuitkit's graph maps onto it as: ``input`` -> the embedding of the prompt token at its position,
a head -> ``feature_type="attention head"`` (``feature`` = head index), an MLP -> ``"mlp
reconstruction error"`` (a whole MLP is what no transcoder explains; ``feature`` = ``n_heads``),
an SAE feature -> ``"cross layer transcoder"`` with circuit-tracer's Cantor-paired ``feature``, an
SAE's error node -> ``"mlp reconstruction error"`` (numbered after the layer's heads and MLP),
``logits`` -> the answer token's logit with its probability. Nodes without a position sit at the
answer position (the last prompt token). Only in-graph nodes and edges become nodes and links;
an edge into a head's q, k and v is one link whose ``weight`` is the sum, with ``q`` / ``k`` / ``v``
kept on the link. ``weight`` is ``-score``: circuit-tracer's links are positive when the source
supports its target, circuitkit's scores negative for what a behaviour needs.

Every node and link also carries ``circuitkit`` (its ids and attributes), and
``metadata.circuitkit`` the graph attributes and the pruned elements, so the file reads back
without loss; circuit-tracer's model and viewer ignore the extra keys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import networkx as nx
import torch

from circuitkit import names
from circuitkit.atomic import write_text
from circuitkit.circuit.core import Circuit, edge_attrs, node_attrs
from circuitkit.circuit.io.common import check_header, endpoints, graph_attrs, header, rebuild
from circuitkit.errors import InputError

INDEX_FILE = "graph-metadata.json"

_FEATURE_TYPES = {"input": "embedding", "logits": "logit", "head": "attention head",
                  "mlp": "mlp reconstruction error", "feature": "cross layer transcoder",
                  "error": "mlp reconstruction error"}
# An SAE's error node is numbered after the layer's heads and MLP, one number per hook kind.
_ERROR_SLOTS = ("resid_pre", "attn_out", "z", "resid_mid", "mlp_out", "resid_post")


def cantor_pair(x: int, y: int) -> int:
    """circuit-tracer's feature id of transcoder feature ``y`` in layer ``x``."""
    return (x + y) * (x + y + 1) // 2 + y


def cantor_unpair(z: int) -> tuple[int, int]:
    """``(x, y)`` with ``cantor_pair(x, y) == z``."""
    w = (int((8 * z + 1) ** 0.5) - 1) // 2
    while (w + 1) * (w + 2) // 2 <= z:  # float square roots can be one off for large z
        w += 1
    while w * (w + 1) // 2 > z:
        w -= 1
    y = z - w * (w + 1) // 2
    return w - y, y


def example_prompt(model, task, index: int = 0) -> dict[str, Any]:
    """The prompt an attribution graph is drawn over: ``task``'s clean prompt ``index`` up to its
    answer position, with the model's probability of the right (and wrong) answer there.
    JSON-able; `circuitkit.discover` stores it as ``circuit.meta["example_prompt"]``."""
    positions = task.answer_pos[index]
    # a task with answers at several positions: the graph is drawn at the first one
    j = 0 if positions.ndim == 0 else int(torch.nonzero(positions >= 0)[0, 0])
    pos = int(positions) if positions.ndim == 0 else int(positions[j])
    tokens = task.clean[index, : pos + 1]
    with torch.no_grad():
        probs = torch.softmax(model(tokens[None].to(next(model.parameters()).device))[0, -1].float(), -1).cpu()

    def to_str(ids) -> list[str]:  # a model without a tokenizer shows token ids
        return [model.tokenizer.decode([int(t)]) if model.tokenizer is not None else str(int(t)) for t in ids]

    def first(ids) -> int:  # [batch, n], [batch, k] or [batch, k, n]: the first id at that position
        row = ids[index] if positions.ndim == 0 else ids[index][j]
        return int(row.flatten()[0]) if row.numel() else -1

    logits = []
    wrong = [] if task.wrong_answers is None else [first(task.wrong_answers)]
    for tok in (first(task.answers), *wrong):
        if tok >= 0:
            logits.append({"token": to_str([tok])[0], "token_id": tok, "prob": float(probs[tok])})
    return {"prompt": "".join(to_str(tokens.tolist())), "prompt_tokens": to_str(tokens.tolist()),
            "token_ids": [int(t) for t in tokens], "logits": logits}


def _example(circuit: Circuit, prompt_tokens, prompt, logit) -> dict[str, Any]:
    found = dict(circuit.meta.get("example_prompt") or {})
    if prompt_tokens is not None:
        found = {"prompt_tokens": [str(t) for t in prompt_tokens]}
    if prompt is not None:
        found["prompt"] = str(prompt)
    if logit is not None:
        token, prob = logit
        found["logits"] = [{"token": str(token), "token_id": 0, "prob": float(prob)}]
    tokens = found.get("prompt_tokens") or []
    if len(tokens) < 2:
        raise InputError("circuit-tracer's viewer lays nodes out over the prompt's tokens (and hides every node of a "
                         f"prompt with fewer than two); this circuit has {len(tokens)}: pass prompt_tokens=[...] "
                         "(and logit=(answer token, probability)), or set circuit.meta['example_prompt'] = "
                         "circuitkit.circuit.io.example_prompt(model, task) (circuitkit.discover records it)")
    found.setdefault("prompt", "".join(tokens))
    return found


def to_attribution_graph(circuit: Circuit, *, slug: str | None = None, prompt_tokens: list[str] | None = None,
                         prompt: str | None = None, logit: tuple[str, float] | None = None,
                         scan: str | None = None) -> dict[str, Any]:
    """circuit-tracer's graph JSON of the in-graph part of ``circuit`` (see the module docstring).

    The prompt comes from ``circuit.meta["example_prompt"]`` (see `example_prompt`) unless
    ``prompt_tokens`` (and ``prompt``, ``logit=(answer token, probability)``) are given.
    ``scan``: circuit-tracer's name for the model / transcoder set (default: the model's name).
    """
    example = _example(circuit, prompt_tokens, prompt, logit)
    tokens, token_ids = example["prompt_tokens"], example.get("token_ids") or [0] * len(example["prompt_tokens"])
    last = len(tokens) - 1
    n_layers = circuit.n_layers if circuit.n_layers is not None else 0
    n_heads = circuit.graph.graph.get("n_heads") or 0
    answers = example.get("logits") or [{"token": "logits", "token_id": 0, "prob": 0.0}]
    js_ids: dict[str, str] = {}
    nodes, seen = [], set()
    for node_id in circuit.nodes:
        data = circuit.graph.nodes[node_id]
        parsed = names.parse_node(node_id)
        ctx = parsed.pos if parsed.pos is not None else last
        if not 0 <= ctx <= last:
            raise InputError(f"node {node_id!r} sits at position {ctx}, past the prompt's {len(tokens)} tokens; "
                             "pass the prompt the circuit was found on (prompt_tokens=...)")
        extra: dict[str, Any] = {}
        if parsed.kind == "input":
            layer, feature = "E", ctx
            nid, js = f"E_{token_ids[ctx]}_{ctx}", f"E_{token_ids[ctx]}-{ctx}"
        elif parsed.kind == "logits":
            layer, answer = str(n_layers + 1), answers[0]
            feature = int(answer["token_id"])
            nid, js = f"{layer}_{feature}_{ctx}", f"L_{feature}-{ctx}"
            extra = {"token_prob": float(answer["prob"]), "is_target_logit": True,
                     "clerp": f'Output "{answer["token"]}" (p={float(answer["prob"]):.3f})'}
        elif parsed.kind == "feature":
            layer, feature = str(parsed.layer), cantor_pair(parsed.layer, parsed.index)
            nid = f"{layer}_{parsed.index}_{ctx}"
            if nid in seen:  # two SAEs in one layer
                nid = f"{layer}_{parsed.hook}.{parsed.index}_{ctx}"
            js = nid
        elif parsed.kind == "error":
            layer = str(parsed.layer)
            slot = _ERROR_SLOTS.index(parsed.hook) if parsed.hook in _ERROR_SLOTS else len(_ERROR_SLOTS)
            feature = n_heads + 1 + slot
            nid = js = f"{layer}_{feature}_{ctx}"
        else:
            layer = str(parsed.layer)
            feature = parsed.head if parsed.kind == "head" else n_heads  # the MLP numbered after the layer's heads
            nid = js = f"{layer}_{feature}_{ctx}"
        seen.add(nid)
        js_ids[node_id] = nid
        score = data["score"]
        node = {"node_id": nid, "feature": feature, "layer": layer, "ctx_idx": ctx,
                "feature_type": _FEATURE_TYPES[parsed.kind], "token_prob": 0.0, "is_target_logit": False,
                "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": js,
                "clerp": f"{node_id} ({data['method']} {score:+.3g})" if score is not None else node_id,
                "influence": None, "activation": score, **extra,
                "circuitkit": {"id": node_id, "attrs": dict(data)}}
        nodes.append(node)
    pairs: dict[tuple[str, str], list[str]] = {}
    for key in circuit.edges:
        pairs.setdefault(endpoints(key), []).append(key)
    links = []
    for (parent, child), keys in pairs.items():
        link: dict[str, Any] = {"source": js_ids[parent], "target": js_ids[child], "weight": 0.0}
        for key in keys:
            data = circuit.edge_data(key)
            weight = -data["score"] + 0.0 if data["score"] is not None else 0.0
            link["weight"] += weight
            if data["qkv"]:
                link[data["qkv"]] = weight
        link["circuitkit"] = {"ids": keys, "attrs": {k: dict(circuit.edge_data(k)) for k in keys}}
        links.append(link)
    pruned_nodes = {n: dict(circuit.graph.nodes[n]) for n in circuit.all_nodes if not circuit.graph.nodes[n]["in_graph"]}
    pruned_edges = {k: dict(circuit.edge_data(k)) for k in circuit.all_edges if not circuit.edge_data(k)["in_graph"]}
    metadata = {"slug": slug or f"{circuit.task or 'circuit'}-{circuit.method or 'circuit'}",
                "scan": scan or str(circuit.meta.get("model") or circuit.method or "circuitkit"),
                "transcoder_list": sorted({names.parse_node(n).hook for n in circuit.nodes
                                           if names.parse_node(n).kind == "feature"}),
                "prompt_tokens": list(tokens), "prompt": example["prompt"], "node_threshold": None,
                "schema_version": 1,
                "circuitkit": {**header(), "graph": graph_attrs(circuit),
                               "pruned": {"nodes": pruned_nodes, "edges": pruned_edges}}}
    q_params = {"pinnedIds": [n["node_id"] for n in nodes], "supernodes": [], "linkType": "both",
                "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": q_params, "nodes": nodes, "links": links}


def index_entry(graph: dict[str, Any]) -> dict[str, Any]:
    """The graph's entry in ``graph-metadata.json``: its metadata without circuitkit's key."""
    return {k: v for k, v in graph["metadata"].items() if k != "circuitkit"}


def update_index(directory: str | os.PathLike, graph: dict[str, Any]) -> Path:
    """Add (or replace, by slug) ``graph``'s entry in ``directory/graph-metadata.json``, the list
    circuit-tracer's viewer offers (``{"graphs": [metadata, ...]}``); written atomically."""
    path = Path(directory) / INDEX_FILE
    index: dict[str, Any] = {"graphs": []}
    if path.exists():
        try:
            index = json.loads(path.read_text())
            if not isinstance(index.get("graphs"), list):
                raise InputError("no 'graphs' list")
        except (json.JSONDecodeError, ValueError, AttributeError) as exc:
            raise InputError(f"{path} is not a circuit-tracer graph index ({exc}); move it away and export again") from None
    entry = index_entry(graph)
    index["graphs"] = [g for g in index["graphs"] if g.get("slug") != entry["slug"]] + [entry]
    return write_text(path, json.dumps(index, indent=2) + "\n")


def from_attribution_graph(data: dict[str, Any], where: str = "attribution-graph JSON") -> Circuit:
    """Read an attribution graph. Files written by circuitkit come back exactly; circuit-tracer
    files map embeddings to ``input@ctx``, error nodes to ``m{layer}@ctx``, transcoder features to
    ``f{layer}.transcoder.{index}@ctx`` (the index decoded from the Cantor-paired ``feature``) and
    logits to ``f{layer}.logit.{token}@ctx``, with ``score`` = activation (influence for logits)
    and ``-weight`` as edge scores (circuitkit's sign: what the target needs is negative)."""
    if not isinstance(data, dict) or not {"metadata", "nodes", "links"} <= set(data):
        raise InputError(f"{where} is not an attribution graph: it needs 'metadata', 'nodes' and 'links' keys")
    ours = (data.get("metadata") or {}).get("circuitkit")
    graph = nx.MultiDiGraph()
    try:
        if ours is not None:
            check_header(ours, where)
            graph.graph.update(ours.get("graph", {}))
            pruned = ours.get("pruned", {"nodes": {}, "edges": {}})
            for node in data["nodes"]:
                graph.add_node(node["circuitkit"]["id"], **node["circuitkit"]["attrs"])
            for node_id, attrs in pruned["nodes"].items():
                graph.add_node(node_id, **attrs)
            edges = {k: v for link in data["links"] for k, v in link["circuitkit"]["attrs"].items()}
            for key, attrs in {**edges, **pruned["edges"]}.items():
                parent, child = endpoints(key)
                graph.add_edge(parent, child, key=key, **attrs)
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
                    raise InputError(f"link into {child!r} needs a q/k/v input, which attribution graphs do not have")
                key = names.edge(parent, child)
                graph.add_edge(parent, child, key=key, **edge_attrs(key, -float(link.get("weight", 0.0)) + 0.0, method,
                                                                    graph.graph["task"], True))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{where} has a malformed node or link ({exc!r})") from None
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
    feature = int(node["feature"])
    paired_layer, index = cantor_unpair(feature)
    if paired_layer != layer:  # not Cantor-paired (older files): the id's middle part is the index
        index = int(str(node["node_id"]).split("_")[1])
    return names.with_pos(names.feature(layer, "transcoder", index), ctx)

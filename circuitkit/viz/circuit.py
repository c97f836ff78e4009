"""Plotly rendering of a `Circuit`, laid out by layer.

Input at the bottom, logits at the top; a layer's heads side by side with its MLP beside them
(slightly above: the MLP reads the heads). Edge width grows with |score|, colour shows the sign,
the dash which input of a head an edge feeds (q dotted, k dashed, v dash-dotted, each arriving a
little apart; the legend says so), hovering a node or an edge's midpoint shows the component,
score and method (and, for an SAE feature given ``cards``, its feature card: top activations,
promoted and suppressed tokens); a positioned circuit's token blocks are labelled with its
prompt's tokens. A slider built into the figure filters edges by |score| (each step toggles trace
visibility and retitles the figure with what is left), so the filter works in notebooks and in
static HTML alike.

A position-resolved circuit of heads and MLPs (edges ``a0.h0@3->a1.h0@3<k>``) also gets a faint
dotted line from a head's node at a key / value position to its node at a later position that
writes: attention moving information across tokens inside the head.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from circuitkit import names
from circuitkit.errors import InputError
from circuitkit.viz.page import write_figure_html
from circuitkit.viz.sae import feature_hover

POSITIVE = "#2563eb"
NEGATIVE = "#dc2626"
UNSIGNED = "#9ca3af"
KIND_COLOURS = {"input": "#374151", "logits": "#374151", "head": "#0d9488", "mlp": "#d97706", "feature": "#7c3aed",
                "error": "#6b7280", "site": "#2563eb"}
KIND_SYMBOLS = {"input": "diamond", "logits": "diamond", "head": "circle", "mlp": "square", "feature": "circle",
                "error": "x", "site": "square"}
MLP_LIFT = 0.4  # an MLP sits a little above its layer's heads so that head -> MLP edges are visible
QKV_DASH = {"q": "dot", "k": "dash", "v": "dashdot", None: "solid"}
QKV_OFFSET = {"q": -0.15, "k": 0.0, "v": 0.15, None: 0.0}  # q, k and v edges between two nodes stay apart
ATTENTION_LEGEND = "attention inside a head (key / value position to a later query)"
QKV_LEGEND = {"q": "into a head's query", "k": "into a head's key", "v": "into a head's value",
              None: "into an MLP or the logits"}


def layout(circuit, node_ids: list[str]) -> dict[str, tuple[float, float]]:
    """``node id -> (x, y)``: y by layer (input -1, logits n_layers), x by head within a layer; with
    positions, one block of columns per token (positions across, layers up), SAE features and
    error nodes side by side within their position and depth."""
    n_layers = circuit.n_layers if circuit.n_layers is not None else 0
    n_heads = circuit.graph.graph.get("n_heads") or 1
    # SAE features, error nodes and sites: side by side within their (position, depth) row.
    rows: dict[tuple[int, float], list[str]] = {}
    for node_id in node_ids:
        parsed = names.parse_node(node_id)
        if parsed.kind in ("feature", "error", "site"):
            rows.setdefault((parsed.pos or 0, names.depth(parsed, n_layers)), []).append(node_id)
    order_in_row = {n: i for row in rows.values() for i, n in enumerate(names.sort_nodes(row, n_layers))}
    width = block_width(circuit, node_ids)
    positions: dict[str, tuple[float, float]] = {}
    for node_id in node_ids:
        parsed = names.parse_node(node_id)
        block = (parsed.pos or 0) * width
        centre = (n_heads - 1) / 2
        if parsed.kind == "input":
            xy = (centre, -1.0)
        elif parsed.kind == "logits":
            xy = (centre, float(n_layers))
        elif parsed.kind == "head":
            xy = (float(parsed.head), float(parsed.layer))
        elif parsed.kind == "mlp":
            xy = (float(n_heads) + 0.5, parsed.layer + MLP_LIFT)
        else:
            xy = (float(order_in_row[node_id]), names.depth(parsed, n_layers))
        positions[node_id] = (xy[0] + block, xy[1])
    return positions


def block_width(circuit, node_ids: list[str]) -> int:
    """Columns per token position in `layout`: room for a layer's heads and MLP, or for the
    most SAE features / error nodes sharing one (position, depth) row."""
    n_layers = circuit.n_layers if circuit.n_layers is not None else 0
    n_heads = circuit.graph.graph.get("n_heads") or 1
    rows: dict[tuple[int, float], int] = {}
    for node_id in node_ids:
        parsed = names.parse_node(node_id)
        if parsed.kind in ("feature", "error", "site"):
            key = (parsed.pos or 0, names.depth(parsed, n_layers))
            rows[key] = rows.get(key, 0) + 1
    return max(n_heads + 2, max(rows.values(), default=0) + 1)


def prompt_tokens(circuit) -> list[str] | None:
    """The tokens of the prompt a positioned circuit is drawn over (``meta["example_prompt"]``,
    which `feature_circuit` and ``discover`` record), else None."""
    example = circuit.meta.get("example_prompt") or {}
    tokens = example.get("prompt_tokens")
    return list(tokens) if tokens else None


def _token_axis(circuit, node_ids: list[str], tokens: list[str]) -> dict[str, Any]:
    """x-axis ticks under each token block: the token (escaped, newline as ↵) and its position."""
    width = block_width(circuit, node_ids)
    n_heads = circuit.graph.graph.get("n_heads") or 1
    centre = (n_heads - 1) / 2  # where input@p and logits sit within their block
    return {"tickvals": [p * width + centre for p in range(len(tokens))],
            "ticktext": [f"{html.escape(t).replace(chr(10), '↵')}<br>@{p}" for p, t in enumerate(tokens)]}


def _attention_links(node_ids: list[str], edge_ids: list[str]) -> list[tuple[str, str]]:
    """The position-resolved heads' links drawn (`attention_links`):
    from a head's node at ``p`` that a drawn key or value edge enters to its node at a later
    ``q`` that a drawn edge leaves, what the head's attention at ``q`` reads from ``p``."""
    read = {names.parse_edge(e).child for e in edge_ids if names.parse_edge(e).qkv in ("k", "v")}
    write = {names.parse_edge(e).parent for e in edge_ids}
    return [(u, v) for u, v in names.attention_links(node_ids) if u in read and v in write]


def _ends(pos: dict[str, tuple[float, float]], edge_id: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """Where an edge's line starts and ends: at its child, a q / k / v edge lands a little apart."""
    e = names.parse_edge(edge_id)
    (x1, y1) = pos[e.child]
    return pos[e.parent], (x1 + QKV_OFFSET[e.qkv], y1)


def _fmt(score: float | None) -> str:
    return "—" if score is None else f"{score:+.4g}"


def _thresholds(values: list[float], n_steps: int) -> list[float]:
    """0 followed by evenly spaced quantiles of |score| (distinct, ascending)."""
    values = sorted(abs(v) for v in values)
    if not values:
        return [0.0]
    steps = [0.0]
    for i in range(1, n_steps):
        q = values[min(len(values) - 1, int(round(i / n_steps * (len(values) - 1))))]
        if q > steps[-1]:
            steps.append(q)
    return steps


def _bucket(value: float | None, thresholds: list[float]) -> int:
    if value is None:
        return 0
    index = 0
    for i, t in enumerate(thresholds):
        if abs(value) >= t:
            index = i
    return index


def circuit_figure(circuit, edges: str = "in_graph", interactive: bool = True, n_steps: int = 8,
                   thresholds: list[float] | None = None, title: str | None = None,
                   height: int | None = None, cards: Mapping[str, Any] | None = None,
                   tokens: Sequence[str] | bool | None = None) -> go.Figure:
    """A Plotly figure of ``circuit``.

    Args:
        edges: ``"in_graph"`` (the circuit) or ``"all"`` (every scored edge, filter with the slider).
        interactive: add a slider whose steps are |score| thresholds (hide weaker edges).
        n_steps / thresholds: the slider's thresholds (quantiles of |score| unless given).
        cards: ``{feature id: FeatureCard}`` (`circuitkit.sae.feature_cards`, ids without
            ``@pos``): hovering a feature node shows its card (top activations, promoted and
            suppressed tokens).
        tokens: the x-axis labels of a positioned circuit's token blocks; None (default) takes
            the circuit's recorded prompt (`prompt_tokens`) when its nodes have positions,
            False draws no labels.

    Examples:
        >>> import circuitkit as ck
        >>> fig = ck.circuit_figure(ck.reference_circuit("induction-handbuilt"), title="induction")
        >>> type(fig).__name__, fig.layout.title.text
        ('Figure', 'induction')
    """
    if edges not in ("in_graph", "all"):
        raise InputError(f"edges must be 'in_graph' or 'all', got {edges!r}")
    g = circuit.graph
    edge_ids = circuit.edges if edges == "in_graph" else circuit.all_edges
    node_ids = circuit.nodes if edges == "in_graph" else circuit.all_nodes
    if not node_ids:
        raise InputError("the circuit has no in-graph nodes to draw; pass edges='all' or prune less")
    pos = layout(circuit, node_ids)
    edge_level = bool(edge_ids)
    items = edge_ids if edge_level else [n for n in node_ids if names.parse_node(n).kind not in ("input", "logits")]
    scores = [circuit.edge_data(e)["score"] if edge_level else g.nodes[e]["score"] for e in items]
    if thresholds is None:
        thresholds = _thresholds([s for s in scores if s is not None], n_steps) if interactive else [0.0]
    thresholds = sorted({0.0, *map(float, thresholds)})
    n_buckets = len(thresholds)
    max_abs = max((abs(s) for s in scores if s is not None), default=1.0) or 1.0

    fig = go.Figure()
    bucket_traces: list[list[int]] = [[] for _ in range(n_buckets)]
    if edge_level:
        for b in range(n_buckets):
            members = [(e, s) for e, s in zip(edge_ids, scores, strict=True) if _bucket(s, thresholds) == b]
            if not members:
                continue
            strength = max((abs(s) for _, s in members if s is not None), default=0.0) / max_abs
            line_width = 1.0 + 6.0 * math.sqrt(strength)
            for colour, sign in ((POSITIVE, 1), (NEGATIVE, -1), (UNSIGNED, None)):
                signed = [e for e, s in members if (s is None and sign is None) or
                          (s is not None and sign is not None and (s >= 0) == (sign > 0))]
                for qkv in names.QKV + (None,):
                    group = [e for e in signed if names.parse_edge(e).qkv == qkv]
                    if not group:
                        continue
                    xs: list[float | None] = []
                    ys: list[float | None] = []
                    for e in group:
                        (x0, y0), (x1, y1) = _ends(pos, e)
                        xs += [x0, x1, None]
                        ys += [y0, y1, None]
                    bucket_traces[b].append(len(fig.data))
                    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                             line={"color": colour, "width": line_width, "dash": QKV_DASH[qkv]},
                                             opacity=0.75, name=f"edges |score| ≥ {thresholds[b]:.3g}"))
            # hover targets at edge midpoints (lines only hover at their points)
            mids = [(e, s) for e, s in members]
            bucket_traces[b].append(len(fig.data))
            fig.add_trace(go.Scatter(
                x=[(_ends(pos, e)[0][0] + _ends(pos, e)[1][0]) / 2 for e, _ in mids],
                y=[(_ends(pos, e)[0][1] + _ends(pos, e)[1][1]) / 2 for e, _ in mids],
                mode="markers", marker={"size": 6, "color": "rgba(0,0,0,0)"}, showlegend=False,
                hovertext=[f"<b>{e}</b><br>score: {_fmt(s)}<br>method: {circuit.edge_data(e)['method']}"
                           f"<br>task: {circuit.edge_data(e)['task']}" for e, s in mids],
                hoverinfo="text"))
        links = _attention_links(node_ids, edge_ids)
        if links:  # what attention carries inside a head, from a key / value position to a later query's
            xs, ys = [], []
            for u, v in links:
                xs += [pos[u][0], pos[v][0], None]
                ys += [pos[u][1], pos[v][1], None]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", name=ATTENTION_LEGEND,
                                     line={"color": UNSIGNED, "width": 1.5, "dash": "dot"}, opacity=0.9))
        # the legend: one entry per edge input drawn, and the two signs (empty traces)
        drawn = {names.parse_edge(e).qkv for e in edge_ids}
        for qkv in names.QKV + (None,):
            if qkv in drawn:
                fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=QKV_LEGEND[qkv], hoverinfo="skip",
                                         line={"color": "#6b7280", "width": 2, "dash": QKV_DASH[qkv]}))
        # circuitkit's estimators score m(edge removed) - m(clean): needed edges are negative
        signs = (((POSITIVE, "score > 0: removing it raises the metric"),
                  (NEGATIVE, "score < 0: removing it lowers the metric (needed)"))
                 if circuit.method != "edge-pruning" else ((POSITIVE, "share of steps the gate was open"),))
        for colour, what in signs:
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=what, hoverinfo="skip",
                                     line={"color": colour, "width": 4}))

    def _card_text(node_id: str) -> str:
        parsed = names.parse_node(node_id)
        card = (cards or {}).get(names.format_node(parsed, with_pos=False)) if parsed.kind == "feature" else None
        return "" if card is None else "<br>" + feature_hover(card)

    def node_trace(ids: list[str], visible: bool = True) -> go.Scatter:
        colours, sizes, text = [], [], []
        for n in ids:
            d = g.nodes[n]
            score = d["score"]
            colours.append(KIND_COLOURS[d["kind"]] if score is None else (POSITIVE if score >= 0 else NEGATIVE))
            sizes.append(16 if score is None else 12 + 18 * math.sqrt(abs(score) / max_abs))
            text.append(f"<b>{n}</b><br>kind: {d['kind']}<br>score: {_fmt(score)}<br>method: {d['method']}"
                        f"<br>task: {d['task']}" + _card_text(n))
        return go.Scatter(
            x=[pos[n][0] for n in ids], y=[pos[n][1] for n in ids], mode="markers+text", text=ids,
            textposition="top center", hovertext=text, hoverinfo="text", showlegend=False, visible=visible,
            marker={"size": sizes, "color": colours, "symbol": [KIND_SYMBOLS[g.nodes[n]["kind"]] for n in ids],
                    "line": {"width": 1, "color": "#111827"}})

    if edge_level:
        fig.add_trace(node_trace(node_ids))
    else:
        fixed = [n for n in node_ids if n not in items]
        if fixed:
            fig.add_trace(node_trace(fixed))
        for b in range(n_buckets):
            group = [n for n, s in zip(items, scores, strict=True) if _bucket(s, thresholds) == b]
            if group:
                bucket_traces[b].append(len(fig.data))
                fig.add_trace(node_trace(group))

    n_layers = circuit.n_layers if circuit.n_layers is not None else 0
    n_heads = circuit.graph.graph.get("n_heads") or 1
    xs = [x for x, _ in pos.values()]
    # the whole model's width, so a small circuit keeps heads in their columns
    x_range = [min(-0.6, *xs) - 0.2, max(n_heads + 1.1, *xs) + 0.2]
    positioned = any(names.parse_node(n).pos is not None for n in node_ids)
    if tokens is None:
        tokens = prompt_tokens(circuit) if positioned else None
    xaxis: dict[str, Any] = {"visible": False, "range": x_range}
    if tokens:  # not False, not empty
        xaxis = {"range": [x_range[0], max(x_range[1], block_width(circuit, node_ids) * len(tokens) - 0.8)],
                 "showgrid": False, "zeroline": False, "tickangle": 0,
                 **_token_axis(circuit, node_ids, list(tokens))}
    def label(j: int) -> str:
        """The title at slider step ``j``: what the figure shows at that threshold."""
        shown = [item for item, s in zip(items, scores, strict=True) if _bucket(s, thresholds) >= j]
        if edge_level:
            n_nodes = len({n for e in shown for n in (names.parse_edge(e).parent, names.parse_edge(e).child)})
            counts = f"{n_nodes} nodes, {len(shown)} edges"
        else:
            counts = f"{len(shown)} nodes"
        if title is not None:
            return title if j == 0 else f"{title} · |score| ≥ {thresholds[j]:.3g}: {counts}"
        cut = f" (|score| ≥ {thresholds[j]:.3g})" if j else ""
        return f"{circuit.method or 'circuit'} · {circuit.task or 'task'} · {counts}{cut}"

    fig.update_layout(
        title=label(0), template="plotly_white", showlegend=edge_level,
        legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.0, "yanchor": "bottom"}, hovermode="closest", height=height or 160 + 110 * (n_layers + 2),
        xaxis=xaxis, margin={"l": 20, "r": 20, "t": 60, "b": 70 if tokens else 40},  # room for token labels
        yaxis={"tickvals": [-1, *range(n_layers), n_layers],
               "ticktext": ["input", *[f"layer {i}" for i in range(n_layers)], "logits"],
               "zeroline": False, "showgrid": True},
    )
    if interactive and n_buckets > 1:
        always = set(range(len(fig.data))) - {i for b in bucket_traces for i in b}
        steps = []
        for j, t in enumerate(thresholds):
            visible = [i in always or any(i in bucket_traces[b] for b in range(j, n_buckets))
                       for i in range(len(fig.data))]
            steps.append({"method": "update", "args": [{"visible": visible}, {"title": {"text": label(j)}}],
                          "label": f"{t:.3g}"})
        fig.update_layout(sliders=[{"active": 0, "steps": steps, "currentvalue": {"prefix": "|score| ≥ "},
                                    "pad": {"t": 30}}])
    return fig


def circuit_html(circuit, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Standalone HTML (Plotly's JavaScript bundled in, opens offline), written atomically.

    Examples:
        >>> import os, shutil, tempfile
        >>> import circuitkit as ck
        >>> circuit = ck.reference_circuit("induction-handbuilt")
        >>> path = ck.circuit_html(circuit, os.path.join(tempfile.mkdtemp(), "induction.html"))
        >>> path.name, path.read_text().startswith("<!doctype html>")
        ('induction.html', True)
        >>> shutil.rmtree(path.parent)  # the page bundles Plotly: about 5 MB
    """
    fig = circuit_figure(circuit, **kwargs)
    return write_figure_html(path, fig)

"""The one place that formats and parses component names.

Node ids follow the convention that EAP-IG and the Mechanistic Interpretability Benchmark
exchange: ``input``, ``a{layer}.h{head}`` (attention head), ``m{layer}`` (MLP), ``logits``.
An edge is ``parent->child``; when the child is a head, ``<q>``, ``<k>`` or ``<v>`` names the
input it enters through (``a0.h3->a2.h1<k>``). A position suffix ``@{pos}`` may follow a node
(``a1.h0@5``); a position-resolved residual-stream edge carries the same position at both ends
(``a0.h0@3->a1.h0@3<k>``, `edge_at`). SAE features are ``f{layer}.{hook}.{index}`` (``f2.resid_pre.117``); the error
term of the SAE at that site (what its features leave unexplained) is ``e{layer}.{hook}``
(``e2.resid_pre@7``).
Whole-layer sites (used by activation patching and the logit lens) are ``{hook}.{layer}`` for
``resid_pre``, ``resid_mid``, ``resid_post`` and ``attn_out`` (``resid_pre.3``, ``attn_out.1@4``).

Nobody else builds these strings with f-strings: call `head`, `mlp`, `edge`,
`feature` and parse with `parse_node` / `parse_edge`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from transformer_lens.utilities import get_act_name

from circuitkit.errors import InputError, InputTypeError

INPUT = "input"
LOGITS = "logits"
QKV = ("q", "k", "v")

NodeKind = Literal["input", "head", "mlp", "logits", "feature", "error", "site"]
SITE_HOOKS = ("resid_pre", "attn_out", "resid_mid", "resid_post")

_HEAD_RE = re.compile(r"^a(\d+)\.h(\d+)$")
_MLP_RE = re.compile(r"^m(\d+)$")
_SITE_RE = re.compile(r"^(resid_pre|attn_out|resid_mid|resid_post)\.(\d+)$")
_FEATURE_RE = re.compile(r"^f(\d+)\.([A-Za-z_][A-Za-z0-9_]*)\.(\d+)$")
_ERROR_RE = re.compile(r"^e(\d+)\.([A-Za-z_][A-Za-z0-9_]*)$")
_EDGE_RE = re.compile(r"^(?P<parent>[^\s<>]+?)->(?P<child>[^\s<>]+?)(?:<(?P<qkv>[qkv])>)?$")


@dataclass(frozen=True, order=True)
class Node:
    """A parsed component name. ``layer`` is None for ``input`` and ``logits``."""

    kind: NodeKind
    layer: int | None = None
    head: int | None = None
    pos: int | None = None
    hook: str | None = None  # SAE features: the hook point's short name, e.g. "resid_pre"
    index: int | None = None  # SAE features: the latent index

    @property
    def name(self) -> str:
        """The node id without any position suffix."""
        return format_node(self, with_pos=False)

    def __str__(self) -> str:
        return format_node(self)

    def sort_key(self, n_layers: int | None = None) -> tuple[float, int, int]:
        """A key that orders nodes by computation order: input, a0.*, m0, a1.*, ..., logits."""
        return (depth(self, n_layers), self.head or 0, self.index or 0)


def head(layer: int, head_index: int, pos: int | None = None) -> str:
    """``a{layer}.h{head}``, with ``@{pos}`` when a position is given."""
    return _with_pos(f"a{int(layer)}.h{int(head_index)}", pos)


def mlp(layer: int, pos: int | None = None) -> str:
    """``m{layer}``, with ``@{pos}`` when a position is given."""
    return _with_pos(f"m{int(layer)}", pos)


def site(hook: str, layer: int, pos: int | None = None) -> str:
    """``{hook}.{layer}`` (``resid_pre.3``, ``attn_out.1``): a whole-layer activation site."""
    if hook not in SITE_HOOKS:
        raise InputError(f"site hook must be one of {SITE_HOOKS}, got {hook!r}")
    return _with_pos(f"{hook}.{int(layer)}", pos)


def hook_short(hook: str) -> str:
    """The short name of a hook point in feature ids: ``blocks.1.hook_resid_pre`` -> ``resid_pre``."""
    return hook.split(".")[-1].removeprefix("hook_")


def feature(layer: int, hook: str, index: int, pos: int | None = None) -> str:
    """``f{layer}.{hook}.{index}``: latent ``index`` of the SAE on ``hook`` at ``layer``
    (``@{pos}`` appended when a position is given)."""
    return _with_pos(f"f{int(layer)}.{hook_short(hook)}.{int(index)}", pos)


def error(layer: int, hook: str, pos: int | None = None) -> str:
    """``e{layer}.{hook}``: the error term of the SAE on ``hook`` at ``layer`` (``@{pos}`` optional)."""
    return _with_pos(f"e{int(layer)}.{hook_short(hook)}", pos)


def with_pos(name: str, pos: int | None) -> str:
    """Add (or replace) the position suffix of a node id."""
    base = name.split("@", 1)[0]
    return _with_pos(base, pos)


def _with_pos(name: str, pos: int | None) -> str:
    return name if pos is None else f"{name}@{int(pos)}"


def parse_node(name: str) -> Node:
    """Parse a node id; raises ``ValueError`` naming the accepted forms when it is malformed."""
    if not isinstance(name, str):
        raise InputTypeError(f"node id must be a string, got {type(name).__name__}")
    return _parse_node(name)


@functools.lru_cache(maxsize=1 << 16)  # graphs parse the same ids over and over; Node is frozen
def _parse_node(name: str) -> Node:
    base, pos = name, None
    if "@" in name:
        base, _, pos_text = name.partition("@")
        if not pos_text.isdigit():
            raise InputError(f"bad position in node id {name!r}: expected '@<integer>', e.g. 'a1.h0@5'")
        pos = int(pos_text)
    if base == INPUT:
        return Node("input", pos=pos)
    if base == LOGITS:
        return Node("logits", pos=pos)
    if m := _HEAD_RE.match(base):
        return Node("head", layer=int(m[1]), head=int(m[2]), pos=pos)
    if m := _MLP_RE.match(base):
        return Node("mlp", layer=int(m[1]), pos=pos)
    if m := _FEATURE_RE.match(base):
        return Node("feature", layer=int(m[1]), hook=m[2], index=int(m[3]), pos=pos)
    if m := _ERROR_RE.match(base):
        return Node("error", layer=int(m[1]), hook=m[2], pos=pos)
    if m := _SITE_RE.match(base):
        return Node("site", layer=int(m[2]), hook=m[1], pos=pos)
    raise InputError(
        f"unknown component name {name!r}: use 'input', 'logits', 'a<layer>.h<head>' (e.g. 'a3.h5'), "
        "'m<layer>' (e.g. 'm2'), '<hook>.<layer>' for hook resid_pre / attn_out / resid_mid / "
        "resid_post (e.g. 'resid_pre.2'), 'f<layer>.<hook>.<index>' (an SAE feature) or 'e<layer>.<hook>' "
        "(an SAE's error term), optionally followed by '@<pos>'"
    )


def format_node(node: Node, with_pos: bool = True) -> str:
    pos = node.pos if with_pos else None
    if node.kind == "input":
        return _with_pos(INPUT, pos)
    if node.kind == "logits":
        return _with_pos(LOGITS, pos)
    if node.kind == "head":
        return head(node.layer, node.head, pos)
    if node.kind == "mlp":
        return mlp(node.layer, pos)
    if node.kind == "feature":
        return _with_pos(f"f{node.layer}.{node.hook}.{node.index}", pos)
    if node.kind == "error":
        return _with_pos(f"e{node.layer}.{node.hook}", pos)
    if node.kind == "site":
        return site(node.hook, node.layer, pos)
    raise InputError(f"unknown node kind {node.kind!r}")


def is_valid_node(name: str) -> bool:
    try:
        parse_node(name)
    except (ValueError, TypeError):
        return False
    return True


def edge(parent: str, child: str, qkv: str | None = None) -> str:
    """``parent->child`` (``<q|k|v>`` appended when the child is a head)."""
    child_node = parse_node(child)
    parse_node(parent)
    if child_node.kind == "head":
        if qkv not in QKV:
            raise InputError(f"an edge into head {child!r} needs qkv='q', 'k' or 'v', got {qkv!r}")
        return f"{parent}->{child}<{qkv}>"
    if qkv is not None:
        raise InputError(f"only edges into attention heads take a q/k/v input; {child!r} is not a head")
    return f"{parent}->{child}"


@dataclass(frozen=True)
class Edge:
    parent: str
    child: str
    qkv: str | None = None

    @property
    def name(self) -> str:
        return edge(self.parent, self.child, self.qkv)

    def __str__(self) -> str:
        return self.name


def parse_edge(name: str) -> Edge:
    """Parse ``parent->child[<q|k|v>]``; raises ``ValueError`` with the expected form."""
    m = _EDGE_RE.match(name) if isinstance(name, str) else None
    if not m:
        raise InputError(
            f"malformed edge id {name!r}: expected 'parent->child', with '<q>', '<k>' or '<v>' "
            "appended when the child is a head (e.g. 'a0.h3->a2.h1<k>', 'm1->logits')"
        )
    parent, child, qkv = m["parent"], m["child"], m["qkv"]
    child_node = parse_node(child)
    parse_node(parent)
    if child_node.kind == "head" and qkv is None:
        raise InputError(f"edge {name!r} enters head {child!r} without naming <q>, <k> or <v>")
    if child_node.kind != "head" and qkv is not None:
        raise InputError(f"edge {name!r} names <{qkv}> but {child!r} is not an attention head")
    return Edge(parent, child, qkv)


def edge_at(edge_id: str, pos: int | None) -> str:
    """The residual-stream edge ``edge_id`` at token position ``pos``: both endpoints carry
    ``@pos`` (``edge_at("a0.h0->a1.h0<k>", 3)`` -> ``'a0.h0@3->a1.h0@3<k>'``); ``pos=None`` drops
    the positions. The parent's output at ``pos`` entering the child's input at ``pos``: the
    residual stream carries nothing across positions (attention does, inside the child)."""
    e = parse_edge(edge_id)
    return edge(with_pos(e.parent, pos), with_pos(e.child, pos), e.qkv)


def edges_at(edge_ids, n_pos: int) -> list[str]:
    """Every edge of ``edge_ids`` at every position ``0..n_pos-1``, position-major (all edges
    at position 0 first): the labels of a position-resolved edge score matrix
    ``[n_pos, n_edges]`` flattened."""
    parsed = [parse_edge(e) for e in edge_ids]
    if any(parse_node(e.parent).pos is not None or parse_node(e.child).pos is not None for e in parsed):
        raise InputError("edges_at takes edge ids without positions (e.g. 'a0.h0->a1.h0<k>')")
    out = []
    for pos in range(int(n_pos)):
        out += [f"{e.parent}@{pos}->{e.child}@{pos}" + (f"<{e.qkv}>" if e.qkv else "") for e in parsed]
    return out


def edge_position(edge_id: str) -> tuple[str, int | None]:
    """``(edge id without positions, position)`` of a residual-stream edge: ``None`` when neither
    endpoint carries a position; ``ValueError`` when only one does or they differ (a
    residual-stream edge joins a node's output and a reader's input at the same token)."""
    e = parse_edge(edge_id)
    p, c = parse_node(e.parent), parse_node(e.child)
    if p.pos != c.pos:
        raise InputError(
            f"edge {edge_id!r}: a position-resolved edge has the same position at both ends "
            f"(e.g. 'a0.h0@3->a1.h0@3<k>'), got {p.pos} and {c.pos}")
    return (edge_id if p.pos is None else edge(p.name, c.name, e.qkv)), p.pos


def is_edge(name: str) -> bool:
    return isinstance(name, str) and "->" in name


def depth(node: Node | str, n_layers: int | None = None) -> float:
    """Computation order: input -1, head in layer L at L, MLP in layer L at L + 0.5, logits last."""
    if isinstance(node, str):
        node = parse_node(node)
    if node.kind == "input":
        return -1.0
    if node.kind == "logits":
        return float(n_layers) if n_layers is not None else float("inf")
    if node.kind == "head":
        return float(node.layer)
    if node.kind == "mlp":
        return node.layer + 0.5
    # A feature (or a whole-layer site) sits on the hook it reads: resid_pre before the layer's heads.
    offsets = {"resid_pre": -0.25, "attn_out": 0.25, "resid_mid": 0.25, "mlp_out": 0.75, "resid_post": 0.75}
    return node.layer + offsets.get(node.hook or "", 0.0)


def sort_nodes(names, n_layers: int | None = None) -> list[str]:
    """Sort node ids in computation order."""
    return sorted(names, key=lambda n: (parse_node(n).sort_key(n_layers), n))


def all_nodes(n_layers: int, n_heads: int, has_mlp: bool = True) -> list[str]:
    """Every node of a model's graph, in computation order."""
    nodes = [INPUT]
    for layer in range(n_layers):
        nodes += [head(layer, h) for h in range(n_heads)]
        if has_mlp:
            nodes.append(mlp(layer))
    nodes.append(LOGITS)
    return nodes


def model_components(model) -> list[str]:
    """Every head and MLP of ``model`` (the nodes ablation acts on), in computation order."""
    cfg = model.cfg
    nodes = all_nodes(cfg.n_layers, cfg.n_heads, has_mlp=not cfg.attn_only)
    return [n for n in nodes if n not in (INPUT, LOGITS)]


def all_edges(n_layers: int, n_heads: int, has_mlp: bool = True, parallel: bool = False) -> list[str]:
    """Every edge of the residual-stream graph: each upstream node into each later input.

    Heads read q, k and v separately; an MLP reads its layer's attention outputs (it sits after
    them) unless the blocks are ``parallel`` (GPT-J / GPT-NeoX: attention and MLP both read the
    block's input, so an MLP's parents are the nodes of earlier layers); logits read everything.
    """
    nodes = all_nodes(n_layers, n_heads, has_mlp)
    edges: list[str] = []
    for child in nodes[1:]:
        child_node = parse_node(child)
        child_depth = depth(child_node, n_layers)
        if parallel and child_node.kind == "mlp":
            child_depth = float(child_node.layer)  # level with its layer's heads
        parents = [p for p in nodes if depth(p, n_layers) < child_depth]
        if child_node.kind == "head":
            edges += [edge(p, child, x) for x in QKV for p in parents]
        else:
            edges += [edge(p, child) for p in parents]
    return edges


# --- hook points (TransformerLens names; the same names exist on TransformerBridge) -----------
# Every hook name circuitkit uses is built here, by TransformerLens's own get_act_name.

def hook(short: str, layer: int | None = None) -> str:
    """The full TransformerLens hook name: ``hook("pattern", 1)`` -> ``'blocks.1.attn.hook_pattern'``.

    ``short`` is any name `transformer_lens.utilities.get_act_name` knows (``resid_pre``,
    ``z``, ``q``, ``pattern``, ``mlp_in``, ``q_input`` ...); ``layer`` None gives top-level hooks.
    """
    return get_act_name(short, layer)


def output_hook(node: Node | str) -> str:
    """The hook whose value is what this node writes into the residual stream."""
    node = parse_node(node) if isinstance(node, str) else node
    if node.kind == "input":
        return "hook_embed"
    if node.kind == "head":
        return hook("z", node.layer)
    if node.kind == "mlp":
        return hook("mlp_out", node.layer)
    raise InputError(f"{format_node(node)!r} writes nothing into the residual stream")


def head_input_hook(layer: int, qkv: str) -> str:
    """The per-head input hook (needs ``model.set_use_split_qkv_input(True)``)."""
    if qkv not in QKV:
        raise InputError(f"qkv must be one of {QKV}, got {qkv!r}")
    return hook(f"{qkv}_input", layer)


# --- range checks: the one place that says whether a component exists in a model -----------

def check_in_model(node: Node | str, n_layers: int, n_heads: int, has_mlp: bool = True, *,
                   model_name: str | None = None, what: str = "head") -> Node:
    """Raise ``ValueError`` naming the valid range when a head or MLP is not in the model.

    ``what`` names the heads in the message (``"key/value head"``, ``"sender head"``); other node
    kinds pass unchecked. Returns the parsed node.
    """
    node = parse_node(node) if isinstance(node, str) else node
    label = format_node(node)
    model = f"model {model_name!r}" if model_name else "the model"
    if node.kind == "head" and not (0 <= node.layer < n_layers and 0 <= node.head < n_heads):
        raise InputError(
            f"{what} {label!r} is out of range: {model} has {n_layers} layers x {n_heads} {what}s "
            f"(a0.h0 .. a{n_layers - 1}.h{n_heads - 1})"
        )
    if node.kind == "mlp":
        if not has_mlp:
            raise InputError(f"{label!r}: {model} is attention-only and has no MLPs")
        if not 0 <= node.layer < n_layers:
            raise InputError(f"MLP {label!r} is out of range: {model} has {n_layers} layers")
    return node


def check_model_components(model, components, kinds: tuple[str, ...] = ("head", "mlp"), *,
                           n_heads: int | None = None, what: str = "head",
                           purpose: str = "used here") -> list[Node]:
    """Parse component ids and check each exists in ``model`` (`check_in_model`) and is
    of one of ``kinds``; ``ValueError`` naming the bad one and the accepted forms."""
    cfg = model.cfg
    forms = {"head": "heads (a<L>.h<H>)", "mlp": "MLPs (m<L>)"}
    nodes = []
    for comp in components:
        node = parse_node(comp) if isinstance(comp, str) else comp
        if node.kind not in kinds:
            if kinds == ("head",):
                raise InputError(f"{format_node(node)!r} is not an attention head; give heads as "
                                 "'a<layer>.h<head>', e.g. 'a1.h0'")
            accepted = " and ".join(forms.get(k, k) for k in kinds)
            raise InputError(f"only {accepted} can be {purpose}, not {format_node(node)!r}")
        nodes.append(check_in_model(node, cfg.n_layers, n_heads or cfg.n_heads, not cfg.attn_only,
                                    model_name=cfg.model_name, what=what))
    return nodes


def attention_links(node_ids: Iterable[str]) -> list[tuple[str, str]]:
    """``(a{L}.h{H}@p, a{L}.h{H}@q)`` for ``p < q`` among the position-resolved heads in
    ``node_ids``: in the position-resolved graph a head's inputs at ``p`` (its key and value)
    reach its output at every later ``q`` inside the head, through attention, not along an edge.
    Reachability (pruning dangling edges, routes to the logits) follows these links too."""
    by_head: dict[str, list[int]] = {}
    for node_id in node_ids:
        n = parse_node(node_id)
        if n.kind == "head" and n.pos is not None:
            by_head.setdefault(n.name, []).append(n.pos)
    return [(with_pos(h, p), with_pos(h, q)) for h, ps in by_head.items()
            for p in sorted(ps) for q in sorted(ps) if p < q]

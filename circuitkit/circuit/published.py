"""Published reference circuits of real models, as data with their provenance, to score a discovery
with `roc_auc` on the real weights (``load_model("gpt2")``,
``load_model("attn-only-4l")``) when the user has them.

Each entry names the paper, the model it was found in, the components by class as the paper lists
them, and the edges at circuitkit's granularity. The edges are the field's edge-level ground truth:
the definitions in ACDC's repository (Conmy et al. 2023), which auto-circuit ships as
``ioi_true_edges`` / ``greaterthan_true_edges`` / ``docstring_true_edges`` and which ACDC, edge
pruning and auto-circuit score discoveries against; ``tests/circuit/test_circuit_published.py``
checks them edge by edge against auto-circuit's own sets. circuitkit's graph has no positions and
one ``input`` node (token + position embeddings), so an edge here stands for the papers' path at
every position (theirs are position-specific: IOI's name movers read IO from END). Where the paper
and ACDC's definition differ, the entry says how (``granularity``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from circuitkit import names
from circuitkit.circuit.core import Circuit
from circuitkit.errors import UnknownNameError

IOI_CLASSES = {  # Wang et al. 2022, "Interpretability in the Wild", Fig. 2 and Sec. 3: 26 heads in 7 classes
    "duplicate_token": ["a0.h1", "a0.h10", "a3.h0"],
    "previous_token": ["a2.h2", "a4.h11"],
    "induction": ["a5.h5", "a5.h8", "a5.h9", "a6.h9"],
    "s_inhibition": ["a7.h3", "a7.h9", "a8.h6", "a8.h10"],
    "name_mover": ["a9.h6", "a9.h9", "a10.h0"],
    "negative_name_mover": ["a10.h7", "a11.h10"],
    "backup_name_mover": ["a9.h0", "a9.h7", "a10.h1", "a10.h2", "a10.h6", "a10.h10", "a11.h2", "a11.h9"],
}

GREATER_THAN_CLASSES = {  # ACDC's grouping of Hanna et al. 2023's circuit (acdc/greaterthan/utils.py)
    "attn_0.1": ["a0.h1"],
    "attn_0.3_0.5": ["a0.h3", "a0.h5"],
    "early_mlps": ["m0", "m1", "m2", "m3"],
    "mid_attns": ["a5.h5", "a6.h1", "a6.h9", "a7.h10", "a8.h11", "a9.h1"],
    "late_mlps": ["m8", "m9", "m10", "m11"],
}
GREATER_THAN_PAPER_HEADS = ["a5.h1", "a5.h5", "a6.h1", "a6.h9", "a7.h10", "a8.h8", "a8.h11", "a9.h1"]  # Sec. 3

DOCSTRING_CLASSES = {  # Heimersheim & Janiak 2023, "A circuit for Python docstrings in a 4-layer attention-only transformer"
    "mover": ["a3.h0", "a3.h6"],
    "induction": ["a2.h0"],
    "arg_movers": ["a1.h4", "a1.h2"],
    "previous_token": ["a0.h5"],
}

QKV = ("q", "k", "v")


def _later(a: str, b: str) -> bool:
    """Whether node ``b`` reads node ``a`` in the residual-stream graph (a strictly earlier layer,
    or a head before the MLP of its layer; ``input`` feeds and ``logits`` reads everything)."""
    if a == names.INPUT or b == names.LOGITS:
        return True
    pa, pb = names.parse_node(a), names.parse_node(b)
    return pa.layer < pb.layer or (pa.layer == pb.layer and pa.kind == "head" and pb.kind == "mlp")


def _receivers(nodes: Iterable[str], qkv: Sequence[str]) -> list[tuple[str, str | None]]:
    """``(node, input)`` pairs: each head on the given inputs, each MLP / the logits on its one input."""
    return [(n, x) for n in nodes for x in (qkv if names.parse_node(n).kind == "head" else (None,))]


def _connect(senders: Iterable[str], receivers: Iterable[tuple[str, str | None]]) -> list[str]:
    return [names.edge(s, r, x) for s in senders for r, x in receivers if s != r and _later(s, r)]


def _layer(node: str) -> int:
    return 0 if node == names.INPUT else names.parse_node(node).layer


def _ioi_edges() -> list[str]:
    """ACDC's IOI edges (acdc/ioi/utils.py): the paper's class-to-class paths (Fig. 2) on the inputs
    the paper names, plus every MLP between a connection's senders and receivers as both (the paper
    lets the paths run through MLPs); the MLPs are left out of the paths into the logits, as in
    auto-circuit's position-free set."""
    c = IOI_CLASSES
    movers = ("name_mover", "negative_name_mover", "backup_name_mover")
    paths: list[tuple[str, str, tuple[str, ...]]] = [
        ("input", "previous_token", QKV), ("input", "duplicate_token", QKV), ("input", "s_inhibition", ("q",)),
        *[("input", m, ("k", "v")) for m in movers],
        ("previous_token", "induction", ("k", "v")),
        ("induction", "s_inhibition", ("k", "v")), ("duplicate_token", "s_inhibition", ("k", "v")),
        *[("s_inhibition", m, ("q",)) for m in movers],
        *[(m, "logits", ()) for m in movers],
    ]
    edges: list[str] = []
    for sender, receiver, qkv in paths:
        senders = [names.INPUT] if sender == "input" else list(c[sender])
        receivers = [names.LOGITS] if receiver == "logits" else list(c[receiver])
        mlps = [] if receiver == "logits" else [
            names.mlp(layer) for layer in range(min(map(_layer, senders)), max(map(_layer, receivers)))]
        edges += _connect(senders + mlps, _receivers(receivers, qkv) + _receivers(mlps, ()))
    return list(dict.fromkeys(edges))


def _greater_than_edges() -> list[str]:
    """ACDC's greater-than edges (acdc/greaterthan/utils.py): input into the layer-0 heads and the
    early MLPs; the mid heads and late MLPs into the logits; the early and the late MLPs each fully
    connected among themselves; the class pairs of Hanna et al.'s Fig. 5; and, since the paper
    patches the mid heads' queries only through the MLPs, every MLP before the last mid head into
    every later MLP and into each mid head's query."""
    c = GREATER_THAN_CLASSES
    edges = _connect([names.INPUT], _receivers(c["attn_0.1"] + c["attn_0.3_0.5"] + c["early_mlps"], QKV))
    edges += _connect(c["mid_attns"] + c["late_mlps"], [(names.LOGITS, None)])
    for group in ("early_mlps", "late_mlps"):
        edges += _connect(c[group], _receivers(c[group], ()))
    for sender, receiver in (("attn_0.1", "early_mlps"), ("attn_0.1", "mid_attns"), ("attn_0.3_0.5", "mid_attns"),
                             ("early_mlps", "mid_attns"), ("mid_attns", "late_mlps")):
        edges += _connect(c[sender], _receivers(c[receiver], QKV))
    last_mid = max(map(_layer, c["mid_attns"]))
    edges += _connect([names.mlp(i) for i in range(last_mid)], _receivers([names.mlp(i) for i in range(last_mid)], ()))
    for head in c["mid_attns"]:
        edges += _connect([names.mlp(i) for i in range(_layer(head))], [(head, "q")])
    return list(dict.fromkeys(edges))


DOCSTRING_EDGES = {  # ACDC's acdc/docstring/utils.py, with the token roles auto-circuit reads each edge at
    "a0.h5->a1.h4<v>": ("B_def", "B_doc"), "input->a0.h5<v>": ("B_def", "C_def", "B_doc"),
    "input->a2.h0<q>": ("C_def",), "a0.h5->a2.h0<q>": ("C_def",), "input->a2.h0<k>": (),
    "a0.h5->a2.h0<k>": ("B_def",), "a1.h4->a2.h0<v>": (",_B",), "input->a1.h4<v>": ("B_def", "B_doc"),
    "input->a1.h2<k>": ("A_def", "B_def", "A_doc", "B_doc"), "input->a1.h2<q>": ("A_doc", "B_doc"),
    "a0.h5->a1.h2<q>": ("B_doc",), "a0.h5->a1.h2<k>": ("B_def", "B_doc"),
    **{edge: roles for mover in DOCSTRING_CLASSES["mover"] for edge, roles in {
        f"{mover}->logits": ("param_3",), f"a1.h4->{mover}<q>": ("param_3",), f"input->{mover}<v>": ("C_def",),
        f"a0.h5->{mover}<v>": ("C_def",), f"a2.h0->{mover}<k>": ("C_def",), f"a1.h2->{mover}<k>": ("A_doc", "B_doc"),
    }.items()},
}

PUBLISHED = {
    "gpt2-ioi": {
        "model": "gpt2", "shape": {"n_layers": 12, "n_heads": 12, "has_mlp": True},
        "paper": "Wang, Variengien, Conmy, Shlegeris, Steinhardt 2022, Interpretability in the Wild: a Circuit "
                 "for Indirect Object Identification in GPT-2 small (arXiv:2211.00593)",
        "classes": IOI_CLASSES,
        "granularity": "heads as the paper lists them (Fig. 2); edges are ACDC's definition (acdc/ioi/utils.py, "
                       "auto-circuit's ioi_true_edges without positions): the class-to-class paths on the inputs the "
                       "paper names, with the MLPs between them; the paper's paths are position-specific",
        "edges": _ioi_edges,
    },
    "gpt2-greater-than": {
        "model": "gpt2", "shape": {"n_layers": 12, "n_heads": 12, "has_mlp": True},
        "paper": "Hanna, Liu, Variengien 2023, How does GPT-2 compute greater-than? (arXiv:2305.00586)",
        "classes": GREATER_THAN_CLASSES,
        "granularity": "ACDC's edge-level version (acdc/greaterthan/utils.py, auto-circuit's greaterthan_true_edges), "
                       "which adds the layer-0 heads 0.1, 0.3, 0.5 and MLPs 0-3 that build the year's representation "
                       "and leaves out heads 5.1 and 8.8 of the paper's eight year-attending heads "
                       "(GREATER_THAN_PAPER_HEADS); positions are not specified",
        "edges": _greater_than_edges,
    },
    "attn-only-4l-docstring": {
        "model": "attn-only-4l", "shape": {"n_layers": 4, "n_heads": 8, "has_mlp": False},
        "paper": "Heimersheim, Janiak 2023, A circuit for Python docstrings in a 4-layer attention-only transformer "
                 "(AI Alignment Forum, u6KXXmKFbXfWzoAXn); edges as defined in ACDC (Conmy et al. 2023, arXiv:2304.14997)",
        "classes": DOCSTRING_CLASSES,
        "granularity": "ACDC's edges (acdc/docstring/utils.py, auto-circuit's docstring_true_edges); the token roles "
                       "each edge is read at are in meta['positions'] (empty: the edge is in ACDC's set at no position)",
        "edges": lambda: list(DOCSTRING_EDGES),
        "positions": DOCSTRING_EDGES,
    },
}


def published_circuit(name: str) -> Circuit:
    """The published circuit ``name`` (``gpt2-ioi``, ``gpt2-greater-than``, ``attn-only-4l-docstring``)
    as a `Circuit`; its ``meta`` holds the paper, the model, the classes and the granularity
    note (and, where the source gives them, the token roles of each edge under ``positions``)."""
    if name not in PUBLISHED:
        raise UnknownNameError(f"no published circuit {name!r}; choose one of {sorted(PUBLISHED)}")
    entry = PUBLISHED[name]
    edges = entry["edges"]()
    circuit = Circuit.from_nodes_edges((), edges, **entry["shape"])
    circuit.meta.update(model=entry["model"], paper=entry["paper"], classes=entry["classes"],
                        granularity=entry["granularity"], published=name)
    if "positions" in entry:
        circuit.meta["positions"] = {e: list(r) for e, r in entry["positions"].items()}
    return circuit

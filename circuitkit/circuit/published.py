"""Published reference circuits of GPT-2 small, as data with their provenance, to score a discovery
with :func:`~circuitkit.circuit.compare.roc_auc` on the real weights (``load_model("gpt2")``).

Each entry names the paper, the model it was found in, the components by class as the paper
lists them, and how its edges map to circuitkit's graph. circuitkit's graph has no positions and
one ``input`` node (token + position embeddings); the papers' circuits are position-specific
(IOI's name movers read the IO / S1 positions), so an edge here stands for the paper's path at
every position. Where a paper names components but not edges, only nodes are given (score at
``level="node"``).
"""

from __future__ import annotations

from circuitkit import names
from circuitkit.circuit.core import Circuit

IOI_CLASSES = {  # Wang et al. 2022, "Interpretability in the Wild", Fig. 2 and Sec. 3: 26 heads in 7 classes
    "duplicate_token": ["a0.h1", "a0.h10", "a3.h0"],
    "previous_token": ["a2.h2", "a4.h11"],
    "induction": ["a5.h5", "a5.h8", "a5.h9", "a6.h9"],
    "s_inhibition": ["a7.h3", "a7.h9", "a8.h6", "a8.h10"],
    "name_mover": ["a9.h6", "a9.h9", "a10.h0"],
    "negative_name_mover": ["a10.h7", "a11.h10"],
    "backup_name_mover": ["a9.h0", "a9.h7", "a10.h1", "a10.h2", "a10.h6", "a10.h10", "a11.h2", "a11.h9"],
}

GREATER_THAN_CLASSES = {  # Hanna et al. 2023, "How does GPT-2 compute greater-than?", Sec. 3 / Fig. 2
    "attend_to_year": ["a5.h1", "a5.h5", "a6.h1", "a6.h9", "a7.h10", "a8.h8", "a8.h11", "a9.h1"],
    "compute_greater_than": ["m8", "m9", "m10", "m11"],
}


def _later(a: str, b: str) -> bool:
    """Whether node ``b`` can read node ``a`` (a strictly earlier layer, or a head before the MLP of its layer)."""
    if b == names.LOGITS:
        return True
    pa, pb = names.parse_node(a), names.parse_node(b)
    return pa.layer < pb.layer or (pa.layer == pb.layer and pa.kind == "head" and pb.kind == "mlp")


def _ioi_edges() -> list[str]:
    """The paper's class-to-class paths (Fig. 2) as circuitkit edges, wherever the layers allow."""
    c = IOI_CLASSES
    movers = c["name_mover"] + c["negative_name_mover"] + c["backup_name_mover"]
    edges: list[str] = []

    def connect(senders, receivers, qkv):
        edges.extend(names.edge(s, r, qkv) for s in senders for r in receivers
                     if s == names.INPUT or _later(s, r))

    connect(movers, [names.LOGITS], None)  # movers write the name into the logits
    connect(c["s_inhibition"], movers, "q")  # S-inhibition steers the movers' queries away from S
    connect([names.INPUT], movers, "k")  # movers attend to and copy the name tokens
    connect([names.INPUT], movers, "v")
    connect(c["induction"] + c["duplicate_token"], c["s_inhibition"], "v")  # "S is duplicated"
    connect(c["previous_token"], c["induction"], "k")  # induction keys: the token before S1+1
    connect([names.INPUT], c["induction"], "q")
    connect([names.INPUT], c["induction"], "v")
    connect([names.INPUT], c["duplicate_token"] + c["previous_token"], "q")
    connect([names.INPUT], c["duplicate_token"] + c["previous_token"], "k")
    connect([names.INPUT], c["duplicate_token"] + c["previous_token"], "v")
    return list(dict.fromkeys(edges))


PUBLISHED = {
    "gpt2-ioi": {
        "model": "gpt2",
        "paper": "Wang, Variengien, Conmy, Shlegeris, Steinhardt 2022, Interpretability in the Wild: a Circuit "
                 "for Indirect Object Identification in GPT-2 small (arXiv:2211.00593)",
        "classes": IOI_CLASSES,
        "granularity": "heads as the paper lists them (Fig. 2); edges are its class-to-class paths at every "
                       "position (the paper's are position-specific: movers read IO/S1 from END), and the "
                       "paper's residual paths through MLPs are not separate edges here",
        "edges": _ioi_edges,
    },
    "gpt2-greater-than": {
        "model": "gpt2",
        "paper": "Hanna, Liu, Variengien 2023, How does GPT-2 compute greater-than? (arXiv:2305.00586)",
        "classes": GREATER_THAN_CLASSES,
        "granularity": "nodes only: the paper names heads and MLPs (and their order), not circuitkit edges",
        "edges": None,
    },
}


def published_circuit(name: str) -> Circuit:
    """The published circuit ``name`` (``gpt2-ioi``, ``gpt2-greater-than``) as a :class:`Circuit`;
    its ``meta`` holds the paper, the model, the classes and the granularity note."""
    if name not in PUBLISHED:
        raise KeyError(f"no published circuit {name!r}; choose one of {sorted(PUBLISHED)}")
    entry = PUBLISHED[name]
    nodes = [n for members in entry["classes"].values() for n in members]
    edges = entry["edges"]() if entry["edges"] else None
    circuit = Circuit.from_nodes_edges(nodes if edges is None else [names.INPUT, *nodes, names.LOGITS], edges or (),
                                       n_layers=12, n_heads=12, has_mlp=True)  # GPT-2 small
    circuit.meta.update(model=entry["model"], paper=entry["paper"], classes=entry["classes"],
                        granularity=entry["granularity"], published=name)
    return circuit

"""SAEs whose features are known by construction, for the hand-built induction model.

``induction-handbuilt`` keeps each kind of information in its own slice of the residual stream
(`circuitkit.zoo.handbuilt`): ``TOK`` (current token, one-hot), ``PREV`` (previous token,
written by ``a0.h0``), ``OUT`` (copied token, written by ``a1.h0``, read by ``W_U``), plus
position codes and a junk subspace. Three ReLU SAEs in SAELens's format are set analytically
(one latent per one-hot direction, encoder = decoder transposed, no biases), not trained:

* ``blocks.0.hook_resid_pre``: latent ``t`` = ``TOK[t]``;
* ``blocks.1.hook_resid_pre``: ``TOK[t]`` (``t``), ``PREV[t]`` (``V + t``);
* ``blocks.1.hook_resid_post``: ``TOK[t]``, ``PREV[t]`` (``V + t``), ``OUT[t]`` (``2V + t``);

(``V`` = vocabulary size). Position codes and the junk subspace are left to the error terms:
they are the same in every prompt at a position (or read by nobody), so mean ablation of an
error keeps what matters of them.

The feature circuit of an induction prompt ``[BOS] r1..rL r1..r(L-1)`` (query token ``q = r(L-1)``
at the last position ``E``, key position ``k`` = the first copy's ``rL``, answer ``a = rL``):
``TOK[q]@k-1`` (embedding) -> ``PREV[q]@k`` (via ``a0.h0``); ``TOK[a]@k`` and ``TOK[q]@E`` pass
through the residual stream; ``PREV[q]@k`` (key), ``TOK[q]@E`` (query) and ``TOK[a]@k`` (value)
-> ``OUT[a]@E`` (via ``a1.h0``) -> logits; each embedding feature has an edge from ``input`` at
its position. `induction_feature_circuit` applies this rule to a task's prompts (the union
over prompts); the card records it for the card's task.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from circuitkit import names
from circuitkit.atomic import write_text
from circuitkit.errors import InputError, MissingFileError
from circuitkit.models.zoo_store import CARD_FILE, ZOO_SAE_DIR, ZooCard, zoo_card, zoo_task
from circuitkit.sae import load_sae, save_sae

MODEL = "induction-handbuilt"
SAE_DIR = ZOO_SAE_DIR
SITES = (names.hook("resid_pre", 0), names.hook("resid_pre", 1), names.hook("resid_post", 1))
_SLICES = {SITES[0]: ("TOK",), SITES[1]: ("TOK", "PREV"), SITES[2]: ("TOK", "PREV", "OUT")}


def _layout(card) -> dict[str, slice]:
    return {k: slice(a, b) for k, (a, b) in card.recipe["residual_layout"].items()}


def build_induction_saes(card=None) -> dict[str, object]:
    """The three analytic SAEs (``{hook_name: StandardSAE}``) for ``induction-handbuilt``."""
    from sae_lens import StandardSAE, StandardSAEConfig

    card = card or zoo_card(MODEL)
    layout = _layout(card)
    d_model = int(card.config["d_model"])
    out = {}
    for hook in SITES:
        dims = [d for part in _SLICES[hook] for d in range(layout[part].start, layout[part].stop)]
        sae = StandardSAE(StandardSAEConfig(d_in=d_model, d_sae=len(dims), apply_b_dec_to_input=False))
        enc = torch.zeros(d_model, len(dims))
        enc[dims, torch.arange(len(dims))] = 1.0
        with torch.no_grad():
            sae.W_enc.copy_(enc)
            sae.W_dec.copy_(enc.T)
            sae.b_enc.zero_()
            sae.b_dec.zero_()
        sae.cfg.metadata.hook_name = hook
        sae.cfg.metadata.model_name = MODEL
        out[hook] = sae
    return out


def sae_dir(card=None) -> Path:
    """``saes/`` inside the model's zoo folder."""
    card = card or zoo_card(MODEL)
    if card.path is None:
        raise InputError(f"zoo card {card.name!r} has no folder")
    return Path(card.path) / SAE_DIR


def save_induction_saes(card=None) -> list[Path]:
    """Write the analytic SAEs into the model's zoo folder (``saes/<hook_name>/``)."""
    card = card or zoo_card(MODEL)
    root = sae_dir(card)
    return [save_sae(sae, root / hook) for hook, sae in build_induction_saes(card).items()]


def load_induction_saes(device: str = "cpu", folder: str | Path | None = None) -> dict[str, object]:
    """The shipped SAEs of ``induction-handbuilt`` (or those in ``folder``), ``{hook_name: SAE}``
    in computation order."""
    root = Path(folder) if folder is not None else sae_dir()
    missing = [h for h in SITES if not (root / h).is_dir()]
    if missing:
        raise MissingFileError(f"{root} lacks the SAEs {missing}; write them with "
                                "circuitkit.zoo.feature_saes.save_induction_saes()")
    return {h: load_sae(root / h, device=device) for h in SITES}


def induction_feature_circuit(task, d_vocab: int) -> tuple[list[str], list[str]]:
    """The true feature circuit (nodes, edges) of ``task``'s induction prompts, by construction."""
    tok0 = lambda t, p: names.feature(0, "resid_pre", t, p)  # noqa: E731
    tok1 = lambda t, p: names.feature(1, "resid_pre", t, p)  # noqa: E731
    prev1 = lambda t, p: names.feature(1, "resid_pre", d_vocab + t, p)  # noqa: E731
    out2 = lambda t, p: names.feature(1, "resid_post", 2 * d_vocab + t, p)  # noqa: E731
    nodes: set[str] = set()
    edges: set[str] = set()
    for row in task.clean.tolist():
        end = len(row) - 1
        q = row[end]
        keys = [j for j in range(1, end) if row[j - 1] == q]
        if len(keys) != 1:
            raise InputError(f"prompt {row} is not an induction prompt with one earlier occurrence of its last token")
        k = keys[0]
        a = row[k]
        new_edges = [
            names.edge(names.with_pos(names.INPUT, k - 1), tok0(q, k - 1)),
            names.edge(names.with_pos(names.INPUT, k), tok0(a, k)),
            names.edge(names.with_pos(names.INPUT, end), tok0(q, end)),
            names.edge(tok0(q, k - 1), prev1(q, k)),
            names.edge(tok0(a, k), tok1(a, k)),
            names.edge(tok0(q, end), tok1(q, end)),
            names.edge(prev1(q, k), out2(a, end)),
            names.edge(tok1(a, k), out2(a, end)),
            names.edge(tok1(q, end), out2(a, end)),
            names.edge(out2(a, end), names.LOGITS),
        ]
        edges.update(new_edges)
        for e in new_edges:
            parsed = names.parse_edge(e)
            nodes.update((parsed.parent, parsed.child))
    return names.sort_nodes(nodes), sorted(edges)


def feature_circuit_record(card=None, model=None) -> dict:
    """The card's ``evidence["feature_circuit"]``: the sites, the rule and the true feature circuit
    of the card's task (union over its prompts)."""
    card = card or zoo_card(MODEL)
    task = zoo_task(card, model)
    nodes, edges = induction_feature_circuit(task, int(card.config["d_vocab"]))
    return {"saes": SAE_DIR, "sites": list(SITES),
            "features": {SITES[0]: "TOK[t] = t", SITES[1]: "TOK[t] = t, PREV[t] = V + t",
                         SITES[2]: "TOK[t] = t, PREV[t] = V + t, OUT[t] = 2V + t"},
            "rule": "query TOK[q]@E, key PREV[q]@k (from TOK[q]@k-1), value TOK[a]@k -> OUT[a]@E -> logits",
            "baseline": "mean", "positions": "each", "nodes": nodes, "edges": edges}


def write_feature_circuit(folder: str | Path) -> Path:
    """Save the analytic SAEs into the model folder ``folder`` (``data/zoo/induction-handbuilt``)
    and record the feature circuit in its card (atomically)."""
    folder = Path(folder)
    path = folder / CARD_FILE
    data = json.loads(path.read_text())
    card = ZooCard.from_json(data, folder)
    save_induction_saes(card)
    data["evidence"]["feature_circuit"] = feature_circuit_record(card)
    return write_text(path, json.dumps(data, indent=2) + "\n")

"""Zoo models whose weights are set by construction (no training): their circuits are true by design.

Both models are attention-only ``HookedTransformer``s without normalization, so the residual
stream is a plain sum and each component can be given its own named subspace:

* ``TOK``  one-hot current token (the token embedding);
* ``POS``  position modulo `POS_PERIOD` (one-hot) plus a ``RAMP`` dimension ``pos / n_ctx``;
* ``PREV`` one-hot previous token, written by the previous-token head ``a0.h0``;
* ``OUT``  one-hot copied token, written by the copying head ``a1.h0``; ``W_U`` reads only this;
* ``JUNK`` written by every other head, read by nobody.

Previous-token attention from a compact position code: a query at position ``i`` matches keys at
``j = i - 1`` modulo `POS_PERIOD`, and a recency term (query bias x key ``RAMP``) makes the
nearest such key win by ``RECENCY * POS_PERIOD`` logits. Attention scale is switched off
(``use_attn_scale=False``); the constants below are attention logits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from circuitkit import names
from circuitkit.attribution import exact_edge_patching
from circuitkit.errors import InputError
from circuitkit.models.zoo_store import ZooCard, config_to_json, model_from_config, zoo_task
from circuitkit.tokenizers import bos_id, word_level_tokenizer
from circuitkit.zoo.evidence import node_evidence
from circuitkit.zoo.feature_saes import feature_circuit_record
from circuitkit.zoo.verification import ablate_each, measure

POS_PERIOD = 8  # positions are matched modulo this period, the nearest match wins
MATCH = 40.0  # attention logit of a content match (token == previous token of the key)
POS_MATCH = 18.0  # attention logit of a position match in the previous-token heads
RECENCY = 2.0  # attention logit per position of recency (keys one period further back lose 16)
VALUE_BONUS = 20.0  # retrieval head: extra logit for keys that are value-like (number) tokens
UNEMBED = 12.0  # logit of the copied token

INDUCTION_WORDS = (
    "apple river stone cloud green table music paper light water horse chair smile bread glass "
    "tiger north quiet silver dream happy ocean lemon pencil garden window rocket violet forest "
    "candle mirror planet"
).split()

# The retrieval model's haystack vocabulary: no "is" and no digits, so the only keys whose previous
# token is "is" are the needle's value and the question's "What is the".
HAYSTACK_WORDS = (
    "the river stone light green old wall slowly near under over bright quiet field morning wind "
    "cold town path tall"
).split()
NEEDLE_WORDS = ("The", "secret", "code", "is", "What", "the", "?", ".")
NUMBER_CHUNKS = tuple(str(n) for n in range(10, 26))
NEEDLE_VALUES = ("1021", "1124", "1218", "1323", "1420", "1525")
HAYSTACK_SEED = 1234


@dataclass
class _Layout:
    """Named, disjoint slices of the residual stream."""

    size: int = 0
    slices: dict[str, slice] = field(default_factory=dict)

    def add(self, name: str, width: int) -> slice:
        self.slices[name] = slice(self.size, self.size + width)
        self.size += width
        return self.slices[name]

    def __getitem__(self, name: str) -> slice:
        return self.slices[name]


def _config(name: str, d_model: int, d_head: int, n_ctx: int, d_vocab: int, n_heads: int = 4) -> dict:
    return dict(
        model_name=name, n_layers=2, n_heads=n_heads, d_model=d_model, d_head=d_head, n_ctx=n_ctx,
        d_vocab=d_vocab, d_mlp=None, act_fn=None, attn_only=True, normalization_type=None,
        positional_embedding_type="standard", use_attn_scale=False, default_prepend_bos=True,
        original_architecture="circuitkit-handbuilt",
    )


def _empty_model(config: dict, tokenizer):
    model = model_from_config(config, tokenizer)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    model.eval()
    return model


def _embed(model, layout: _Layout, n_ctx: int) -> None:
    """One-hot tokens; positions as (pos mod period) one-hot plus a recency ramp."""
    tok, pos = layout["TOK"], layout["POS"]
    ramp = layout["RAMP"].start
    model.embed.W_E[:, tok] = torch.eye(model.cfg.d_vocab)
    for p in range(n_ctx):
        model.pos_embed.W_pos[p, pos.start + p % POS_PERIOD] = 1.0
        model.pos_embed.W_pos[p, ramp] = p / n_ctx


def _positional_head(model, layout: _Layout, layer: int, head: int, offset: int) -> None:
    """Q/K so that position ``i`` attends to ``i - offset`` (the nearest earlier position congruent
    to it); uses d_head columns 0 .. POS_PERIOD."""
    attn = model.blocks[layer].attn
    n_ctx = model.cfg.n_ctx
    pos, ramp = layout["POS"], layout["RAMP"].start
    root = POS_MATCH ** 0.5
    for m in range(POS_PERIOD):
        attn.W_Q[head, pos.start + m, (m - offset) % POS_PERIOD] = root
        attn.W_K[head, pos.start + m, m] = root
    # Recency: query bias x key ramp (pos / n_ctx) adds RECENCY logits per position.
    attn.b_Q[head, POS_PERIOD] = 1.0
    attn.W_K[head, ramp, POS_PERIOD] = RECENCY * n_ctx


def _sink_head(model, layout: _Layout, layer: int, head: int, bos: int) -> None:
    """Q/K so that every position attends to the BOS token (an attention sink)."""
    attn = model.blocks[layer].attn
    attn.b_Q[head, 0] = 1.0
    attn.W_K[head, layout["TOK"].start + bos, 0] = MATCH


def _copy_values(model, layout: _Layout, layer: int, head: int, source: str, target: str) -> None:
    """V reads the one-hot token in ``source``; O writes it into ``target``."""
    attn = model.blocks[layer].attn
    d_vocab = model.cfg.d_vocab
    attn.W_V[head, layout[source]] = torch.eye(d_vocab, model.cfg.d_head)
    attn.W_O[head, :, layout[target]] = torch.eye(model.cfg.d_head, d_vocab)


def _junk_values(model, layout: _Layout, layer: int, head: int, gen: torch.Generator) -> None:
    """Random V reading the whole residual stream; O writes only into JUNK, which nobody reads."""
    attn = model.blocks[layer].attn
    d_model, d_head = model.cfg.d_model, model.cfg.d_head
    junk = layout["JUNK"]
    attn.W_V[head] = torch.randn(d_model, d_head, generator=gen) / d_model ** 0.5
    attn.W_O[head, :, junk] = torch.randn(d_head, junk.stop - junk.start, generator=gen) / d_head ** 0.5


def _random_qk(model, layer: int, head: int, gen: torch.Generator) -> None:
    attn = model.blocks[layer].attn
    d_model, d_head = model.cfg.d_model, model.cfg.d_head
    attn.W_Q[head] = torch.randn(d_model, d_head, generator=gen) / d_model ** 0.5 * 2
    attn.W_K[head] = torch.randn(d_model, d_head, generator=gen) / d_model ** 0.5 * 2


def _copy_head_qk(model, layout: _Layout, layer: int, head: int, bos: int, bos_logit: float,
                  value_tokens: list[int] | None = None) -> None:
    """Induction-style Q/K: the query's current token matches the key's previous token (``MATCH``).
    BOS gets ``bos_logit`` (the fallback when nothing matches); keys whose own token is one of
    ``value_tokens`` get ``VALUE_BONUS``."""
    attn = model.blocks[layer].attn
    d_vocab = model.cfg.d_vocab
    root = MATCH ** 0.5
    attn.W_Q[head, layout["TOK"], :d_vocab] = root * torch.eye(d_vocab)
    attn.W_K[head, layout["PREV"], :d_vocab] = root * torch.eye(d_vocab)
    attn.b_Q[head, d_vocab] = 1.0
    attn.W_K[head, layout["TOK"].start + bos, d_vocab] = bos_logit
    if value_tokens:
        attn.b_Q[head, d_vocab + 1] = 1.0
        for t in value_tokens:
            attn.W_K[head, layout["TOK"].start + t, d_vocab + 1] = VALUE_BONUS


def _unembed(model, layout: _Layout) -> None:
    model.unembed.W_U[layout["OUT"], :] = UNEMBED * torch.eye(model.cfg.d_vocab)


def _layout(d_vocab: int, junk: int) -> _Layout:
    layout = _Layout()
    for name, width in (("TOK", d_vocab), ("POS", POS_PERIOD), ("RAMP", 1), ("PREV", d_vocab),
                        ("OUT", d_vocab), ("JUNK", junk)):
        layout.add(name, width)
    return layout


def _progress(steps: list, progress: bool, desc: str):
    return tqdm(steps, desc=desc, disable=not progress, leave=False)


# --- induction ---------------------------------------------------------------------------------

INDUCTION_CIRCUIT_NODES = [names.INPUT, names.head(0, 0), names.head(1, 0), names.LOGITS]


def induction_circuit_edges() -> list[str]:
    prev, ind = names.head(0, 0), names.head(1, 0)
    return [
        names.edge(names.INPUT, prev, "q"),  # query position
        names.edge(names.INPUT, prev, "k"),  # key position
        names.edge(names.INPUT, prev, "v"),  # the token copied forward one position
        names.edge(prev, ind, "k"),  # key: "my previous token is X"
        names.edge(names.INPUT, ind, "q"),  # query: "my token is X"
        names.edge(names.INPUT, ind, "v"),  # value: the attended token, the answer
        names.edge(ind, names.LOGITS),
    ]


# Where each reference edge acts in an induction prompt: at the key position k (the first copy's
# answer token), at k - 1 (the query token's first occurrence) or at the last position E.
_INDUCTION_EDGE_AT = {
    names.edge(names.INPUT, names.head(0, 0), "q"): "k",  # a0.h0 at k looks back one position ...
    names.edge(names.INPUT, names.head(0, 0), "k"): "k-1",  # ... to the key at k - 1
    names.edge(names.INPUT, names.head(0, 0), "v"): "k-1",  # and copies that token to k
    names.edge(names.head(0, 0), names.head(1, 0), "k"): "k",  # a1.h0's key at k: "my previous token is q"
    names.edge(names.INPUT, names.head(1, 0), "q"): "E",  # its query at E: "my token is q"
    names.edge(names.INPUT, names.head(1, 0), "v"): "k",  # the value it copies: the answer at k
    names.edge(names.head(1, 0), names.LOGITS): "E",  # written at E, read out there
}


def induction_circuit_by_pos(task) -> list[str]:
    """The position-resolved induction circuit of ``task``'s prompts, by construction: each of
    `induction_circuit_edges` at the position it acts at in ``[BOS] r1..rL r1..r(L-1)``
    (query token ``q`` at the last position ``E``, its earlier copy at ``k - 1``, the answer at
    the key position ``k``), the union over prompts. ``ValueError`` for a prompt with no single
    earlier copy of its last token."""
    edges: set[str] = set()
    for row in task.clean.tolist():
        end = len(row) - 1
        keys = [j for j in range(1, end) if row[j - 1] == row[end]]
        if len(keys) != 1:
            raise InputError(f"prompt {row} is not an induction prompt with one earlier occurrence of its last token")
        at = {"k": keys[0], "k-1": keys[0] - 1, "E": end}
        edges.update(names.edge_at(e, at[_INDUCTION_EDGE_AT[e]]) for e in induction_circuit_edges())
    return sorted(edges)


def build_induction(seed: int = 0, progress: bool = True):
    """The hand-built induction model: ``a0.h0`` previous-token head, ``a1.h0`` induction head
    composing through K; ``a0.h1-3`` / ``a1.h1-3`` have random Q/K/V and write only into a junk
    subspace. Returns ``(model, tokenizer, card)``."""
    name = "induction-handbuilt"
    tokenizer = word_level_tokenizer(INDUCTION_WORDS)
    d_vocab = len(tokenizer)
    n_ctx = 64
    layout = _layout(d_vocab, junk=8)
    d_head = d_vocab + 4
    model = _empty_model(_config(name, layout.size, d_head, n_ctx, d_vocab), tokenizer)
    bos = bos_id(tokenizer)
    gen = torch.Generator().manual_seed(seed)
    steps = [(layer, head) for layer in range(2) for head in range(model.cfg.n_heads)]
    with torch.no_grad():
        _embed(model, layout, n_ctx)
        for layer, head in _progress(steps, progress, f"building {name}"):
            if (layer, head) == (0, 0):
                _positional_head(model, layout, 0, 0, offset=1)
                _copy_values(model, layout, 0, 0, "TOK", "PREV")
            elif (layer, head) == (1, 0):
                _copy_head_qk(model, layout, 1, 0, bos, bos_logit=MATCH / 2)
                _copy_values(model, layout, 1, 0, "TOK", "OUT")
            else:
                _random_qk(model, layer, head, gen)
                _junk_values(model, layout, layer, head, gen)
        _unembed(model, layout)
    word_ids = [tokenizer.convert_tokens_to_ids(w) for w in INDUCTION_WORDS]
    card = ZooCard(
        name=name,
        description="hand-built 2-layer attn-only induction: a0.h0 previous-token head, a1.h0 induction head (K-composition)",
        config=config_to_json(model.cfg),
        task={"builder": "induction", "params": {"n_prompts": 64, "seq_len": 10, "seed": 0, "token_ids": word_ids},
              "metric": "logit_diff"},
        construction="hand-built",
        recipe={"builder": "circuitkit.zoo.handbuilt.build_induction", "seed": seed,
                "residual_layout": {k: [s.start, s.stop] for k, s in layout.slices.items()},
                "constants": {"MATCH": MATCH, "POS_MATCH": POS_MATCH, "RECENCY": RECENCY, "UNEMBED": UNEMBED,
                              "POS_PERIOD": POS_PERIOD}},
        circuit={"nodes": list(INDUCTION_CIRCUIT_NODES), "edges": induction_circuit_edges()},
        evidence={"previous_token_heads": [names.head(0, 0)], "induction_heads": [names.head(1, 0)],
                  "auxiliary_edges": {names.edge(names.INPUT, names.head(1, 0), "k"):
                                      "BOS fallback when the current token has no earlier occurrence; unused on task prompts"}},
    )
    _record_measurements(model, card)
    card.evidence["feature_circuit"] = feature_circuit_record(card, model)
    return model, tokenizer, card


# --- retrieval ---------------------------------------------------------------------------------

RETRIEVAL_HEADS = [names.head(1, 0)]
RETRIEVAL_CIRCUIT_NODES = [names.INPUT, names.head(0, 0), names.head(1, 0), names.LOGITS]


def retrieval_circuit_edges() -> list[str]:
    prev, ret = names.head(0, 0), names.head(1, 0)
    return [
        names.edge(names.INPUT, prev, "q"),
        names.edge(names.INPUT, prev, "k"),
        names.edge(names.INPUT, prev, "v"),
        names.edge(prev, ret, "k"),  # key: "my previous token is X"
        names.edge(names.INPUT, ret, "q"),  # query: "my token is X"
        names.edge(names.INPUT, ret, "k"),  # key: "I am a value-like (number) token"
        names.edge(names.INPUT, ret, "v"),  # value: the needle token
        names.edge(ret, names.LOGITS),
    ]


def haystack_text(n_words: int = 420, seed: int = HAYSTACK_SEED) -> str:
    """Synthetic distractor text: sentences of 4-9 words from `HAYSTACK_WORDS`."""
    rng = random.Random(seed)
    words: list[str] = []
    sentences = []
    while len(words) < n_words:
        sentence = [rng.choice(HAYSTACK_WORDS) for _ in range(rng.randint(4, 9))]
        words += sentence
        sentences.append(" ".join(sentence) + ".")
    return " ".join(sentences)


def build_retrieval(seed: int = 0, progress: bool = True):
    """The hand-built needle-retrieval model (n_ctx 320, prompts of 256 tokens).

    ``a1.h0`` is the retrieval head: the query's token matches keys whose previous token (written
    by the previous-token head ``a0.h0``) is the same, with a bonus for value-like (number) keys.
    At the question's final "is" it attends to the needle's first value token (the token after
    the needle's "is"; the question's own "What is the" loses by ``VALUE_BONUS``); once that token
    has been generated, to the token after it, and so on. Every other head attends locally: to
    2 or 3 positions back, or to the BOS sink. Returns ``(model, tokenizer, card)``.
    """
    name = "retrieval-handbuilt"
    words = list(dict.fromkeys([*NEEDLE_WORDS, *NUMBER_CHUNKS, *HAYSTACK_WORDS]))
    tokenizer = word_level_tokenizer(words)
    d_vocab = len(tokenizer)
    n_ctx = 320
    layout = _layout(d_vocab, junk=4)
    d_head = d_vocab + 4
    model = _empty_model(_config(name, layout.size, d_head, n_ctx, d_vocab), tokenizer)
    bos = bos_id(tokenizer)
    numbers = [tokenizer.convert_tokens_to_ids(c) for c in NUMBER_CHUNKS]
    gen = torch.Generator().manual_seed(seed)
    local = {1: ("offset", 2), 2: ("offset", 3), 3: ("sink", None)}
    steps = [(layer, head) for layer in range(2) for head in range(model.cfg.n_heads)]
    with torch.no_grad():
        _embed(model, layout, n_ctx)
        for layer, head in _progress(steps, progress, f"building {name}"):
            if (layer, head) == (0, 0):
                _positional_head(model, layout, 0, 0, offset=1)
                _copy_values(model, layout, 0, 0, "TOK", "PREV")
            elif (layer, head) == (1, 0):
                _copy_head_qk(model, layout, 1, 0, bos, bos_logit=MATCH / 4, value_tokens=numbers)
                _copy_values(model, layout, 1, 0, "TOK", "OUT")
            else:
                kind, offset = local[head]
                if kind == "offset":
                    _positional_head(model, layout, layer, head, offset=offset)
                else:
                    _sink_head(model, layout, layer, head, bos)
                _junk_values(model, layout, layer, head, gen)
        _unembed(model, layout)
    params = {"context_lengths": [256], "depths": [0.0, 0.5, 1.0], "values": list(NEEDLE_VALUES),
              "haystack": haystack_text()}
    card = ZooCard(
        name=name,
        description="hand-built 2-layer needle retrieval (256-token prompts): a1.h0 copies the needle's value tokens",
        config=config_to_json(model.cfg),
        # answer_prob, not logit_diff: the corrupted needle makes the model confidently give the other
        # value, so "neither value" would count as half recovered under logit_diff.
        task={"builder": "needle", "params": params, "metric": "answer_prob"},
        construction="hand-built",
        recipe={"builder": "circuitkit.zoo.handbuilt.build_retrieval", "seed": seed,
                "residual_layout": {k: [s.start, s.stop] for k, s in layout.slices.items()},
                "constants": {"MATCH": MATCH, "POS_MATCH": POS_MATCH, "RECENCY": RECENCY, "UNEMBED": UNEMBED,
                              "VALUE_BONUS": VALUE_BONUS, "POS_PERIOD": POS_PERIOD},
                "local_heads": {names.head(layer, h): (f"attends {off} back" if kind == "offset" else "attends BOS")
                                for layer in range(2) for h, (kind, off) in local.items()}},
        circuit={"nodes": list(RETRIEVAL_CIRCUIT_NODES), "edges": retrieval_circuit_edges()},
        evidence={"retrieval_heads": list(RETRIEVAL_HEADS),
                  "previous_token_heads": [names.head(0, 0)]},
    )
    _record_measurements(model, card)
    return model, tokenizer, card


def _record_measurements(model, card) -> None:
    """Accuracy and the evidence schema's figures, measured on the card's task, written into the card."""
    task = zoo_task(card, model)
    report = measure(model, task, card)
    heads = names.model_components(model)
    single = ablate_each(model, task, [[h] for h in heads])
    card.accuracy = round(report.accuracy, 4)
    card.evidence.update({
        **node_evidence("construction", report.full_metric, report.corrupted_metric,
                        {h: r.recovered for h, r in zip(heads, single, strict=True)},
                        report.circuit_only, report.circuit_ablated),
        "mean_ablation_invisible_edges": mean_ablation_invisible_edges(model, task, card.circuit_edges),
    })


def mean_ablation_invisible_edges(model, task, edges: list[str], scale: float | None = None) -> dict[str, dict[str, float]]:
    """Circuit edges that change nothing when mean-ablated alone (|effect| < 1 % of the full
    metric) yet matter when zero-ablated (> 20 %), with both exact effects (metric change / full
    metric). They carry what is the same in every prompt at their positions: position (the
    previous-token head's query and key), or a token every prompt has there (the question's last
    word). Mean ablation keeps it, so no method scored under mean ablation can see these edges.
    ``scale`` replaces |full metric| as the unit (a distance metric is 0 on the full model)."""
    with torch.no_grad():
        full = abs(float(task.score(model(task.clean)))) if scale is None else abs(float(scale))
    mean = exact_edge_patching(model, task, edges, ablation="mean", progress=False)
    zero = exact_edge_patching(model, task, edges, ablation="zero", progress=False)
    out = {}
    for e, m, z in zip(edges, mean.values.tolist(), zero.values.tolist(), strict=True):
        if abs(m) < 0.01 * full and abs(z) > 0.2 * full:
            out[e] = {"mean": round(m / full, 4), "zero": round(z / full, 4)}
    return out

"""The zoo's trained models: seeded recipes that train small HookedTransformers on CPU and find
their reference circuits by exhaustive mean ablation.

``RECIPES`` maps a zoo name to ``builder(seed=0, progress=True, steps=None) -> (model, tokenizer,
ZooCard)``; each trains in a few minutes on 2 CPU cores. :func:`find_circuit` establishes a
model's circuit: it ablates every head and MLP alone, grows the set whose *complement* can be
ablated while keeping >= 90 % of the metric, prunes it, and then (if needed) grows it until
ablating the circuit itself leaves < 20 % of the metric.
"""

from __future__ import annotations

import functools
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from circuitkit import names
from circuitkit.ablation import ablate
from circuitkit.ablation.hooks import run_ablated
from circuitkit.zoo.registry import ZooCard, config_to_json

# batch_fn(generator) -> (tokens [batch, pos], loss_mask [batch, pos]): mask marks positions
# whose NEXT token is a training target.
BatchFn = Callable[[random.Random], tuple[Tensor, Tensor]]


# --- training loop ----------------------------------------------------------------------------

def train_model(model, batch_fn: BatchFn, steps: int, lr: float, seed: int = 0, progress: bool = True,
                desc: str = "train", weight_decay: float = 0.0, warmup: int = 50,
                horizon: int | None = None) -> list[float]:
    """Adam with linear warm-up and cosine decay on next-token loss at masked positions.

    The cosine reaches 0 after ``horizon`` steps (default ``steps``; a longer horizon stops
    training part-way down the curve). A ``batch_fn`` with an ``observe(loss)`` method is told
    every step's loss (for curricula that adapt to it). Returns the loss of every step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    horizon = horizon or steps
    if horizon < steps:
        raise ValueError(f"horizon must be >= steps ({steps}), got {horizon}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, horizon) / horizon)))
    observe = getattr(batch_fn, "observe", None)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=2.0)
    for _ in bar:
        tokens, mask = batch_fn(rng)
        keep = mask[:, :-1]
        loss = F.cross_entropy(_logits_at(model, tokens[:, :-1], keep), tokens[:, 1:][keep])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if observe is not None:
            observe(losses[-1])
        if len(losses) % 25 == 0:
            bar.set_postfix(loss=f"{sum(losses[-25:]) / 25:.3f}")
    model.eval()
    return losses


def final_loss(losses: list[float], last: int = 20) -> float:
    """The mean of the last ``last`` training losses, rounded for a card."""
    return round(sum(losses[-last:]) / len(losses[-last:]), 4)


def new_model(tokenizer, **cfg_kwargs):
    """A fresh HookedTransformer with ``tokenizer`` (seeded by ``cfg_kwargs['seed']``)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = dict(d_vocab=len(tokenizer), act_fn="gelu", normalization_type="LN", device="cpu",
               default_prepend_bos=True)
    cfg.update(cfg_kwargs)
    if "d_head" not in cfg:
        cfg["d_head"] = cfg["d_model"] // cfg["n_heads"]
    model = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tokenizer)
    return model


# --- circuit discovery by exhaustive ablation --------------------------------------------------

@dataclass
class CircuitSearch:
    """What :func:`find_circuit` found and the figures behind it."""

    nodes: list[str]
    per_component: dict[str, float]  # recovered when ONLY that component is mean-ablated
    circuit_only: float  # recovered when everything outside the circuit is mean-ablated
    circuit_ablated: float  # recovered when the circuit is mean-ablated
    clean: float
    baseline: float

    def evidence(self) -> dict[str, Any]:
        return {
            "ablation": "mean over the task's clean prompts",
            "per_component_recovered": {k: round(v, 4) for k, v in self.per_component.items()},
            "circuit_only_recovered": round(self.circuit_only, 4),
            "circuit_ablated_recovered": round(self.circuit_ablated, 4),
            "clean_metric": round(self.clean, 4),
            "corrupted_metric": round(self.baseline, 4),
        }


def components_of(model) -> list[str]:
    """Every head and MLP of ``model`` as node ids, in computation order."""
    nodes = names.all_nodes(model.cfg.n_layers, model.cfg.n_heads, has_mlp=not model.cfg.attn_only)
    return [n for n in nodes if n not in (names.INPUT, names.LOGITS)]


def circuit_recovery(model, task, circuit: list[str]) -> tuple[float, float]:
    """(circuit-only recovered, circuit-ablated recovered) under mean ablation."""
    circuit_set = set(circuit)
    complement = [c for c in components_of(model) if c not in circuit_set]
    only = ablate(model, task, complement, "mean").recovered if complement else 1.0
    cut = ablate(model, task, list(circuit), "mean").recovered if circuit else 1.0
    return only, cut


def find_circuit(model, task, keep: float = 0.9, destroy: float = 0.2, progress: bool = True) -> CircuitSearch:
    """Exhaustive single-component ablation, then greedy growth of the circuit until its complement
    can be ablated keeping ``keep`` of the metric, pruning of nodes that are not needed, and growth
    (most harmful-to-ablate first) until ablating the circuit leaves less than ``destroy``."""
    comps = components_of(model)
    base = ablate(model, task, [], "mean")

    def recovered(ablated: list[str]) -> float:
        # ablate() would re-run the clean and corrupted prompts on every call; they are fixed here.
        if not ablated:
            return 1.0
        value = float(task.score(run_ablated(model, task.clean, ablated, "mean", task.clean)))
        return (value - base.baseline) / (base.clean - base.baseline)

    per = {c: recovered([c]) for c in tqdm(comps, desc="single ablations", disable=not progress)}
    by_harm = sorted(comps, key=lambda c: per[c])

    def only(circuit):
        return recovered([c for c in comps if c not in circuit])

    circuit: list[str] = []
    bar = tqdm(total=len(comps), desc="grow circuit", disable=not progress)
    while only(circuit) < keep and len(circuit) < len(comps):
        gains = {c: only([*circuit, c]) for c in comps if c not in circuit}
        best = max(gains, key=gains.get)
        circuit.append(best)
        bar.update(1)
    bar.close()
    for c in sorted(circuit, key=lambda c: -per[c]):  # try dropping the least important first
        trial = [x for x in circuit if x != c]
        if trial and only(trial) >= keep:
            circuit = trial
    cut = recovered(circuit)
    for c in by_harm:
        if cut < destroy:
            break
        if c not in circuit:
            circuit.append(c)
            cut = recovered(circuit)
    circuit = names.sort_nodes(circuit, model.cfg.n_layers)
    # The recorded figures come from ablate() itself, as the tests and `zoo verify` compute them.
    final_only, final_cut = circuit_recovery(model, task, circuit)
    return CircuitSearch(circuit, per, final_only, final_cut, base.clean, base.baseline)


@dataclass
class EdgeCircuitSearch:
    """What :func:`find_edge_circuit` found: the edges and the figures behind them."""

    edges: list[str]
    effects: dict[str, float]  # every model edge: normalised metric change when it ALONE is ablated
    faithfulness: float  # every other edge ablated
    ablated_faithfulness: float  # the circuit's edges ablated, every other edge kept

    def evidence(self) -> dict[str, Any]:
        return {
            "edges": ("established by exact single-edge mean ablation of every model edge "
                      "(effect = metric change / (full - all edges ablated)); the node circuit's edges are "
                      "kept in order of |effect| until the circuit alone is faithful, then pruned while it stays so"),
            "edge_effects": {k: round(v, 4) for k, v in self.effects.items()},
            "edge_circuit_faithfulness": round(self.faithfulness, 4),
            "edge_circuit_ablated_faithfulness": round(self.ablated_faithfulness, 4),
        }


def find_edge_circuit(model, task, nodes: list[str], keep: float = 0.9, destroy: float = 0.2,
                      progress: bool = True) -> EdgeCircuitSearch:
    """Refine a node circuit to edges by exact ablation (mean over the task's clean prompts).

    Every model edge is ablated alone (:func:`~circuitkit.patching.exact_edge_patching`); the
    edges among ``nodes`` (and ``input`` / ``logits``) are taken in order of decreasing |effect|
    until the edges alone reach faithfulness ``keep`` (every other edge ablated), then each is
    dropped, smallest |effect| first, if the rest stays faithful; finally edges are added back
    until ablating the circuit's edges leaves faithfulness below ``destroy``.
    """
    from circuitkit.circuit import Circuit
    from circuitkit.circuit.evaluate import EdgeEvaluator, circuit_edges
    from circuitkit.patching.attribution import exact_edge_patching

    ev = EdgeEvaluator(model, task, "mean")
    span = ev.metric_full - ev.metric_empty
    raw = exact_edge_patching(model, task, ablation="mean", progress=progress)
    effects = {label: float(v) / span for label, v in zip(raw.labels, raw.values.tolist(), strict=True)}
    node_edges = circuit_edges(Circuit.from_nodes_edges(nodes), ev.model_edges)
    candidates = sorted(node_edges, key=lambda e: -abs(effects[e]))

    kept = len(candidates)
    for k in tqdm(range(1, len(candidates) + 1), desc="grow edges", disable=not progress):
        if ev.faithfulness(candidates[:k]) >= keep:
            kept = k
            break
    circuit = candidates[:kept]
    for e in sorted(circuit, key=lambda e: abs(effects[e])):
        trial = [x for x in circuit if x != e]
        if trial and ev.faithfulness(trial) >= keep:
            circuit = trial
    ablated = ev.faithfulness_without(circuit)
    for e in candidates:
        if ablated < destroy:
            break
        if e not in circuit:
            circuit.append(e)
            ablated = ev.faithfulness_without(circuit)
    order = {e: i for i, e in enumerate(ev.model_edges)}
    circuit.sort(key=order.__getitem__)
    return EdgeCircuitSearch(circuit, effects, ev.faithfulness(circuit), ablated)


def task_accuracy(model, task) -> float:
    with torch.no_grad():
        return float(task.with_metric("accuracy").score(model(task.clean)))


def _logits_at(model, tokens: Tensor, keep: Tensor) -> Tensor:
    """Logits ``[n_kept, vocab]`` at the ``keep`` positions only (unembedding every position of a
    long context costs more than the rest of the model)."""
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    picked = resid[keep][None]
    if model.cfg.normalization_type is not None:
        picked = model.ln_final(picked)
    return model.unembed(picked)[0]


# --- shared pieces of the recipes --------------------------------------------------------------

def zoo_word_tokenizer():
    """The word-level tokenizer over every word the default task builders use."""
    from circuitkit.tasks.builders import default_words
    from circuitkit.tokenizers import word_level_tokenizer

    return word_level_tokenizer(default_words())


@functools.lru_cache(maxsize=2)
def docs_bpe_tokenizer(vocab_size: int = 2048):
    """A byte-level BPE tokenizer trained on Python's own docstrings (deterministic, offline;
    cached per process, as two recipes use it)."""
    from circuitkit.tokenizers import python_docs_corpus, train_bpe_tokenizer

    return train_bpe_tokenizer(python_docs_corpus(), vocab_size=vocab_size)


def make_card(name: str, description: str, model, task, task_spec: dict[str, Any], recipe: dict[str, Any],
              search: CircuitSearch, extra_evidence: dict[str, Any] | None = None, progress: bool = True) -> ZooCard:
    """A trained model's card: config, task, recipe, accuracy, circuit (nodes, and edges refined
    by :func:`find_edge_circuit`) and its evidence."""
    edge_search = find_edge_circuit(model, task, search.nodes, progress=progress)
    evidence = {**search.evidence(), **edge_search.evidence(), **(extra_evidence or {})}
    return ZooCard(
        name=name, description=description, config=config_to_json(model.cfg), task=task_spec,
        construction="trained", recipe=recipe, accuracy=round(task_accuracy(model, task), 4),
        circuit={"nodes": search.nodes, "edges": edge_search.edges}, evidence=evidence,
    )


def recircuit(name: str, root=None, progress: bool = True):
    """Re-establish the circuit (nodes and edges) of shipped trained model ``name`` on its own
    weights, keeping its recipe and description, and save the card atomically; returns the card.
    For changes to how circuits are found, without retraining."""
    from circuitkit.zoo.registry import load_zoo_model, save_zoo_model, zoo_card, zoo_task

    old = zoo_card(name)
    if old.construction != "trained":
        raise ValueError(f"zoo model {name!r} is {old.construction}, not trained; its circuit is set by construction")
    model = load_zoo_model(name)
    task = zoo_task(old, model)
    search = find_circuit(model, task, progress=progress)
    kept = {k: v for k, v in old.evidence.items() if k == "retrieval_heads"}
    card = make_card(name, old.description, model, task, old.task, old.recipe, search, kept, progress)
    save_zoo_model(model, card, model.tokenizer, root=root if root is not None else old.path.parent)
    return card


def _finish(name, description, model, tok, task_spec, recipe, extra_evidence, progress, t0, circuit=True):
    from circuitkit.tasks.builders import build_task

    recipe["train_seconds"] = round(time.time() - t0, 1)
    model.eval()
    task = build_task(task_spec["builder"], tok, **task_spec["params"], metric=task_spec["metric"])
    if not circuit:  # a quick run: no circuit search
        return model, tok, ZooCard(name=name, description=description, config=config_to_json(model.cfg),
                                   task=task_spec, construction="trained", recipe=recipe,
                                   accuracy=round(task_accuracy(model, task), 4))
    search = find_circuit(model, task, progress=progress)
    card = make_card(name, description, model, task, task_spec, recipe, search, extra_evidence, progress)
    return model, tok, card


# --- induction ---------------------------------------------------------------------------------

# d_model 128 / d_head 32: at d_model 64 the previous-token -> induction circuit had not formed after
# 6000 steps (accuracy 0.4 at period 10); at 128 it forms after ~2000 steps (a loss phase change).
INDUCTION_CFG = dict(n_layers=2, n_heads=4, d_model=128, d_head=32, attn_only=True, n_ctx=48,
                     normalization_type="LN")
# The fixed-period counter-example: same layers, its own (longer) context.
FIXED_PERIOD_CFG = {**INDUCTION_CFG, "n_ctx": 64}


def varied_repeat_batch(pool: list[int], bos: int, batch: int = 32, length: int = 48,
                        min_period: int = 3, max_period: int = 12, copies: int | None = None) -> BatchFn:
    """Rows ``BOS, random prefix, segment, segment, segment...`` (the segment repeated to the end of
    the row, or ``copies`` times and then random tokens): the prefix length (offset) and the segment
    length (period) are drawn per row, so only content-based copying predicts the repeats. The loss
    covers every token of the second and later copies except the second copy's first (whose
    previous token has no earlier occurrence)."""
    reps = copies or 2
    if length < 1 + reps * max_period:
        raise ValueError(f"length {length} cannot hold BOS and {reps} copies of a {max_period}-token segment")

    def batch_fn(rng: random.Random):
        rows, masks = [], []
        for _ in range(batch):
            period = rng.randint(min_period, max_period)
            prefix = rng.randint(0, length - 1 - reps * period)
            seg = rng.choices(pool, k=period)
            row = [bos, *rng.choices(pool, k=prefix)]
            first = len(row)
            while len(row) < length and (copies is None or len(row) < first + copies * period):
                row += seg
            end = min(len(row), length)  # the repeats end here; random tokens fill the rest
            row = (row + rng.choices(pool, k=max(0, length - len(row))))[:length]
            mask = [False] * length
            # Targets: every repeated token from the second copy on (mask[i] marks predicting row[i + 1]).
            for i in range(first + period, end - 1):
                mask[i] = True
            rows.append(row)
            masks.append(mask)
        return torch.tensor(rows), torch.tensor(masks)
    return batch_fn


def fixed_repeat_batch(pool: list[int], bos: int, batch: int = 64, period: int = 10) -> BatchFn:
    """Rows ``BOS, segment, segment`` with one fixed period and no offset (the positional shortcut
    data): the token to predict always sits ``period`` positions back."""
    def batch_fn(rng: random.Random):
        rows = []
        for _ in range(batch):
            seg = rng.choices(pool, k=period)
            rows.append([bos, *seg, *seg])
        mask = torch.zeros(batch, 1 + 2 * period, dtype=torch.bool)
        mask[:, 1 + period: 2 * period] = True
        return torch.tensor(rows), mask
    return batch_fn


def _induction_common(name, seed, progress, steps, lr, batch_fn_of, data, description, default_steps, circuit,
                      cfg, batch, warmup):
    from circuitkit.tokenizers import bos_id, ordinary_token_ids

    t0 = time.time()
    tok = zoo_word_tokenizer()
    pool = ordinary_token_ids(tok)
    model = new_model(tok, **cfg, seed=seed, model_name=name)
    steps = steps or default_steps
    batch_fn = batch_fn_of(pool, bos_id(tok))
    losses = train_model(model, batch_fn, steps, lr, seed, progress, desc=name, warmup=warmup)
    task_spec = {"builder": "induction", "params": {"n_prompts": 64, "seq_len": 10, "seed": 0}, "metric": "logit_diff"}
    recipe = {"steps": steps, "lr": lr, "batch": batch, "seed": seed, "warmup": warmup,
              "optimizer": "AdamW(0.9, 0.98), warm-up + cosine", "data": data, "final_loss": final_loss(losses)}
    return _finish(name, description, model, tok, task_spec, recipe, {}, progress, t0, circuit)


def induction_trained(seed: int = 0, progress: bool = True, steps: int | None = None, circuit: bool = True):
    """2-layer attention-only model trained on repeats of varying period and offset."""
    return _induction_common(
        "induction-trained", seed, progress, steps, 1e-3,
        lambda pool, bos: varied_repeat_batch(pool, bos),
        "48-token rows: BOS, a random prefix of 0..(47-2P) tokens, then a random segment of period P in 3..12 "
        "repeated to the end of the row; tokens uniform over the tokenizer's ordinary tokens; loss on every "
        "token of the second and later copies but the second copy's first",
        "Attention-only 2x4 transformer (d_model 128) trained on repeated random segments of varying period "
        "(3-12) and offset. Copies by content at every trained period (accuracy >= 0.8 at 3-12) but not beyond "
        "(< 0.1 at 13+): no textbook previous-token head; layer-0 heads a0.h1 / a0.h3 look 2 and 5 back and "
        "layer-1 heads pick 1, 4 or 7 back by content, offsets that sum to P - 1 for the trained periods.",
        5000, circuit, INDUCTION_CFG, 32, 50,
    )


def induction_fixed_period(seed: int = 0, progress: bool = True, steps: int | None = None, circuit: bool = True):
    """The same architecture trained on ONE repeat period at ONE offset: it learns the positional
    shortcut (a layer-0 head looking ``period - 1`` tokens back) and no induction circuit."""
    return _induction_common(
        "induction-fixed-period", seed, progress, steps, 1e-3,
        lambda pool, bos: fixed_repeat_batch(pool, bos),
        "21-token rows: BOS, a random segment of exactly 10 tokens, the segment again (no offset); loss on "
        "the second copy's tokens 2..10",
        "Counter-example: the induction architecture trained on a FIXED repeat period and offset solves "
        "that data by position (a layer-0 head attends 9 tokens back) and fails on other periods.",
        300, circuit, FIXED_PERIOD_CFG, 64, 50,
    )


# --- IOI ---------------------------------------------------------------------------------------

IOI_CFG = dict(n_layers=3, n_heads=4, d_model=64, d_mlp=256, n_ctx=32, normalization_type="LN")


def ioi_batch(tok, batch: int = 64) -> BatchFn:
    """Templated IOI sentences (the ``ioi`` builder's templates, names, places, objects; ABBA and
    BABA equally often) followed by the indirect object; the loss is on that final name."""
    from circuitkit.tasks.builders import IOI_TEMPLATES, NAMES, OBJECTS, PLACES
    from circuitkit.tokenizers import encode, pad_id

    pad = pad_id(tok)

    def batch_fn(rng: random.Random):
        rows = []
        for _ in range(batch):
            io, s = rng.sample(NAMES, 2)
            first, second = (io, s) if rng.random() < 0.5 else (s, io)
            text = rng.choice(IOI_TEMPLATES).format(A=first, B=second, C=s, PLACE=rng.choice(PLACES),
                                                    OBJECT=rng.choice(OBJECTS))
            rows.append(encode(tok, f"{text} {io}", True))
        width = max(len(r) for r in rows)
        mask = torch.zeros(batch, width, dtype=torch.bool)
        for i, r in enumerate(rows):
            mask[i, len(r) - 2] = True
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows]), mask
    return batch_fn


def ioi_trained(seed: int = 0, progress: bool = True, steps: int | None = None, circuit: bool = True):
    """3-layer transformer with MLPs trained to complete IOI sentences with the indirect object."""
    t0 = time.time()
    tok = zoo_word_tokenizer()
    model = new_model(tok, **IOI_CFG, seed=seed, model_name="ioi-trained")
    steps = steps or 1500
    lr = 1e-3
    losses = train_model(model, ioi_batch(tok), steps, lr, seed, progress, desc="ioi-trained")
    task_spec = {"builder": "ioi", "params": {"n_prompts": 64, "seed": 0}, "metric": "logit_diff"}
    recipe = {"steps": steps, "lr": lr, "batch": 64, "seed": seed, "optimizer": "AdamW(0.9, 0.98), warm-up + cosine",
              "data": "ioi builder templates x NAMES x PLACES x OBJECTS, ABBA/BABA 50/50, random each step; "
                      "loss on the final (indirect-object) name only",
              "final_loss": round(sum(losses[-20:]) / 20, 4) if len(losses) >= 20 else losses[-1]}
    return _finish("ioi-trained", "3-layer transformer with MLPs trained on templated IOI sentences (ABBA and BABA).",
                   model, tok, task_spec, recipe, {}, progress, t0, circuit)



# --- needle retrieval --------------------------------------------------------------------------

# Rotary positions: retrieval is relative-position-free, and rotary lets mostly-short training rows
# carry over to 256-token prompts.
# Two layers: a 4-layer model of this recipe (loss 0.82) spread retrieval over ten interchangeable
# heads of layers 1-3, so no single circuit was the true one and no reference could be trusted;
# with two layers (loss 0.30) layer-0 heads that attend back to the needle sentence feed, through
# K-composition, the layer-1 heads that copy the value: a circuit exact ablation can pin down.
NEEDLE_CFG = dict(n_layers=2, n_heads=4, d_model=128, d_head=32, attn_only=True, n_ctx=264,
                  normalization_type="LN", positional_embedding_type="rotary", rotary_dim=16)
# Task values: invented words that the docs BPE splits into several tokens (multi-token needles);
# training draws other invented words, so the task measures retrieval of unseen values.
NEEDLE_VALUES = ("zorbat", "quindle", "mafrex", "plovish", "trunkel", "yesbor", "gadwump", "snerkol")
# Training values are invented words over a broad alphabet, or real words of the corpus: the copy
# (OV) circuit only learns the tokens it sees as values. (With onsets from 14 consonants only,
# task values starting "qu", "tr" or "y" were never retrieved: first-token accuracy 0.625.)
_ONSETS = ("b c d f g h j k l m n p qu r s t v w x y z bl br ch cl cr dr fl fr gl gr pl pr sh sk sl sn "
           "sp st str th tr wh").split()
_CODAS = ("", "", "", "n", "r", "l", "sh", "x", "mp", "t", "k", "nd", "st")


def training_value(rng: random.Random, corpus_words: list[str]) -> str:
    """A needle value for training: half invented (2-3 syllables), half a random corpus word."""
    if corpus_words and rng.random() < 0.5:
        return rng.choice(corpus_words)
    return "".join(rng.choice(_ONSETS) + rng.choice("aeiou") + rng.choice(_CODAS) for _ in range(rng.randint(2, 3)))


def needle_values(tok, values=NEEDLE_VALUES) -> list[str]:
    """The task values that tokenize to >= 2 tokens after the question, with distinct first tokens."""
    from circuitkit.tasks.builders import NEEDLE_QUESTION
    from circuitkit.tokenizers import continuation_ids

    kept, firsts = [], set()
    for v in values:
        ids = continuation_ids(tok, NEEDLE_QUESTION, v)
        if len(ids) >= 2 and ids[0] not in firsts:
            kept.append(v)
            firsts.add(ids[0])
    return kept


def needle_batch(tok, hay_ids: list[int], batch: int = 16, min_len: int = 32, max_len: int = 256,
                 exclude: tuple[str, ...] = NEEDLE_VALUES, corpus_words: list[str] | None = None) -> BatchFn:
    """Prompts exactly as the ``needle`` builder makes them (needle sentence at a random depth of a
    random slice of Python docstrings, then the question), one random length per batch (mostly short),
    each with
    an invented multi-token value; the value's tokens are appended and are the only targets."""
    from circuitkit.tasks.builders import NEEDLE_QUESTION, NEEDLE_TEMPLATE, _needle_prompt
    from circuitkit.tokenizers import pad_id

    pad = pad_id(tok)

    def batch_fn(rng: random.Random):
        # Short rows are cheap and teach retrieval fast; long ones are rarer (length ~ min + u^2 range).
        length = min_len + int(rng.random() ** 2 * (max_len - min_len) / 8) * 8
        rows, ends = [], []
        while len(rows) < batch:
            value = training_value(rng, corpus_words or [])
            if value in exclude:
                continue
            start = rng.randrange(0, len(hay_ids) - length)
            built = _needle_prompt(tok, hay_ids[start: start + length], length, rng.random(), value,
                                   NEEDLE_TEMPLATE, NEEDLE_QUESTION, True)
            if built is None:
                continue
            ids, _, _, value_ids, _ = built
            rows.append(ids + value_ids)
            ends.append((len(ids) - 1, len(value_ids)))
        width = max(len(r) for r in rows)
        mask = torch.zeros(batch, width, dtype=torch.bool)
        for i, (end, n) in enumerate(ends):
            mask[i, end: end + n] = True
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows]), mask
    return batch_fn


def needle_trained(seed: int = 0, progress: bool = True, steps: int | None = None, circuit: bool = True):
    """2-layer attention-only model trained to answer the needle question with the needle's
    (multi-token, never-seen) value from anywhere in a 256-token docstring haystack."""
    from circuitkit.tokenizers import python_docs_corpus

    t0 = time.time()
    tok = docs_bpe_tokenizer()
    text = python_docs_corpus()
    hay_ids = tok.encode(text[60_000:], add_special_tokens=False)  # the task's haystack is text[:60000]
    corpus_words = sorted(set(re.findall(r"\b[a-z]{4,10}\b", text[60_000:])))
    model = new_model(tok, **NEEDLE_CFG, seed=seed, model_name="needle-trained")
    steps = steps or 3000
    lr = 1e-3
    losses = train_model(model, needle_batch(tok, hay_ids, corpus_words=corpus_words), steps, lr, seed, progress,
                         desc="needle-trained")
    values = needle_values(tok)
    task_spec = {"builder": "needle",
                 "params": {"context_lengths": [256], "depths": [0.0, 0.25, 0.5, 0.75, 1.0], "values": values},
                 "metric": "answer_prob"}
    recipe = {"steps": steps, "lr": lr, "batch": 16, "seed": seed, "optimizer": "AdamW(0.9, 0.98), warm-up + cosine",
              "data": "needle-builder prompts of 32..256 tokens (one length per batch, length = 32 + u^2 * 224) over Python docstrings after "
                      "the first 60k characters (the task's haystack), needle at a uniform random depth, value "
                      "an invented 2-3 syllable word over 41 onsets or (half the time) a random 4-10 letter word of "
                      "that text, never a task value; loss on the value's tokens",
              "final_loss": final_loss(losses)}
    model.eval()
    out = _finish("needle-trained", "2-layer attention-only model (n_ctx 264) trained to retrieve a multi-token "
                  "needle value from a 256-token haystack of Python docstrings.", model, tok, task_spec, recipe,
                  {}, progress, t0, circuit)
    from circuitkit.tasks.builders import build_task

    if circuit:
        task = build_task("needle", tok, **task_spec["params"])
        out[2].evidence["retrieval_heads"] = retrieval_heads(model, task)
    return out


def retrieval_heads(model, task, threshold: float = 0.3) -> dict[str, float]:
    """Heads whose attention from the question's end lands on the needle's value tokens (mean
    attention mass over prompts >= ``threshold``): the heads that do the retrieval."""
    with torch.no_grad():
        _, cache = model.run_with_cache(task.clean, names_filter=lambda n: n.endswith("hook_pattern"))
    batch = torch.arange(task.clean.shape[0])
    start, end = task.positions["needle_start"], task.positions["needle_end"]
    span = torch.zeros(task.clean.shape, dtype=torch.bool)
    for i in range(len(batch)):
        span[i, start[i]: end[i] + 1] = True  # the value and the token after it
    out = {}
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][batch, :, task.answer_pos]  # [batch, head, key]
        mass = (pattern * span[:, None, :]).sum(-1).mean(0)
        for h in range(model.cfg.n_heads):
            if float(mass[h]) >= threshold:
                out[names.head(layer, h)] = round(float(mass[h]), 4)
    return out


# --- tiny language model -----------------------------------------------------------------------

# Attention-only with learned positions: with MLPs (or rotary positions) the copying data below
# gave no induction circuit within the 15-minute budget (period-specific tricks or nothing).
TINY_LM_CFG = dict(n_layers=2, n_heads=4, d_model=128, d_head=32, attn_only=True, n_ctx=128,
                   normalization_type="LN")


class CopyCurriculum:
    """Two-copy repeat rows (:func:`varied_repeat_batch` with ``copies=2``) over the ``k`` most
    frequent tokens, ``k`` doubling each time copying works at the current size.

    Induction forms fastest over a small vocabulary (a few hundred tokens) and then carries over to
    the rest as the pool grows. "Works": the mean loss of the last ``patience`` batches is below
    half of ``ln k``. Call it as a :data:`BatchFn`; :func:`train_model` feeds ``observe`` the loss.
    """

    def __init__(self, ranked_ids: list[int], bos: int, start: int = 228, batch: int = 32, length: int = 100,
                 min_period: int = 6, max_period: int = 40, patience: int = 50):
        self.ranked_ids, self.bos, self.k = list(ranked_ids), bos, min(start, len(ranked_ids))
        self.batch, self.length, self.min_period, self.max_period, self.patience = batch, length, min_period, max_period, patience
        self.grown_at: list[int] = []  # batches drawn when k doubled
        self._drawn, self._losses = 0, []

    def __call__(self, rng: random.Random) -> tuple[Tensor, Tensor]:
        self._drawn += 1
        return varied_repeat_batch(self.ranked_ids[:self.k], self.bos, self.batch, self.length,
                                   self.min_period, self.max_period, copies=2)(rng)

    def observe(self, loss: float) -> None:
        self._losses.append(loss)
        recent = self._losses[-self.patience:]
        if len(recent) == self.patience and sum(recent) / self.patience < 0.5 * math.log(self.k) \
                and self.k < len(self.ranked_ids):
            self.k = min(len(self.ranked_ids), 2 * self.k)
            self.grown_at.append(self._drawn)
            self._losses = []


class MixedBatches:
    """Each step one batch: from ``second`` with probability ``share``, else from ``first``; the
    loss goes back to whichever drew the batch (if it observes)."""

    def __init__(self, first: BatchFn, second: BatchFn, share: float):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        self.first, self.second, self.share = first, second, share
        self._last: BatchFn = first

    def __call__(self, rng: random.Random) -> tuple[Tensor, Tensor]:
        self._last = self.second if rng.random() < self.share else self.first
        return self._last(rng)

    def observe(self, loss: float) -> None:
        observe = getattr(self._last, "observe", None)
        if observe is not None:
            observe(loss)


def frequency_ranked(ids: Tensor, pool: list[int]) -> list[int]:
    """``pool`` ordered by how often each token occurs in ``ids`` (most frequent first; ties and
    unseen tokens keep ``pool`` order)."""
    counts = torch.bincount(ids, minlength=max(pool) + 1)
    return sorted(pool, key=lambda t: -int(counts[t]))


def text_batch(ids: Tensor, batch: int = 16, length: int = 128) -> BatchFn:
    """Random ``length``-token windows of the token stream, every position a target."""
    def batch_fn(rng: random.Random):
        starts = [rng.randrange(0, len(ids) - length) for _ in range(batch)]
        tokens = torch.stack([ids[s: s + length] for s in starts])
        return tokens, torch.ones_like(tokens, dtype=torch.bool)
    return batch_fn


def validation_loss(model, ids: Tensor, length: int = 128, n_windows: int = 64) -> float:
    """Mean next-token loss over evenly spaced windows of held-out tokens."""
    starts = torch.linspace(0, len(ids) - length - 1, n_windows).long()
    tokens = torch.stack([ids[s: s + length] for s in starts])
    with torch.no_grad():
        return float(model(tokens, return_type="loss"))


def repeated_text_losses(model, ids: Tensor, half: int = 64, n_rows: int = 16,
                         ablated: list[str] | None = None) -> tuple[float, float]:
    """Mean loss on the first and on the second copy of text windows written twice
    (``[n_rows, 2 * half]`` rows): an induction circuit makes the second copy far easier.
    ``ablated``: components (``a1.h2``...) mean-ablated, means over these rows."""
    from circuitkit.ablation.hooks import ablation_hooks

    starts = torch.linspace(0, len(ids) - half - 1, n_rows).long()
    rows = torch.stack([torch.cat([ids[s: s + half], ids[s: s + half]]) for s in starts])
    hooks = ablation_hooks(model, ablated, "mean", rows) if ablated else []
    with torch.no_grad():
        loss = model.run_with_hooks(rows, return_type="loss", loss_per_token=True, fwd_hooks=hooks)  # [row, pos - 1]
    return float(loss[:, : half - 1].mean()), float(loss[:, half:].mean())


def docs_token_split(tok, held_out: float = 0.05) -> tuple[Tensor, Tensor]:
    """(train, held-out) token ids of ``python_docs_corpus()``: the last ``held_out`` share held out."""
    from circuitkit.tokenizers import python_docs_corpus

    ids = torch.tensor(tok.encode(python_docs_corpus(), add_special_tokens=False))
    split = int(len(ids) * (1 - held_out))
    return ids[:split], ids[split:]


def tiny_lm(seed: int = 0, progress: bool = True, steps: int | None = None, circuit: bool = True):
    """2-layer attention-only language model (d_model 128, BPE 2048) on Python's docstrings, with
    induction heads: a copying phase forms them, a text phase (still 1/5 copying) keeps them."""
    from circuitkit.tokenizers import bos_id, ordinary_token_ids

    t0 = time.time()
    tok = docs_bpe_tokenizer()
    train_ids, val_ids = docs_token_split(tok)
    model = new_model(tok, **TINY_LM_CFG, seed=seed, model_name="tiny-lm")
    steps = steps or 5000
    copy_steps = max(1, steps // 2)  # half copying, half text
    text_steps = max(1, steps - copy_steps)
    copy_lr, text_lr, copy_share = 1e-3, 3e-3, 0.2
    copying = CopyCurriculum(frequency_ranked(train_ids, ordinary_token_ids(tok)), bos_id(tok))
    # Phase 1 stops half-way down its cosine (lr 5e-4): the circuit forms at about step 1500-2000.
    copy_losses = train_model(model, copying, copy_steps, copy_lr, seed, progress, desc="tiny-lm copying",
                              weight_decay=0.01, horizon=2 * copy_steps)
    copy_grown = list(copying.grown_at)
    losses = train_model(model, MixedBatches(text_batch(train_ids), copying, copy_share), text_steps, text_lr,
                         seed, progress, desc="tiny-lm text", weight_decay=0.01)
    val = validation_loss(model, val_ids)
    first, second = repeated_text_losses(model, val_ids)
    task_spec = {"builder": "induction", "params": {"n_prompts": 64, "seq_len": 10, "seed": 0}, "metric": "logit_diff"}
    recipe = {"steps": copy_steps + text_steps, "seed": seed, "weight_decay": 0.01,
              "optimizer": "AdamW(0.9, 0.98), warm-up + cosine, per phase",
              "phases": [
                  {"steps": copy_steps, "lr": copy_lr, "cosine_horizon": 2 * copy_steps, "batch": 32,
                   "data": "copying: 100-token rows BOS, random prefix, a random segment of 6..40 tokens, the "
                           "segment again, random tokens; tokens from the k most frequent training tokens, k from "
                           "228 doubling whenever the last 50 batches' mean loss < ln(k) / 2; loss on the second "
                           "copy but its first token",
                   "pool_doubled_at_batch": copy_grown,
                   "final_loss": final_loss(copy_losses)},
                  {"steps": text_steps, "lr": text_lr, "batch": 16,
                   "data": f"each step a batch of 16 random 128-token windows of the training text, or (probability "
                           f"{copy_share}) a copying batch as in phase 1",
                   "final_loss": final_loss(losses)}],
              "data": f"python_docs_corpus() (Python stdlib docstrings, {len(train_ids) + len(val_ids)} BPE tokens), "
                      "first 95% for training, last 5% held out",
              "validation_loss": round(val, 4), "validation_tokens": int(len(val_ids)),
              "held_out_text_twice_loss": {"first_copy": round(first, 4), "second_copy": round(second, 4)}}
    return _finish("tiny-lm", "2-layer attention-only language model (d_model 128, byte-level BPE 2048) trained on "
                   "Python's docstrings, with induction heads (a copying phase, then text); a base for SAE "
                   "features.", model, tok, task_spec, recipe, {}, progress, t0, circuit)


RECIPES: dict[str, Callable[..., tuple[Any, Any, ZooCard]]] = {
    "induction-trained": induction_trained,
    "induction-fixed-period": induction_fixed_period,
    "ioi-trained": ioi_trained,
    "needle-trained": needle_trained,
    "tiny-lm": tiny_lm,
}

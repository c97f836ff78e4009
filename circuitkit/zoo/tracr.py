"""tracr-compiled programs in the zoo: RASP programs compiled to weights (Lindner et al. 2023),
converted to TransformerLens, with a reference circuit read off the compiled weights.

Only the recipe needs tracr and JAX (``python -m pip install -e ".[tracr]"`` in the checkout); the shipped safetensors
load like any zoo model. The conversion:

* tracr's residual stream is a direct sum of labelled one-dimensional subspaces (``tokens:x``,
  ``indices:2``, ``one``, one per value of every intermediate variable); it is kept as it is,
  dimension for dimension, and recorded in the card (``recipe["residual_labels"]``);
* token ids follow circuitkit's word-level tokenizer (``<bos>`` is tracr's BOS, ``<pad>`` its pad;
  ``<eos>`` / ``<unk>`` embed to zero); tracr's position table (row 0 zero) is copied as it is;
* attention is bidirectional (tracr compiles non-causal models), scaled by ``1 / sqrt(d_head)`` as
  Haiku's multi-head attention is; MLPs are ReLU; no layer norm;
* the unembedding is tracr's projection onto the output variable's subspace: a categorical
  output value ``v`` is the logit of token ``v`` (other tokens read 0), a numeric output is the
  one logit (``d_vocab_out = 1``).

The reference circuit (`weight_circuit`) is where information can flow: a component reads
the subspaces its query / key / value (or MLP input) weights have non-zero rows for, and writes
those its output weights have non-zero columns for; there is an edge wherever a reader reads a
subspace the sender writes, and only edges on ``input -> logits`` paths are kept. tracr gives every
variable its own subspace, written once, so this is the program's computation graph at the
granularity of heads and MLPs. The card's circuit drops from it the edges that change nothing when
zero-ablated alone on the card's task (`inert_edges`; e.g. the query of an all-true
selector, whose attention is the same whatever it reads): for ``reverse`` and ``frac_prevs`` what
remains is exactly the circuit ACDC published (`ACDC_PUBLISHED`).

tracr numbers its variables with a process-wide counter (``hist_1``), so the residual labels in a
card are those of a fresh process compiling that one program, as ``zoo train`` does.
"""

from __future__ import annotations

import functools
import math

import torch

from circuitkit import names
from circuitkit.ablation.edges import graph_edges
from circuitkit.ablation.nodes import AblationResult
from circuitkit.attribution import exact_edge_patching
from circuitkit.circuit.core import Circuit
from circuitkit.errors import InputError, MissingDependencyError, RunError
from circuitkit.models.zoo_store import ZooCard, config_to_json, model_from_config, zoo_task
from circuitkit.tasks.rasp import PROGRAMS, RaspProgram, every_input, rasp_task
from circuitkit.tokenizers import SPECIAL_TOKENS, word_level_tokenizer
from circuitkit.zoo.evidence import node_evidence
from circuitkit.zoo.handbuilt import mean_ablation_invisible_edges
from circuitkit.zoo.verification import ablate_each, measure

TRACR_BOS, TRACR_PAD = "BOS", "compiler_pad"
TASK_LENGTH = 4  # inputs of the card's task (BOS + 4 tokens); every length is checked in `program_outputs`
WEIGHT_EPS = 1e-6  # |weight| above which a residual dimension counts as read / written

# ACDC's published tracr circuits (Conmy et al. 2023; github.com/ArthurConmy/Automatic-Circuit-Discovery,
# acdc/tracr_task/utils.py, get_tracr_reverse_edges / get_tracr_proportion_edges, commit 14dd478), at
# circuitkit's granularity: ACDC's hook_embed and hook_pos_embed are both circuitkit's `input`.
ACDC_PUBLISHED = {
    "reverse": ["a3.h0->logits", "m2->a3.h0<q>", "input->a3.h0<k>", "input->a3.h0<v>", "m1->m2", "m0->m1",
                "input->m1", "a0.h0->m0", "input->m0", "input->a0.h0<v>"],
    "frac_prevs": ["a1.h0->logits", "input->a1.h0<q>", "input->a1.h0<k>", "m0->a1.h0<v>", "input->m0"],
}


def _tracr():
    try:
        from tracr.compiler import compiling, lib
        from tracr.rasp import rasp
    except ImportError:
        raise MissingDependencyError("compiling tracr zoo models needs tracr and JAX: python -m pip install -e "
                                     "\".[tracr]\" in the circuitkit checkout (loading the shipped models does not)") from None
    return compiling, lib, rasp


def _rasp_program(name: str):
    _, lib, rasp = _tracr()
    if name == "reverse":
        return lib.make_reverse(rasp.tokens)
    if name == "hist":
        return lib.make_hist()
    if name == "frac_prevs":
        return lib.make_frac_prevs(rasp.tokens == "x")
    raise InputError(f"no tracr program {name!r}; choose one of {sorted(PROGRAMS)}")


def _tracr_value(spec: RaspProgram, word: str):
    """The tracr vocabulary value of a tokenizer word (``reverse`` compiles integers)."""
    return int(word) if spec.name == "reverse" and word.isdigit() else word


def compile_program(name: str):
    """``(tracr AssembledTransformerModel, the RASP program)`` for program ``name``."""
    compiling, _, _ = _tracr()
    spec = PROGRAMS[name]
    program = _rasp_program(name)
    model = compiling.compile_rasp_to_model(program, vocab={_tracr_value(spec, w) for w in spec.vocab},
                                            max_seq_len=spec.max_seq_len, compiler_bos=TRACR_BOS,
                                            compiler_pad=TRACR_PAD)
    return model, program


def _np(x) -> torch.Tensor:
    import numpy as np

    return torch.tensor(np.asarray(x), dtype=torch.float32)


def convert(tracr_model, program, spec: RaspProgram, tokenizer, name: str):
    """The TransformerLens model computing what ``tracr_model`` computes (see the module docstring)."""
    cfg, params = tracr_model.model_config, tracr_model.params
    labels = list(tracr_model.residual_labels)
    d_model = len(labels)
    n_heads, d_head = cfg.num_heads, cfg.key_size
    if cfg.layer_norm or cfg.causal:
        raise InputError("tracr compiled a model with layer norm or causal attention; the zoo converts neither")
    config = {
        "n_layers": cfg.num_layers, "d_model": d_model, "n_heads": n_heads, "d_head": d_head,
        "d_mlp": cfg.mlp_hidden_size, "d_vocab": len(tokenizer), "n_ctx": params["pos_embed"]["embeddings"].shape[0],
        "d_vocab_out": len(tokenizer) if spec.categorical else 1, "act_fn": "relu", "normalization_type": None,
        "attention_dir": "bidirectional", "positional_embedding_type": "standard", "model_name": name,
        "original_architecture": "tracr", "default_prepend_bos": False, "tokenizer_prepends_bos": False,
    }
    model = model_from_config(config, tokenizer)
    vocab = tokenizer.get_vocab()
    tracr_ids = tracr_model.input_encoder.encoding_map
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    token_rows = _np(params["token_embed"]["embeddings"])
    for word, tid in vocab.items():
        symbol = {SPECIAL_TOKENS["bos_token"]: TRACR_BOS, SPECIAL_TOKENS["pad_token"]: TRACR_PAD}.get(word, word)
        key = symbol if symbol in (TRACR_BOS, TRACR_PAD) else _tracr_value(spec, symbol)
        if key in tracr_ids:
            state["embed.W_E"][tid] = token_rows[tracr_ids[key]]
    state["pos_embed.W_pos"] = _np(params["pos_embed"]["embeddings"])
    for layer in range(cfg.num_layers):
        pre = f"transformer/layer_{layer}"
        for tracr_part, tl in (("query", "Q"), ("key", "K"), ("value", "V")):
            w, b = _np(params[f"{pre}/attn/{tracr_part}"]["w"]), _np(params[f"{pre}/attn/{tracr_part}"]["b"])
            state[f"blocks.{layer}.attn.W_{tl}"] = w.reshape(d_model, n_heads, d_head).permute(1, 0, 2)
            state[f"blocks.{layer}.attn.b_{tl}"] = b.reshape(n_heads, d_head)
        state[f"blocks.{layer}.attn.W_O"] = _np(params[f"{pre}/attn/linear"]["w"]).reshape(n_heads, d_head, d_model)
        state[f"blocks.{layer}.attn.b_O"] = _np(params[f"{pre}/attn/linear"]["b"])
        state[f"blocks.{layer}.mlp.W_in"] = _np(params[f"{pre}/mlp/linear_1"]["w"])
        state[f"blocks.{layer}.mlp.b_in"] = _np(params[f"{pre}/mlp/linear_1"]["b"])
        state[f"blocks.{layer}.mlp.W_out"] = _np(params[f"{pre}/mlp/linear_2"]["w"])
        state[f"blocks.{layer}.mlp.b_out"] = _np(params[f"{pre}/mlp/linear_2"]["b"])
    if spec.categorical:
        for value in spec.outputs:
            label = f"{program.label}:{value}"
            if label in labels:  # a value tracr gave no subspace (never produced) keeps a zero column
                state["unembed.W_U"][labels.index(label), vocab[value]] = 1.0
    else:
        state["unembed.W_U"][labels.index(program.label), 0] = 1.0
    for key in [k for k in state if k.endswith(("mask", "IGNORE"))]:
        state[key] = model.state_dict()[key]
    model.load_state_dict(state)
    return model.eval()


def weight_circuit(model, eps: float = WEIGHT_EPS) -> Circuit:
    """The circuit the weights allow (see the module docstring): ``[d_model]`` read / write masks
    per component, an edge wherever a sender writes a dimension its receiver reads, pruned to
    ``input -> logits`` paths."""
    def nonzero(w: torch.Tensor, dim: int) -> torch.Tensor:  # [d_model] bool: dims with a weight
        return (w.abs() > eps).any(dim=tuple(d for d in range(w.ndim) if d != dim))

    writes = {names.INPUT: nonzero(model.W_E, 1) | nonzero(model.W_pos, 1)}
    reads = {names.LOGITS: nonzero(model.W_U, 0)}
    for layer in range(model.cfg.n_layers):
        block = model.blocks[layer]
        for head in range(model.cfg.n_heads):
            node = names.head(layer, head)
            writes[node] = nonzero(block.attn.W_O[head], 1)
            for part, w in (("q", block.attn.W_Q), ("k", block.attn.W_K), ("v", block.attn.W_V)):
                reads[(node, part)] = nonzero(w[head], 0)
        node = names.mlp(layer)
        writes[node] = nonzero(block.mlp.W_out, 1)
        reads[(node, None)] = nonzero(block.mlp.W_in, 0)
    kept = []
    for edge in graph_edges(model):
        e = names.parse_edge(edge)
        reader = reads[e.child] if e.child == names.LOGITS else reads[(e.child, e.qkv)]
        if bool((writes[e.parent] & reader).any()):
            kept.append(edge)
    return Circuit.from_nodes_edges(edges=kept).prune_dangling()


def zoo_task_of(program: str, seed: int, model):
    """The card task of program ``program`` (what ``zoo_task`` builds from the card)."""
    return rasp_task(model, program, length=TASK_LENGTH, seed=seed)


def inert_edges(model, task, edges: list[str], tolerance: float = 0.01) -> dict[str, float]:
    """Of ``edges``, those whose zero ablation alone moves the task metric by less than
    ``tolerance`` times the largest single-edge effect among them: ``{edge: effect}``. Zero
    ablation, as ACDC scores tracr models: the compiled program reads every direction it needs
    at a non-zero value, so removing a needed one always shows."""
    effects = exact_edge_patching(model, task, edges, ablation="zero", progress=False).as_dict()
    largest = max(abs(v) for v in effects.values())
    return {e: round(v, 6) for e, v in effects.items() if abs(v) < tolerance * largest}


def io_labels(model, labels: list[str], eps: float = WEIGHT_EPS) -> dict[str, dict[str, list[str]]]:
    """Per head / MLP, the residual labels it reads (per input) and writes: the card's record of
    which subspaces each component uses (components that read or write nothing are left out)."""
    out = {}
    for layer in range(model.cfg.n_layers):
        block = model.blocks[layer]
        parts = {names.head(layer, h): {"q": block.attn.W_Q[h], "k": block.attn.W_K[h], "v": block.attn.W_V[h],
                                        "writes": block.attn.W_O[h].T} for h in range(model.cfg.n_heads)}
        parts[names.mlp(layer)] = {"reads": block.mlp.W_in, "writes": block.mlp.W_out.T}
        for node, mats in parts.items():
            entry = {k: [labels[i] for i in torch.nonzero((w.abs() > eps).any(1)).flatten().tolist()]
                     for k, w in mats.items()}
            if any(entry.values()):
                out[node] = entry
    return out


def tracr_outputs(tracr_model, spec: RaspProgram) -> dict[str, list]:
    """tracr's own outputs (``AssembledTransformerModel.apply``) on every input of 1..max_seq_len
    tokens: ``{"inputs": [[token, ...], ...], "outputs": [[value per position], ...]}`` (values as
    tokenizer words, or floats for a numeric program)."""
    inputs, outputs = [], []
    for length in range(1, spec.max_seq_len + 1):
        for xs in every_input(spec, length):
            decoded = tracr_model.apply([TRACR_BOS, *(_tracr_value(spec, x) for x in xs)]).decoded[1:]
            inputs.append(list(xs))
            outputs.append([str(v) for v in decoded] if spec.categorical else [round(float(v), 6) for v in decoded])
    return {"inputs": inputs, "outputs": outputs}


def model_outputs(model, inputs: list[list[str]], categorical: bool) -> list[list]:
    """The converted model's outputs on ``inputs`` (token words, BOS prepended), decoded like
    tracr's: the argmax token per position (categorical) or the one output logit (numeric)."""
    tok = model.tokenizer
    vocab, words = tok.get_vocab(), tok.convert_ids_to_tokens(list(range(len(tok))))
    bos = vocab[SPECIAL_TOKENS["bos_token"]]
    out: list[list] = [[] for _ in inputs]
    by_length: dict[int, list[int]] = {}
    for i, xs in enumerate(inputs):
        by_length.setdefault(len(xs), []).append(i)
    with torch.no_grad():
        for rows in by_length.values():
            tokens = torch.tensor([[bos, *(vocab[x] for x in inputs[i])] for i in rows])
            logits = model(tokens)[:, 1:]
            values = logits.argmax(-1).tolist() if categorical else logits[..., 0].tolist()
            for i, v in zip(rows, values, strict=True):
                out[i] = [words[t] for t in v] if categorical else v
    return out


def outputs_agree(expected: list[list], got: list[list], categorical: bool, atol: float = 1e-4) -> list[int]:
    """Indices of the inputs where ``got`` differs from ``expected`` (numeric: by more than ``atol``)."""
    if categorical:
        return [i for i, (e, g) in enumerate(zip(expected, got, strict=True)) if list(e) != list(g)]
    return [i for i, (e, g) in enumerate(zip(expected, got, strict=True))
            if any(not math.isclose(a, b, abs_tol=atol) for a, b in zip(e, g, strict=True))]


def build_tracr(program: str, seed: int = 0, progress: bool = True):
    """Compile tracr program ``program``, convert it, and derive its card; ``(model, tokenizer, card)``.
    Deterministic (``seed`` only orders the card task's corrupted prompts)."""
    spec = PROGRAMS[program]
    name = f"tracr-{program.replace('_', '-')}"
    tracr_model, rasp_program = compile_program(program)
    tokenizer = word_level_tokenizer(spec.words())
    model = convert(tracr_model, rasp_program, spec, tokenizer, name)
    labels = list(tracr_model.residual_labels)
    expected = tracr_outputs(tracr_model, spec)
    mismatched = outputs_agree(expected["outputs"], model_outputs(model, expected["inputs"], spec.categorical),
                               spec.categorical)
    if mismatched:
        i = mismatched[0]
        raise RunError(f"{name}: the converted model differs from tracr on {len(mismatched)} inputs, e.g. "
                           f"{expected['inputs'][i]}: tracr {expected['outputs'][i]}")
    allowed = weight_circuit(model)
    inert = inert_edges(model, zoo_task_of(program, seed, model), allowed.edges)
    reference = Circuit.from_nodes_edges(edges=[e for e in allowed.edges if e not in inert]).prune_dangling()
    card = ZooCard(
        name=name,
        description=f"tracr-compiled RASP program {program} (tracr's lib), {model.cfg.n_layers} layers x "
                    f"{model.cfg.n_heads} head(s) + MLPs; circuit read off the compiled weights",
        config={**config_to_json(model.cfg), "attention_dir": "bidirectional"},
        task={"builder": "tracr", "params": {"program": program, "length": TASK_LENGTH, "seed": seed},
              "metric": "logit_diff" if spec.categorical else "mse"},
        construction="compiled",
        recipe={"builder": f"circuitkit.zoo.tracr.build_tracr('{program}')", "seed": seed, "compiler": "tracr-pypi",
                "max_seq_len": spec.max_seq_len, "vocab": list(spec.vocab), "residual_labels": labels},
        circuit={"nodes": reference.nodes, "edges": reference.edges},
        evidence={"circuit": "read off the compiled weights: an edge wherever a component reads a residual "
                             "subspace its sender writes (circuitkit.zoo.tracr.weight_circuit), less the edges "
                             "that change nothing when zero-ablated alone on the card's task (inert_edges: "
                             "they read only directions constant on it, e.g. an all-true selector's query)",
                  "weight_edges": allowed.edges,
                  "inert_edges": inert,
                  "component_subspaces": io_labels(model, labels),
                  "acdc_published_edges": ACDC_PUBLISHED.get(program, []),
                  "program_outputs": expected},
    )
    _record_measurements(model, card)
    return model, tokenizer, card


def _record_measurements(model, card) -> None:
    """Accuracy and the evidence schema's figures on the card's task, recovery measured against
    the same floor ``zoo verify`` uses (the corrupted run; all ablated for a numeric output)."""
    task = zoo_task(card, model)
    report = measure(model, task, card)
    components = names.model_components(model)
    single = ablate_each(model, task, [[c] for c in components] + [components])
    everything = single.pop()
    floor = everything.ablated if report.floor != "corrupted" else everything.baseline
    per_component = {c: AblationResult(r.components, r.kind, r.clean, r.ablated, floor).recovered
                     for c, r in zip(components, single, strict=True)}
    card.accuracy = round(report.accuracy, 4)
    card.evidence.update({
        **node_evidence("compilation", report.full_metric, report.corrupted_metric, per_component,
                        report.circuit_only, report.circuit_ablated),
        "recovery_floor": report.floor,
        "mean_ablation_invisible_edges": mean_ablation_invisible_edges(model, task, card.circuit_edges,
                                                                       scale=report.full_metric - floor),
    })


RECIPES = {f"tracr-{p.replace('_', '-')}": functools.partial(build_tracr, p) for p in PROGRAMS}

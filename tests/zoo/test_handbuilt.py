"""The hand-built zoo models: they load offline, do their task, and their circuits are what the
construction says (the named heads do the work, every other head is inert)."""

import pytest
import torch
from transformer_lens.head_detector import detect_head

from circuitkit import load_model, names, zoo_card, zoo_task
from circuitkit.ablation.nodes import ablate, run_ablated
from circuitkit.names import model_components
from circuitkit.zoo.handbuilt import INDUCTION_WORDS
from circuitkit.zoo.verification import ablate_each


@pytest.fixture(scope="session")
def induction_model():
    return load_model("zoo:induction-handbuilt", device="cpu")


@pytest.fixture(scope="session")
def induction_task(induction_model):
    return zoo_task("induction-handbuilt", induction_model)


@pytest.fixture(scope="session")
def retrieval_model():
    return load_model("zoo:retrieval-handbuilt", device="cpu")


@pytest.fixture(scope="session")
def retrieval_task(retrieval_model):
    return zoo_task("retrieval-handbuilt", retrieval_model)


def _accuracy(model, task) -> float:
    with torch.no_grad():
        return float(task.with_metric("accuracy").score(model(task.clean)))


def test_models_reach_recorded_accuracy(induction_model, induction_task, retrieval_model, retrieval_task):
    for name, model, task in (("induction-handbuilt", induction_model, induction_task),
                              ("retrieval-handbuilt", retrieval_model, retrieval_task)):
        card = zoo_card(name)
        assert card.construction == "hand-built"
        assert card.accuracy is not None and card.accuracy >= 0.99
        assert _accuracy(model, task) >= card.accuracy - 1e-6
    full = retrieval_task
    assert full.clean.shape[1] >= 256 and len(set(full.positions["needle_start"].tolist())) >= 3  # several depths


def test_induction_and_previous_token_patterns(induction_model):
    words = INDUCTION_WORDS[:20]
    seq = " ".join(words + words)
    induction = detect_head(induction_model, seq, "induction_head", exclude_bos=True)
    previous = detect_head(induction_model, seq, "previous_token_head")
    assert induction[1, 0] > 0.9, induction
    assert previous[0, 0] > 0.9, previous
    # The induction head attends to the token after the previous occurrence on every repeated token.
    _, cache = induction_model.run_with_cache(seq)
    pattern = cache["pattern", 1][0, 0]  # [q, k]
    n = len(words)
    for q in range(1 + n, 1 + 2 * n):
        assert int(pattern[q].argmax()) == q - n + 1


def test_induction_ablation_hits_only_the_circuit(induction_model, induction_task):
    circuit = [names.head(0, 0), names.head(1, 0)]
    assert ablate(induction_model, induction_task, circuit, "mean").recovered < 0.2
    heads = model_components(induction_model)
    for head, result in zip(heads, ablate_each(induction_model, induction_task, [[h] for h in heads]), strict=True):
        if head in circuit:
            assert result.recovered < 0.2, head
        else:
            assert result.recovered > 0.95, head


def _greedy_steps(model, task, n_steps):
    """Greedy decoding: per step the produced tokens [batch] and the retrieval head's argmax
    attention position [batch] at the current position."""
    ends = task.answer_pos
    tokens = task.clean[:, : int(ends.max()) + 1]
    assert bool((ends == ends[0]).all()), "needle prompts are all cut to the same length"
    steps = []
    for _ in range(n_steps):
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_pattern")
        produced = logits[:, -1].argmax(-1)
        attended = cache["pattern", 1][:, 0, -1].argmax(-1)
        steps.append((produced, attended))
        tokens = torch.cat([tokens, produced[:, None]], dim=1)
    return steps


def test_retrieval_head_copies_the_needle_while_decoding(retrieval_model, retrieval_task):
    task = retrieval_task
    values = task.meta["answer_tokens"]
    span = max(len(v) for v in values)
    assert span == 2  # multi-token values
    rows = torch.arange(len(task))
    for step, (produced, attended) in enumerate(_greedy_steps(retrieval_model, task, span)):
        expected = torch.tensor([v[step] for v in values])
        assert torch.equal(produced, expected)
        # the argmax lands on the needle token equal to the produced token
        assert torch.equal(attended, task.positions["needle_start"] + step)
        assert torch.equal(task.clean[rows, attended], produced)


def test_other_retrieval_heads_attend_locally(retrieval_model, retrieval_task):
    _, cache = retrieval_model.run_with_cache(retrieval_task.clean[:2])
    q = torch.arange(retrieval_task.clean.shape[1])
    for layer in range(2):
        pattern = cache["pattern", layer]  # [batch, head, q, k]
        for head in range(1, retrieval_model.cfg.n_heads):
            target = pattern[:, head].argmax(-1)  # [batch, q]
            local = (q - target <= 3) | (target == 0)
            assert bool(local.all()), names.head(layer, head)


def test_retrieval_ablation_hits_only_the_circuit(retrieval_model, retrieval_task):
    card = zoo_card("retrieval-handbuilt")
    assert card.evidence["retrieval_heads"] == [names.head(1, 0)]
    task = retrieval_task
    retrieval, previous = card.evidence["retrieval_heads"], [names.head(0, 0)]
    for result in ablate_each(retrieval_model, task, [retrieval, previous]):
        assert result.recovered < 0.2, result.components
    logits = run_ablated(retrieval_model, task.clean, retrieval, "mean", task.clean)
    # at most chance: the mean-ablated retrieval head leaves the needle values tied
    assert float(task.with_metric("accuracy").score(logits)) <= 1 / len(card.task["params"]["values"]) + 1e-6
    # The other heads only attend locally, whatever the length: sweep them on 64-token prompts (fast).
    short = zoo_task("retrieval-handbuilt", retrieval_model, context_lengths=[64])
    others = [h for h in model_components(retrieval_model) if h not in card.circuit_nodes]
    results, accuracy = ablate_each(retrieval_model, short, [[h] for h in others], with_accuracy=True)
    assert accuracy == 1.0
    for head, result in zip(others, results, strict=True):
        assert result.recovered > 0.95, head


def _score_without_input_edge(model, task, layer, head, qkv):
    """Task metric with edge ``input -> a{layer}.h{head}<qkv>`` zero-ablated: the embeddings'
    share of that head's q/k/v input is removed (split q/k/v inputs)."""
    saved = {}

    def save(x, hook):
        saved[hook.name] = x

    def remove_input(x, hook):
        x = x.clone()
        x[:, :, head] -= saved["hook_embed"] + saved["hook_pos_embed"]
        return x

    model.set_use_split_qkv_input(True)
    try:
        with torch.no_grad():
            logits = model.run_with_hooks(task.clean, fwd_hooks=[
                ("hook_embed", save), ("hook_pos_embed", save), (names.head_input_hook(layer, qkv), remove_input)])
    finally:
        model.set_use_split_qkv_input(False)
    return float(task.score(logits))


def test_input_to_copy_head_key_edge_matters_only_where_the_card_says(
        induction_model, induction_task, retrieval_model, retrieval_task):
    # induction: input->a1.h0<k> only carries the BOS fallback, so it is not in the reference circuit
    edge = names.edge(names.INPUT, names.head(1, 0), "k")
    assert edge not in zoo_card("induction-handbuilt").circuit_edges
    with torch.no_grad():
        full = float(induction_task.score(induction_model(induction_task.clean)))
    assert _score_without_input_edge(induction_model, induction_task, 1, 0, "k") == pytest.approx(full, rel=1e-3)
    # retrieval: the same edge carries the value-token bonus that beats the question's "What is the"
    assert edge in zoo_card("retrieval-handbuilt").circuit_edges
    assert _score_without_input_edge(retrieval_model, retrieval_task, 1, 0, "k") < 0.6
    # and the query edge is needed in both
    assert _score_without_input_edge(induction_model, induction_task, 1, 0, "q") < 0.2 * full


@pytest.mark.parametrize("name", ["induction-handbuilt", "retrieval-handbuilt"])
def test_edges_marked_invisible_to_mean_ablation(name, induction_model, induction_task, retrieval_model,
                                                retrieval_task):
    """The edges the card marks change nothing when mean-ablated (each position keeps its mean)
    but break the circuit when zero-ablated, as recorded; the previous-token head's query and key
    (position only, by construction) are among them; a content edge matters either way."""
    from circuitkit.attribution import exact_edge_patching

    model, task = {"induction-handbuilt": (induction_model, induction_task),
                   "retrieval-handbuilt": (retrieval_model, retrieval_task)}[name]
    card = zoo_card(name)
    recorded = card.evidence["mean_ablation_invisible_edges"]
    marked = sorted(recorded)
    assert set(marked) <= set(card.circuit_edges)
    assert {names.edge(names.INPUT, names.head(0, 0), "q"), names.edge(names.INPUT, names.head(0, 0), "k")} <= set(marked)
    with torch.no_grad():
        full = abs(float(task.score(model(task.clean))))
    mean = exact_edge_patching(model, task, marked, ablation="mean", progress=False)
    zero = exact_edge_patching(model, task, marked, ablation="zero", progress=False)
    assert mean.values.abs().max() < 0.01 * full
    assert zero.values.abs().min() > 0.2 * full
    for e, v in zip(zero.labels, zero.values.tolist(), strict=True):
        assert v / full == pytest.approx(recorded[e]["zero"], abs=1e-3)
    content = names.edge(names.INPUT, names.head(1, 0), "v")
    assert abs(float(exact_edge_patching(model, task, [content], ablation="mean", progress=False).values[0])) > 0.2 * full

"""Feature circuits drawn token by token: hovering a feature node shows its card; tokens label the blocks."""

from __future__ import annotations

import dataclasses
import html
import os

import browser
import pytest
import torch

from circuitkit.circuit import Circuit
from circuitkit.sae import feature_cards
from circuitkit.viz.circuit import circuit_figure, circuit_html, layout
from circuitkit.viz.sae import feature_hover

SITE0, SITE1 = "blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"
EDGES = ["input@1->f0.resid_pre.3@1", "input@2->f0.resid_pre.5@2", "f0.resid_pre.3@1->f1.resid_post.7@2",
         "f0.resid_pre.5@2->f1.resid_post.7@2", "e0.resid_pre@2->f1.resid_post.7@2", "f1.resid_post.7@2->logits"]


@pytest.fixture(scope="module")
def saes(tiny_model, random_sae):
    return [random_sae(tiny_model.cfg.d_model, 16, SITE0, seed=1), random_sae(tiny_model.cfg.d_model, 16, SITE1, seed=2)]


@pytest.fixture(scope="module")
def circuit(tiny_model):
    scores = dict(zip(EDGES, [0.5, -0.2, 1.0, 0.3, -0.1, 2.0], strict=True))
    c = Circuit.from_nodes_edges(edges=EDGES, scores=scores, method="ig", task="toy", **Circuit.for_model(tiny_model))
    prompt = tiny_model.tokenizer.decode  # the prompt the circuit is drawn over, as feature_circuit records it
    c.meta["example_prompt"] = {"prompt_tokens": [prompt([i]) for i in (1, 7, 9)], "token_ids": [1, 7, 9]}
    return c


@pytest.fixture(scope="module")
def cards(tiny_model, saes, circuit, word_tokenizer):
    corpus = torch.randint(4, len(word_tokenizer), (8, 12), generator=torch.Generator().manual_seed(5))
    return feature_cards(tiny_model, saes, corpus, circuit.nodes, k=3, n_tokens=4)


def node_hover(fig, node_id: str) -> str:
    for trace in fig.data:
        if trace.mode == "markers+text":
            for name, hover in zip(trace.text, trace.hovertext, strict=True):
                if name == node_id:
                    return hover
    raise AssertionError(f"no node marker for {node_id}")


def test_hovering_a_feature_node_shows_its_card(circuit, cards):
    assert list(cards) == ["f0.resid_pre.3", "f0.resid_pre.5", "f1.resid_post.7"]
    fig = circuit_figure(circuit, cards=cards)
    hover = node_hover(fig, "f1.resid_post.7@2")
    card = cards["f1.resid_post.7"]
    assert feature_hover(card) in hover and hover.startswith("<b>f1.resid_post.7@2</b>")
    top = card.examples.iloc[0]
    assert f"{top['activation']:.3g}: " in hover and f"<b>[{top['context_tokens'][top['center']]}]</b>" in hover
    promoted = card.boosted[card.boosted["logit"] > 0].iloc[0]
    suppressed = card.suppressed[card.suppressed["logit"] < 0].iloc[0]
    assert f"'{promoted['token']}' {promoted['logit']:+.2f}" in hover.split("<b>promotes</b>")[1].split("<br>")[0]
    assert f"'{suppressed['token']}' {suppressed['logit']:+.2f}" in hover.split("<b>suppresses</b>")[1]
    # a feature that never fires in the corpus says so rather than listing zero activations
    silent = dataclasses.replace(card, examples=card.examples.assign(activation=0.0))
    assert "(not active in the corpus)" in feature_hover(silent) and "0: " not in feature_hover(silent)
    # error, input and logits nodes carry no card; without cards a feature node shows none
    assert "top activations" not in node_hover(fig, "e0.resid_pre@2")
    assert "top activations" not in node_hover(circuit_figure(circuit), "f1.resid_post.7@2")


def test_token_blocks_are_labelled_with_the_prompt_and_the_slider_still_filters(circuit, cards):
    fig = circuit_figure(circuit, cards=cards)
    pos = layout(circuit, circuit.nodes)
    axis = fig.layout.xaxis
    tokens = circuit.meta["example_prompt"]["prompt_tokens"]
    assert [t.split("<br>")[0] for t in axis.ticktext] == [html.escape(t) for t in tokens] and axis.ticktext[2].endswith("@2")
    # each label sits under its block: input@p is at its block's label
    for p in (1, 2):
        assert axis.tickvals[p] == pytest.approx(pos[f"input@{p}"][0])
    assert axis.range[0] <= min(axis.tickvals) and max(axis.tickvals) <= axis.range[1]
    steps = fig.layout.sliders[0].steps
    assert len(steps) > 1 and sum(steps[-1].args[0]["visible"]) < sum(steps[0].args[0]["visible"])
    assert circuit_figure(circuit, tokens=False).layout.xaxis.visible is False
    given = circuit_figure(circuit, tokens=["a", "b", "c"]).layout.xaxis.ticktext
    assert given[0] == "a<br>@0"


def test_html_with_cards_is_written_atomically(circuit, cards, tmp_path, monkeypatch):
    path = circuit_html(circuit, tmp_path / "circuit.html", cards=cards)
    text = path.read_text()
    assert "top activations" in text and "f1.resid_post.7@2" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["circuit.html"]

    def interrupted(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(OSError, match="disk full"):
        circuit_html(circuit, path, cards={})
    assert path.read_text() == text  # the old page is untouched, no temp file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["circuit.html"]


def test_hovering_in_headless_chromium_draws_the_card(circuit, cards, tmp_path):
    browser.chromium()  # skips with the fix when no browser is installed (fails under CI)
    fig = circuit_figure(circuit, cards=cards)
    curve, point = next((i, list(t.text).index("f1.resid_post.7@2")) for i, t in enumerate(fig.data)
                        if t.mode == "markers+text" and "f1.resid_post.7@2" in t.text)
    hover = f"Plotly.Fx.hover(document.getElementById('{{plot_id}}'), [{{curveNumber: {curve}, pointNumber: {point}}}]);"
    page = tmp_path / "hover.html"
    page.write_text(fig.to_html(include_plotlyjs=True, full_html=True, post_script=hover))
    dom, _ = browser.dump_dom(page.as_uri(), tmp_path / "profile", budget_ms=5000)
    label = dom.split('class="hoverlayer"', 1)[1].split("</svg>", 1)[0]  # the drawn hover label only
    top = cards["f1.resid_post.7"].examples.iloc[0]
    assert "f1.resid_post.7@2" in label and "top activations" in label and "promotes" in label
    assert html.escape(top["context_tokens"][top["center"]]) in label

"""Plotly / HTML views of SAE features: density histogram, highlighted top examples, feature cards."""

from __future__ import annotations

import html

import torch

from circuitkit.errors import InputError


def feature_density_histogram(feature_acts: torch.Tensor, n_bins: int = 50, title: str | None = None):
    """Histogram of log10 feature density (fraction of token positions where each latent fires).

    ``feature_acts``: ``[..., d_sae]`` (e.g. `circuitkit.sae.encode`). Dead latents
    (density 0) are counted in the title and left out of the log axis. Returns a ``go.Figure``.
    """
    import plotly.graph_objects as go

    acts = torch.as_tensor(feature_acts)
    if acts.ndim < 2:
        raise InputError(f"feature_acts must be [..., d_sae], got shape {tuple(acts.shape)}")
    density = (acts.reshape(-1, acts.shape[-1]) > 0).float().mean(0)
    alive = density[density > 0]
    dead = int((density == 0).sum())
    fig = go.Figure(go.Histogram(x=torch.log10(alive).tolist(), nbinsx=n_bins, name="latents"))
    fig.update_layout(
        title=title or f"Feature density ({acts.shape[-1]} latents, {dead} dead)",
        xaxis_title="log10(fraction of tokens where the latent fires)", yaxis_title="latents", bargap=0.05,
    )
    return fig


def _token_span(token: str, act: float, max_act: float, center: bool) -> str:
    alpha = 0.0 if max_act <= 0 else max(0.0, min(1.0, act / max_act))
    border = "border-bottom:2px solid #000;" if center else ""
    text = html.escape(token).replace(" ", "&nbsp;").replace("\n", "&#8629;")
    return (f'<span title="{act:.3g}" style="background:rgba(255,80,0,{alpha:.3f});{border}'
            f'padding:0 1px;font-family:monospace">{text}</span>')


def top_examples_html(examples) -> str:
    """HTML table of `circuitkit.sae.top_activating_examples`: tokens shaded by activation."""
    if len(examples) == 0:
        return "<p>no examples</p>"
    max_act = max(max(row) for row in examples["context_acts"]) or 1.0
    rows = []
    for _, ex in examples.iterrows():
        spans = "".join(_token_span(t, a, max_act, i == ex["center"])
                        for i, (t, a) in enumerate(zip(ex["context_tokens"], ex["context_acts"], strict=True)))
        rows.append(f"<tr><td>{ex['activation']:.3f}</td><td>{int(ex['prompt'])}:{int(ex['pos'])}</td><td>{spans}</td></tr>")
    feature = examples.attrs.get("feature", "")
    return (f"<table><caption>top activations of feature {feature}</caption>"
            "<tr><th>act</th><th>prompt:pos</th><th>context</th></tr>" + "".join(rows) + "</table>")


def top_examples_figure(examples, title: str | None = None):
    """Plotly heatmap: one row per example, its context tokens as cell text, shaded by activation."""
    import plotly.graph_objects as go

    width = max((len(t) for t in examples["context_tokens"]), default=0)
    z = [list(a) + [None] * (width - len(a)) for a in examples["context_acts"]]
    text = [list(t) + [""] * (width - len(t)) for t in examples["context_tokens"]]
    labels = [f"#{r} p{p}:{q}" for r, p, q in zip(examples["rank"], examples["prompt"], examples["pos"], strict=True)]
    fig = go.Figure(go.Heatmap(z=z, text=text, texttemplate="%{text}", colorscale="Oranges", y=labels,
                               hovertemplate="%{text}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title or f"Top activations of feature {examples.attrs.get('feature', '')}",
                      yaxis_autorange="reversed", xaxis_showticklabels=False)
    return fig


def feature_card_html(card) -> str:
    """Standalone HTML for a `circuitkit.sae.features.FeatureCard`."""
    def tokens(frame) -> str:
        return ", ".join(f"<code>{html.escape(t)}</code> ({v:+.2f})" for t, v in zip(frame["token"], frame["logit"], strict=True))

    return (f"<div><h3>{html.escape(card.label)}</h3>"
            f"<p>density {card.density:.4f}, mean activation when active {card.mean_activation:.3f}</p>"
            f"<p><b>boosts</b>: {tokens(card.boosted)}</p><p><b>suppresses</b>: {tokens(card.suppressed)}</p>"
            f"{top_examples_html(card.examples)}</div>")


def _hover_token(token: str) -> str:
    """A token as Plotly hover text shows it: HTML-escaped, a newline as ↵."""
    return html.escape(token).replace("\n", "↵")


def feature_hover(card, n_examples: int = 3, n_tokens: int = 5) -> str:
    """Plotly hover text (``<b>``, ``<i>``, ``<br>``) for a `FeatureCard`:
    its density, its ``n_examples`` top activations (context with the activating token in bold,
    ``[token]``) and the (up to) ``n_tokens`` output tokens its decoder direction promotes /
    suppresses (those with a logit effect of that sign)."""
    lines = [f"<i>density {card.density:.3g}, mean act {card.mean_activation:.3g}</i>", "<b>top activations</b>"]
    examples = card.examples[card.examples["activation"] > 0].head(n_examples)  # a top "activation" of 0 is none
    if len(examples) == 0:
        lines.append("  (not active in the corpus)")
    for _, ex in examples.iterrows():
        # byte-level BPE tokens carry their own spaces; word-level ones (no leading space) get one
        sep = "" if any(t[:1].isspace() for t in ex["context_tokens"]) else " "
        context = sep.join(f"<b>[{_hover_token(t)}]</b>" if i == ex["center"] else _hover_token(t)
                          for i, t in enumerate(ex["context_tokens"]))
        lines.append(f"  {ex['activation']:.3g}: {context}")
    for title, frame, sign in (("promotes", card.boosted, 1), ("suppresses", card.suppressed, -1)):
        # only tokens the direction actually moves that way (a direction W_U does not read moves none)
        shown = [(t, v) for t, v in zip(frame["token"], frame["logit"], strict=True) if sign * v > 0][:n_tokens]
        tokens = ", ".join(f"'{_hover_token(t)}' {v:+.2f}" for t, v in shown) if shown else "(none)"
        lines.append(f"<b>{title}</b>: {tokens}")
    return "<br>".join(lines)

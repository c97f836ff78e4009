"""Feature cards for the feature nodes of a feature circuit (what hovering a node shows).

`feature_cards` takes the SAEs / transcoders a circuit was built with (spliced as in
`circuitkit.sae.splice.make_sites`) and the circuit's node ids (``f{L}.{site}.{i}@{pos}``;
other nodes are skipped), encodes a corpus once per site and returns one
`FeatureCard` per feature (positions merged: a feature's card is
the same at every position): its top-activating contexts over the corpus and the output tokens
its decoder direction promotes / suppresses (`logit_effects`).
"""

from __future__ import annotations

from collections.abc import Iterable

from circuitkit import names
from circuitkit.errors import InputError
from circuitkit.sae.features import FeatureCard, encode, feature_card
from circuitkit.sae.splice import make_sites
from circuitkit.tokenizers import check_token_ids


def feature_ids(nodes: Iterable[str]) -> list[str]:
    """The distinct features among ``nodes``, without positions (``f1.resid_pre.17``), sorted."""
    out = set()
    for node_id in nodes:
        node = names.parse_node(node_id)
        if node.kind == "feature":
            out.add(names.format_node(node, with_pos=False))
    return names.sort_nodes(out)


def feature_cards(model, saes, tokens, nodes: Iterable[str], k: int = 5, context: int = 6, n_tokens: int = 5,
                  batch_size: int = 32) -> dict[str, FeatureCard]:
    """``{feature id: FeatureCard}`` for every feature among ``nodes`` (e.g. ``circuit.nodes``).

    Args:
        saes: the SAEs / transcoders of the circuit (as for `feature_circuit`).
        tokens: the corpus the top activations are searched in, ``[batch, pos]`` token ids, or a
            task (its clean prompts).
        nodes: node ids; feature nodes ``f{L}.{site}.{i}`` (with or without ``@pos``) get a card,
            error / input / logits / head nodes are skipped.
        k: top-activating examples per feature; ``context``: tokens shown before each (and up to
            2 after); ``n_tokens``: promoted and suppressed output tokens each.

    Raises ``ValueError`` before any encoding for a feature whose site is not among ``saes`` or
    whose index is outside its SAE.

    Examples:
        >>> from sae_lens import StandardSAE, StandardSAEConfig
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=64))  # untrained
        >>> sae.cfg.metadata.hook_name = ck.names.hook("resid_pre", 0)
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> cards = ck.feature_cards(model, [sae], task, ["f0.resid_pre.3", "a1.h0"], k=3)
        >>> card = cards["f0.resid_pre.3"]  # head nodes get no card
        >>> list(cards), len(card.examples), list(card.boosted.columns)
        (['f0.resid_pre.3'], 3, ['token', 'token_id', 'logit'])
    """
    if getattr(tokens, "clean", None) is not None:  # a task: search its clean prompts
        tokens = tokens.clean
    tokens = check_token_ids(model, tokens)
    sites = {(s.layer, s.short): s for s in make_sites(model, saes)}
    wanted: dict[tuple[int, str], list[tuple[str, int]]] = {}
    for fid in feature_ids(nodes):
        node = names.parse_node(fid)
        site = sites.get((node.layer, node.hook))
        if site is None:
            raise InputError(f"feature {fid!r} names no spliced site; the sites are "
                             f"{[names.error(s.layer, s.short) for s in sites.values()]} (pass the SAEs the "
                             "circuit was built with)")
        if not 0 <= node.index < site.d_sae:
            raise InputError(f"feature {fid!r}: index {node.index} is outside the {site.d_sae} latents of the "
                             f"SAE at {site.hook_in}")
        wanted.setdefault((node.layer, node.hook), []).append((fid, node.index))
    cards: dict[str, FeatureCard] = {}
    for key, features in wanted.items():
        site = sites[key]
        acts = encode(model, site.sae, tokens, site.hook_in, batch_size)  # once per site
        for fid, index in features:
            cards[fid] = feature_card(model, site.sae, index, tokens, k=k, context=context, hook_name=site.hook_in,
                                      feature_acts=acts, label=fid, n_tokens=n_tokens)
    return {fid: cards[fid] for fid in feature_ids(cards)}

"""Direct logit attribution and the logit lens, both over TransformerLens's ``ActivationCache``.

* `direct_logit_attribution` splits the final answer logit difference into what each
  head, MLP and the input embedding write directly into the residual stream, read through the
  unembedding with the final LayerNorm's scale frozen at its clean value
  (``ActivationCache.get_full_resid_decomposition(apply_ln=True)``). The components plus the
  bias term (``meta["bias"]``) sum exactly to the model's logit difference.
* `logit_lens` reads the accumulated residual stream after each layer through the final
  LayerNorm (recomputed) and the unembedding and scores the task metric there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitkit import names
from circuitkit.ablation.edges import attn_output_norm
from circuitkit.errors import InputError
from circuitkit.models import backend
from circuitkit.scores import Scores
from circuitkit.tasks import metrics
from circuitkit.tasks.task import PAD_ANSWER, Task


def _tokens(task: Task, which: str) -> Tensor:
    if which not in ("clean", "corrupted"):
        raise InputError(f"which must be 'clean' or 'corrupted', got {which!r}")
    return task.clean if which == "clean" else task.corrupted


def _mean_columns(matrix: Tensor, ids: Tensor) -> Tensor:
    """Mean of ``matrix[..., id]`` over each row's ids (``-1`` padding ignored): ``[batch, ...]``."""
    mask = (ids != PAD_ANSWER).to(matrix.dtype)  # [batch, n]
    picked = matrix[..., ids.clamp(min=0)]  # [..., batch, n]
    return (picked * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def logit_diff_directions(model, task: Task) -> tuple[Tensor, Tensor]:
    """Per prompt: ``W_U`` direction of (mean answer - mean wrong answer) ``[batch, d_model]`` and
    the matching ``b_U`` offset ``[batch]``."""
    W_U, b_U = model.W_U, model.b_U  # [d_model, vocab], [vocab]
    answers, wrong = task.answers.to(W_U.device), task.wrong_answers.to(W_U.device)
    direction = (_mean_columns(W_U, answers) - _mean_columns(W_U, wrong)).T  # [batch, d_model]
    offset = _mean_columns(b_U, answers) - _mean_columns(b_U, wrong)
    return direction, offset


@torch.no_grad()
def direct_logit_attribution(model, task: Task, *, which: str = "clean") -> Scores:
    """Direct effect of each component on the answer logit difference at the answer position.

    Labels: ``input`` (token + positional embeddings), ``a{L}.h{H}``, ``m{L}``. Values are
    averaged over prompts; ``meta["per_prompt"]`` is ``[n_components, batch]``,
    ``meta["bias"]`` the summed biases' share and ``meta["logit_diff"]`` the model's own logit
    difference, so ``values.sum() + meta["bias"] == meta["logit_diff"]``.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> dla = ck.direct_logit_attribution(model, task)
        >>> [(label, round(value, 2)) for label, value in dla.top(1)]
        [('a1.h0', 12.0)]
        >>> round(dla.values.sum().item() + dla.meta["bias"], 2) == round(dla.meta["logit_diff"], 2)
        True
    """
    task.check_model(model)
    backend.require(model, ("heads", "additive"), "direct logit attribution")
    cfg = model.cfg
    if getattr(cfg, "output_logits_soft_cap", 0) and cfg.output_logits_soft_cap > 0:
        raise InputError("direct logit attribution needs linear logits; this model soft-caps them "
                         "(output_logits_soft_cap > 0), so the decomposition would not add up; use "
                         "eap / exact_edge_patching on the edges into logits, or activation_patching")
    if any(attn_output_norm(model, layer) is not None for layer in range(cfg.n_layers)):
        raise InputError("direct logit attribution needs heads that add to the residual stream; this model "
                         "normalises each layer's summed head outputs (post-norm), so a head has no direct "
                         "term of its own; use eap / exact_edge_patching on the edges into logits, or "
                         "activation_patching")
    tokens = _tokens(task, which).to(cfg.device)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        stack, labels = cache.get_full_resid_decomposition(expand_neurons=False, apply_ln=True, return_labels=True)
    batch = torch.arange(tokens.shape[0], device=stack.device)
    answer_pos = task.answer_pos.to(stack.device)
    at_answer = stack[:, batch, answer_pos]  # [n_components, batch, d_model]
    direction, offset = logit_diff_directions(model, task)
    ln_final = getattr(model, "ln_final", None)
    if ln_final is not None and hasattr(ln_final, "w"):
        # The final LayerNorm's elementwise weight and bias sit between the scaled stream and W_U.
        offset = offset + direction @ ln_final.b if hasattr(ln_final, "b") else offset
        direction = direction * ln_final.w
    per_prompt = torch.einsum("cbd,bd->cb", at_answer, direction)  # [n_components, batch]

    rows: dict[str, Tensor] = {}
    bias = offset.clone()
    for label, contribution in zip(labels, per_prompt, strict=True):
        if label.startswith("L") and "H" in label:
            layer, head = label[1:].split("H")
            rows[names.head(int(layer), int(head))] = contribution
        elif label.endswith("_mlp_out"):
            rows[names.mlp(int(label.split("_")[0]))] = contribution
        elif label == "pos_embed" and cfg.positional_embedding_type == "shortformer":
            continue  # added to queries and keys only, never to the residual stream
        elif label in ("embed", "pos_embed"):
            rows[names.INPUT] = rows.get(names.INPUT, 0) + contribution
        else:  # "bias": the summed attention / MLP output biases
            bias = bias + contribution
    ordered = names.sort_nodes(rows, cfg.n_layers)
    table = torch.stack([rows[label] for label in ordered])
    # Whatever the task's metric, DLA decomposes the logit difference.
    true_diff = metrics.logit_diff(logits, task.to(logits.device))
    return Scores(
        table.mean(1), ordered, "direct-logit-attribution", task=task.name, metric="logit_diff",
        meta={"per_prompt": table.cpu(), "bias": float(bias.mean()), "logit_diff": float(true_diff.mean()),
              "which": which, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads},
    )


@torch.no_grad()
def logit_lens(model, task: Task, *, which: str = "clean") -> Scores:
    """The task metric read from the residual stream after each layer (the logit lens).

    Labels ``resid_pre.{L}`` for the stream entering layer ``L`` and ``resid_post.{n_layers-1}``
    for the final stream (whose value is the model's own metric). The final LayerNorm is
    applied with its statistics recomputed at each layer. ``meta["per_prompt"]`` is
    ``[n_layers + 1, batch]``; ``.to_frame()`` gives the table.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> lens = ck.logit_lens(model, task)
        >>> [(label, round(value, 2)) for label, value in zip(lens.labels, lens.values.tolist())]
        [('resid_pre.0', 0.0), ('resid_pre.1', 0.0), ('resid_post.1', 12.0)]
    """
    task.check_model(model)
    cfg = model.cfg
    tokens = _tokens(task, which).to(cfg.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: "resid_pre" in n or "resid_post" in n)
        stack = cache.accumulated_resid(layer=None, apply_ln=False)  # [n_layers + 1, batch, pos, d_model]
        per_prompt = []
        for resid in stack:
            normed = model.ln_final(resid) if getattr(model, "ln_final", None) is not None else resid
            per_prompt.append(task.per_prompt(model.unembed(normed)))
    labels = [names.site("resid_pre", layer) for layer in range(cfg.n_layers)] + [names.site("resid_post", cfg.n_layers - 1)]
    table = torch.stack(per_prompt)
    return Scores(table.mean(1), labels, "logit-lens", task=task.name, metric=task.metric_name,
                  meta={"per_prompt": table.cpu(), "which": which, "n_layers": cfg.n_layers})

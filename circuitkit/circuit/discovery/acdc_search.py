"""ACDC (Conmy et al. 2023): greedy edge pruning from the logits backwards."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitkit import names
from circuitkit.ablation.edges import ablation_source, graph_edges, graph_nodes, run_with_edges
from circuitkit.ablation.kinds import DEFAULT_ABLATION
from circuitkit.circuit.core import Circuit
from circuitkit.errors import InputError
from circuitkit.scores import Scores
from circuitkit.tasks.metrics import divergence


def acdc(model, task, threshold: float = 0.01, ablation: str = DEFAULT_ABLATION, metric: str = "kl", seed: int = 0,
         progress: bool = False, source: dict[str, Tensor] | None = None) -> Circuit:
    """ACDC (Conmy et al. 2023): visit nodes from the logits backwards (reverse topological order);
    for each incoming edge, ablate it and keep it ablated if the damage grows by less than
    ``threshold``.

    ``metric="kl"``: damage = KL(full model || circuit) at the answer position (the paper's
    default; for a model with one numeric output, the squared distance,
    `divergence`). ``metric="task"``: damage = drop of the task metric. Edges off every ``input ->
    logits`` path are pruned.

    Every edge of the model gets a ``score``, the damage its removal causes at its turn in the
    sweep (signed: kept edges score >= ``threshold``, removed ones below it). An edge whose
    receiver no longer reaches the logits at its turn is removed without a run: its removal
    changes nothing, so it scores exactly 0 and carries ``tried=False``. An ROC-AUC over the
    circuit's scores therefore covers every edge of the model; rank them signed
    (``roc_auc(..., by_abs=False)``), as ACDC's own test ``damage < threshold`` does.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model, n_prompts=16)
        >>> circuit = ck.acdc(model, task, threshold=0.1)
        >>> circuit.edges
        ['input->a0.h0<v>', 'input->a1.h0<q>', 'input->a1.h0<v>', 'a0.h0->a1.h0<k>', 'a1.h0->logits']
    """
    if threshold < 0:
        raise InputError(f"ACDC threshold must be >= 0, got {threshold}")
    if metric not in ("kl", "task"):
        raise InputError(f"ACDC metric must be 'kl' or 'task', got {metric!r}")
    task.check_model(model)
    edges = graph_edges(model)
    source = ablation_source(model, task, kind=ablation, seed=seed) if source is None else source
    with torch.no_grad():
        full_logits = model(task.clean)

    def damage(keep: set[str]) -> float:
        with torch.no_grad():
            logits = run_with_edges(model, task.clean, keep_edges=keep, source=source)
        return float(divergence(logits, task, full_logits).mean()) if metric == "kl" else -float(task.score(logits))

    incoming: dict[str, list[str]] = {}
    for edge in edges:
        incoming.setdefault(names.parse_edge(edge).child, []).append(edge)
    order = names.sort_nodes(graph_nodes(model), model.cfg.n_layers)
    kept, tried, untried = set(edges), {}, set()
    current = damage(kept)
    bar = tqdm(total=len(edges), desc="acdc", disable=not progress)
    for child in reversed(order):
        parents = incoming.get(child, [])
        if child != names.LOGITS and not any(names.parse_edge(e).parent == child for e in kept):
            kept -= set(parents)  # the node reaches nothing: its inputs cannot matter
            untried.update(parents)
            bar.update(len(parents))
            continue
        for edge in reversed(parents):  # latest parents first, as ACDC does
            trial = kept - {edge}
            value = damage(trial)
            tried[edge] = value - current
            if value - current < threshold:
                kept, current = trial, value
            bar.update(1)
    bar.close()
    scores = Scores(torch.tensor([tried.get(e, 0.0) for e in edges], dtype=torch.float64), edges, "acdc",
                    task=task.name, metric="kl" if metric == "kl" else task.metric_name,
                    meta={"threshold": threshold, "ablation": ablation, **Circuit.for_model(model)})
    circuit = Circuit.from_scores(scores, **Circuit.for_model(model))
    for edge in edges:
        circuit.edge_data(edge)["tried"] = edge in tried
    circuit = circuit.with_members(kept, "edge", prune=True)
    circuit.meta.update(threshold=threshold, ablation=ablation, acdc_metric=metric, damage=current,
                        untried=len(untried), rank_signed=True)
    return circuit

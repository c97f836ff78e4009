"""Reference circuits by exhaustive exact ablation: the ground truth the zoo's cards record.

`find_circuit` ablates every head and MLP alone (mean over the task's clean prompts), grows
the set whose *complement* can be ablated while keeping ``keep`` of the metric, prunes it, and
grows it again until ablating the circuit itself leaves less than ``destroy``.
`find_edge_circuit` refines such a node circuit to edges by exact single-edge ablation.
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from circuitkit import names
from circuitkit.ablation import ablate
from circuitkit.ablation.nodes import run_ablated
from circuitkit.attribution import exact_edge_patching
from circuitkit.circuit.core import Circuit
from circuitkit.circuit.evaluation import EdgeEvaluator, circuit_edges
from circuitkit.tasks.metrics import normalized


@dataclass
class CircuitSearch:
    """What `find_circuit` found and the figures behind it."""

    nodes: list[str]
    per_component: dict[str, float]  # recovered when ONLY that component is mean-ablated
    circuit_only: float  # recovered when everything outside the circuit is mean-ablated
    circuit_ablated: float  # recovered when the circuit is mean-ablated
    clean: float
    baseline: float


def circuit_recovery(model, task, circuit: list[str]) -> tuple[float, float]:
    """(circuit-only recovered, circuit-ablated recovered) under mean ablation."""
    circuit_set = set(circuit)
    complement = [c for c in names.model_components(model) if c not in circuit_set]
    only = ablate(model, task, complement, "mean").recovered if complement else 1.0
    cut = ablate(model, task, list(circuit), "mean").recovered if circuit else 1.0
    return only, cut

def find_circuit(model, task, keep: float = 0.9, destroy: float = 0.2, progress: bool = True) -> CircuitSearch:
    """Exhaustive single-component ablation, then greedy growth of the circuit until its complement
    can be ablated keeping ``keep`` of the metric, pruning of nodes that are not needed, and growth
    (most harmful-to-ablate first) until ablating the circuit leaves less than ``destroy``."""
    comps = names.model_components(model)
    base = ablate(model, task, [], "mean")

    def recovered(ablated: list[str]) -> float:
        # ablate() would re-run the clean and corrupted prompts on every call; they are fixed here.
        if not ablated:
            return 1.0
        value = float(task.score(run_ablated(model, task.clean, ablated, "mean", task.clean)))
        return float(normalized(value, base.clean, base.baseline))

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
    """What `find_edge_circuit` found: the edges and the figures behind them."""

    edges: list[str]
    effects: dict[str, float]  # every model edge: normalized metric change when it ALONE is ablated
    faithfulness: float  # every other edge ablated
    ablated_faithfulness: float  # the circuit's edges ablated, every other edge kept


def find_edge_circuit(model, task, nodes: list[str], keep: float = 0.9, destroy: float = 0.2,
                      progress: bool = True) -> EdgeCircuitSearch:
    """Refine a node circuit to edges by exact ablation (mean over the task's clean prompts).

    Every model edge is ablated alone (`exact_edge_patching`); the
    edges among ``nodes`` (and ``input`` / ``logits``) are taken in order of decreasing |effect|
    until the edges alone reach faithfulness ``keep`` (every other edge ablated), then each is
    dropped, smallest |effect| first, if the rest stays faithful; finally edges are added back
    until ablating the circuit's edges leaves faithfulness below ``destroy``.
    """
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

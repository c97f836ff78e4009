"""``verify``: re-check a zoo model's recorded circuit on its card's task.

Definitions (shared by hand-built and trained models, and by the evidence stored in cards):

* full metric / accuracy: the task metric and top-1 accuracy of the unablated model;
* circuit-only recovery: ``ablate(model, task, every head and MLP NOT in the circuit, "mean").recovered``;
* circuit-ablated recovery: ``ablate(model, task, the circuit's heads and MLPs, "mean").recovered``;

* edge faithfulness (cards that list edges): `circuitkit.circuit.evaluation` faithfulness of the
  card's edges alone (every other edge mean-ablated), and of the model with only those edges ablated;

mean ablation takes its means over the task's clean prompts. Recovery is 1 for the intact model and 0
for the corrupted run; on a task scoring a numeric output by distance (``mse`` / ``l2``, tracr's
``frac_prevs``) 0 is instead every head and MLP mean-ablated (the output then predicts its mean,
which already halves a random other input's squared error, so "as bad as corrupted" is out of reach
for any ablation). A model passes when circuit-only
recovery >= `MIN_CIRCUIT_ONLY`, circuit-ablated recovery < `MAX_CIRCUIT_ABLATED`,
accuracy >= the card's accuracy - `ACCURACY_TOLERANCE` and, where the card lists edges, the
edges alone are >= `MIN_CIRCUIT_ONLY` faithful and ablating them leaves < `MAX_CIRCUIT_ABLATED`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from circuitkit import names
from circuitkit.ablation.nodes import AblationResult, run_ablated
from circuitkit.circuit.evaluation import EdgeEvaluator
from circuitkit.errors import InputError
from circuitkit.models.loading import parse_spec
from circuitkit.models.zoo_store import load_zoo_model, zoo_card, zoo_task

MIN_CIRCUIT_ONLY = 0.9
MAX_CIRCUIT_ABLATED = 0.2
ACCURACY_TOLERANCE = 0.02
DISTANCE_METRICS = ("mse", "l2")  # numeric outputs scored by distance to a target


@dataclass
class VerifyReport:
    """The figures ``zoo verify`` prints, and whether they meet the thresholds."""

    name: str
    metric: str
    full_metric: float
    corrupted_metric: float
    accuracy: float
    recorded_accuracy: float | None
    circuit_only: float  # recovered share with everything outside the circuit mean-ablated
    circuit_ablated: float  # recovered share with the circuit's heads / MLPs mean-ablated
    circuit_components: list[str] = field(default_factory=list)
    complement_components: list[str] = field(default_factory=list)
    n_prompts: int = 0
    # Edge level (cards that list edges): the circuit's edges alone, every other edge mean-ablated,
    # and the circuit's edges ablated with every other edge kept (circuit.evaluate's faithfulness).
    edge_faithfulness: float | None = None
    edge_ablated_faithfulness: float | None = None
    n_edges: int = 0
    edges_checked: bool = False  # whether the card lists edges (then the edge figures must pass too)
    floor: str = "corrupted"  # what recovery 0 is: the corrupted run, or "all ablated" (numeric outputs)

    @property
    def failures(self) -> list[str]:
        out = []
        if not self.circuit_only >= MIN_CIRCUIT_ONLY:
            out.append(f"circuit-only recovery {self.circuit_only:.3f} < {MIN_CIRCUIT_ONLY}")
        if not self.circuit_ablated < MAX_CIRCUIT_ABLATED:
            out.append(f"circuit-ablated recovery {self.circuit_ablated:.3f} >= {MAX_CIRCUIT_ABLATED}")
        if self.recorded_accuracy is not None and not self.accuracy >= self.recorded_accuracy - ACCURACY_TOLERANCE:
            out.append(f"accuracy {self.accuracy:.3f} < recorded {self.recorded_accuracy:.3f} - {ACCURACY_TOLERANCE}")
        if self.edges_checked:
            if not self.edge_faithfulness >= MIN_CIRCUIT_ONLY:
                out.append(f"edge-circuit faithfulness {self.edge_faithfulness:.3f} < {MIN_CIRCUIT_ONLY}")
            if not self.edge_ablated_faithfulness < MAX_CIRCUIT_ABLATED:
                out.append(f"edge-circuit-ablated faithfulness {self.edge_ablated_faithfulness:.3f} >= {MAX_CIRCUIT_ABLATED}")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        recorded = f" (recorded {self.recorded_accuracy:.3f})" if self.recorded_accuracy is not None else ""
        lines = [
            f"zoo model {self.name}: {self.n_prompts} prompts, metric {self.metric}",
            f"  full model metric          {self.full_metric:.4f}  ({self.floor} {self.corrupted_metric:.4f}, "
            "recovery 0)",
            f"  accuracy                   {self.accuracy:.4f}{recorded}",
            f"  circuit-only recovery      {self.circuit_only:.4f}  (needs >= {MIN_CIRCUIT_ONLY}; "
            f"{len(self.complement_components)} components outside the circuit mean-ablated)",
            f"  circuit-ablated recovery   {self.circuit_ablated:.4f}  (needs < {MAX_CIRCUIT_ABLATED}; "
            f"ablated {', '.join(self.circuit_components)})",
        ]
        if self.edge_faithfulness is not None:
            lines += [
                f"  edges alone (faithfulness) {self.edge_faithfulness:.4f}  (needs >= {MIN_CIRCUIT_ONLY}; {self.n_edges} "
                "edges kept, every other edge mean-ablated)",
                f"  edges ablated              {self.edge_ablated_faithfulness:.4f}  (needs < {MAX_CIRCUIT_ABLATED})",
            ]
        lines.append(f"  {'PASS' if self.passed else 'FAIL: ' + '; '.join(self.failures)}")
        return "\n".join(lines)


def split_components(model, circuit_nodes: list[str]) -> tuple[list[str], list[str]]:
    """(circuit heads/MLPs, the model's other heads/MLPs); ``ValueError`` for nodes the model lacks."""
    components = names.model_components(model)
    inside = [n for n in circuit_nodes if names.parse_node(n).kind in ("head", "mlp")]
    unknown = [n for n in inside if n not in components]
    if unknown:
        raise InputError(
            f"circuit nodes {unknown} do not exist in model {model.cfg.model_name!r} "
            f"({model.cfg.n_layers} layers x {model.cfg.n_heads} heads); fix the card's circuit"
        )
    return inside, [n for n in components if n not in inside]


def ablate_each(model, task, component_sets, kind: str = "mean", with_accuracy: bool = False):
    """``[ablate(model, task, components, kind) for components in component_sets]``, sharing one
    clean and one corrupted run (the same figures; tests check they agree). An empty set leaves
    the model intact. With ``with_accuracy``, also returns the clean top-1 accuracy:
    ``(results, accuracy)``."""
    task.check_model(model)
    with torch.no_grad():
        clean_logits = model(task.clean)
        clean, baseline = float(task.score(clean_logits)), float(task.score(model(task.corrupted)))
        accuracy = float(task.with_metric("accuracy").score(clean_logits))
    results = []
    for components in component_sets:
        components = list(components)
        value = float(task.score(run_ablated(model, task.clean, components, kind, task.clean))) if components else clean
        results.append(AblationResult(components, kind, clean, value, baseline))
    return (results, accuracy) if with_accuracy else results


def measure(model, task, card, kind: str = "mean") -> VerifyReport:
    """Compute the verify figures of ``model`` on ``task`` for the circuit in ``card``."""
    if not card.circuit_nodes:
        raise InputError(f"zoo card {card.name!r} records no circuit nodes; add the reference circuit to its card")
    inside, outside = split_components(model, card.circuit_nodes)
    if not inside:
        raise InputError(f"the circuit of {card.name!r} has no heads or MLPs to ablate; its nodes are {card.circuit_nodes}")
    floor = "all ablated" if task.metric_name in DISTANCE_METRICS else "corrupted"
    sets = [outside, inside] + ([inside + outside] if floor != "corrupted" else [])
    results, acc = ablate_each(model, task, sets, kind=kind, with_accuracy=True)
    if floor != "corrupted":
        everything = results.pop()
        results = [AblationResult(r.components, r.kind, r.clean, r.ablated, everything.ablated) for r in results]
    circuit_only, circuit_ablated = results
    edge_figures = {}
    if card.circuit_edges:
        ev = EdgeEvaluator(model, task, kind)
        edge_figures = dict(
            edge_faithfulness=ev.faithfulness(card.circuit_edges),
            edge_ablated_faithfulness=ev.faithfulness_without(card.circuit_edges),
            n_edges=len(card.circuit_edges), edges_checked=True)
    return VerifyReport(
        name=card.name, metric=task.metric_name, full_metric=circuit_ablated.clean,
        corrupted_metric=circuit_ablated.baseline, accuracy=acc, recorded_accuracy=card.accuracy,
        circuit_only=circuit_only.recovered, circuit_ablated=circuit_ablated.recovered,
        circuit_components=inside, complement_components=outside, n_prompts=len(task), floor=floor, **edge_figures,
    )


def verify(name_or_model, card=None, task=None, device: str = "cpu", **task_overrides) -> VerifyReport:
    """Re-run the circuit check of a zoo model.

    ``name_or_model``: a zoo name (``"induction-handbuilt"``, also ``"zoo:..."``) or a loaded
    HookedTransformer (its card is found by ``card=`` or by ``model.cfg.model_name``). ``task``
    defaults to the card's task built with the model's tokenizer (``task_overrides`` change its
    parameters).

    Examples:
        >>> import circuitkit as ck
        >>> report = ck.verify("induction-handbuilt")
        >>> report.passed, report.circuit_components
        (True, ['a0.h0', 'a1.h0'])
        >>> report.circuit_only, round(report.circuit_ablated, 2)
        (1.0, 0.01)
    """
    if isinstance(name_or_model, str):
        name = parse_spec(name_or_model).zoo_name or name_or_model
        card = card if card is not None else zoo_card(name)
        model = load_zoo_model(name, device=device)
    else:
        model = name_or_model
        if not hasattr(model, "cfg"):
            raise InputError(f"verify takes a zoo name or a HookedTransformer, got {type(model).__name__}")
        if card is None:
            card = zoo_card(model.cfg.model_name)
    if task is None:
        task = zoo_task(card, model, **task_overrides)
    return measure(model, task, card)

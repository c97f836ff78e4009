"""Zero / mean / resample ablation of heads and MLPs, as TransformerLens forward hooks.

A head is ablated at ``blocks.L.attn.hook_z`` (its output before ``W_O``), an MLP at
``blocks.L.hook_mlp_out``. Mean ablation replaces the activation by its mean over the reference
batch at each position; resample ablation by the activation of another reference prompt (a
seeded derangement), so each prompt gets a realistic value from a different input.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from circuitkit import names
from circuitkit.ablation.kinds import NODE_ABLATION_KINDS, check_kind, resample_permutation
from circuitkit.errors import InputError
from circuitkit.models import backend
from circuitkit.tasks.metrics import normalized

Hook = tuple[str, Callable]


@dataclass
class AblationPlan:
    """Which heads (per layer) and MLPs to ablate, at which positions (None: every position), and how."""

    heads: dict[int, list[tuple[int, int | None]]]
    mlps: dict[int, list[int | None]]
    kind: str

    def hook_names(self) -> list[str]:
        return [names.output_hook(names.Node("head", layer=layer, head=0)) for layer in self.heads] + [
            names.output_hook(names.Node("mlp", layer=layer)) for layer in self.mlps
        ]

    def check_positions(self, n_pos: int) -> None:
        """``InputError`` for a position (``a1.h0@5``) outside prompts of ``n_pos`` tokens."""
        positions = [p for pairs in self.heads.values() for _, p in pairs] + [p for ps in self.mlps.values() for p in ps]
        beyond = sorted({p for p in positions if p is not None and p >= n_pos})
        if beyond:
            raise InputError(f"positions {beyond} lie beyond the prompts' {n_pos} tokens (0..{n_pos - 1}); "
                             "give positions inside the prompts, or none for every position")


def plan(model, components: Iterable[str], kind: str) -> AblationPlan:
    """The plan for ``components``: heads ``a1.h0`` and MLPs ``m2``, each optionally at one token
    position (``a1.h0@5``: only that position's output is ablated)."""
    check_kind(kind, NODE_ABLATION_KINDS)
    heads: dict[int, list[tuple[int, int | None]]] = defaultdict(list)
    mlps: dict[int, list[int | None]] = defaultdict(list)
    nodes = names.check_model_components(model, components, purpose="ablated")
    if any(node.kind == "head" for node in nodes):
        backend.require(model, ("heads",), "ablating heads")
    for node in nodes:
        if node.kind == "head":
            heads[node.layer].append((node.head, node.pos))
        else:
            mlps[node.layer].append(node.pos)
    return AblationPlan(dict(heads), dict(sorted(mlps.items())), kind)


def _positions(act: Tensor, positions: list[int | None]):
    """The position index of ``act`` (``[batch, pos, ...]``) to replace: all, or the given ones."""
    if None in positions:
        return slice(None)
    beyond = [p for p in positions if p >= act.shape[1]]
    if beyond:
        raise InputError(f"positions {sorted(set(beyond))} lie beyond these prompts' {act.shape[1]} tokens")
    return torch.tensor(sorted(set(positions)))


def reference_activations(model, reference: Tensor, hook_names: list[str]) -> dict[str, Tensor]:
    """Cache only the hooks that ablation needs, on the reference tokens."""
    if not hook_names:
        return {}
    with torch.no_grad():
        _, cache = model.run_with_cache(reference, names_filter=lambda n: n in set(hook_names))
    return {n: cache[n] for n in hook_names}


def _replacement(act: Tensor, ref: Tensor | None, kind: str, perm: Tensor | None) -> Tensor:
    if kind == "zero":
        return torch.zeros_like(act)
    assert ref is not None
    seq = act.shape[1]
    if kind == "mean":
        if ref.shape[1] >= seq:
            return ref[:, :seq].mean(0, keepdim=True).expand_as(act)
        return ref.mean((0, 1), keepdim=True).expand_as(act)
    # resample
    if ref.shape[1] < seq:
        raise InputError(f"resample ablation needs reference prompts at least as long as the input ({ref.shape[1]} < {seq})")
    return ref[perm % ref.shape[0], :seq]


def ablation_hooks(
    model,
    components: Iterable[str],
    kind: str = "mean",
    reference: Tensor | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> list[Hook]:
    """Forward hooks that ablate ``components`` (node ids such as ``a1.h0``, ``m2``).

    ``reference``: token ids whose activations define mean / resample values (e.g. the task's
    clean prompts); required unless ``kind="zero"``. ``batch_size`` of the runs the hooks will be
    used in (for resample pairing; defaults to the reference batch size).

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> hooks = ck.ablation_hooks(model, ["a1.h0"], kind="mean", reference=task.clean)
        >>> [hook_name for hook_name, _ in hooks] == [ck.names.hook("z", 1)]
        True
        >>> round(task.score(model.run_with_hooks(task.clean, fwd_hooks=hooks)).item(), 2)
        0.11
    """
    p = plan(model, components, kind)
    if kind != "zero" and reference is None:
        raise InputError(f"{kind} ablation needs reference tokens (e.g. task.clean); or use kind='zero'")
    refs = reference_activations(model, reference, p.hook_names()) if kind != "zero" else {}
    perm = None
    if kind == "resample":
        perm = resample_permutation(reference.shape[0], batch_size or reference.shape[0], seed)

    hooks: list[Hook] = []
    for layer, pairs in p.heads.items():
        name = names.output_hook(names.Node("head", layer=layer, head=0))
        by_head: dict[int, list[int | None]] = defaultdict(list)
        for head, pos in pairs:
            by_head[head].append(pos)

        def head_hook(z, hook, by_head=by_head, name=name):
            replacement = _replacement(z, refs.get(name), kind, _fit(perm, z)).to(z.dtype)
            z = z.clone()
            for head, positions in by_head.items():
                at = _positions(z, positions)
                z[:, at, head] = replacement[:, at, head]
            return z

        hooks.append((name, head_hook))
    for layer, positions in p.mlps.items():
        name = names.output_hook(names.Node("mlp", layer=layer))

        def mlp_hook(out, hook, name=name, positions=positions):
            replacement = _replacement(out, refs.get(name), kind, _fit(perm, out)).to(out.dtype)
            out = out.clone()
            at = _positions(out, positions)
            out[:, at] = replacement[:, at]
            return out

        hooks.append((name, mlp_hook))
    return hooks


def _fit(perm: Tensor | None, act: Tensor) -> Tensor | None:
    if perm is None:
        return None
    if perm.shape[0] < act.shape[0]:
        reps = -(-act.shape[0] // perm.shape[0])
        perm = perm.repeat(reps)
    return perm[: act.shape[0]].to(act.device)


def run_ablated(
    model,
    tokens: Tensor,
    components: Iterable[str],
    kind: str = "mean",
    reference: Tensor | None = None,
    seed: int = 0,
) -> Tensor:
    """Logits of ``model`` on ``tokens`` with ``components`` ablated.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> logits = ck.run_ablated(model, task.clean, ["a1.h0"], kind="zero")
        >>> logits.shape, task.score(logits).item()
        (torch.Size([64, 20, 36]), 0.0)
    """
    reference = tokens if reference is None and kind != "zero" else reference
    plan(model, components, kind).check_positions(tokens.shape[1])
    hooks = ablation_hooks(model, components, kind, reference, seed, batch_size=tokens.shape[0])
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=hooks)


@dataclass
class AblationResult:
    """Metric with and without the ablation, and the share of behaviour kept.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> result = ck.ablate(model, task, ["a1.h0"], kind="zero")
        >>> result.clean, result.ablated, result.baseline
        (12.0, 0.0, 0.0)
        >>> result.recovered
        0.0
    """

    components: list[str]
    kind: str
    clean: float
    ablated: float
    baseline: float  # corrupted-run metric: the "behaviour gone" floor

    @property
    def recovered(self) -> float:
        """`normalized` ablated metric: 1 = intact, 0 = as bad as
        corrupted (NaN when the corruption does not change the metric)."""
        return float(normalized(self.ablated, self.clean, self.baseline, on_equal="nan"))

    def __str__(self) -> str:
        return (f"{self.kind}-ablating {', '.join(self.components)}: metric {self.clean:.3g} -> {self.ablated:.3g} "
                f"(corrupted run {self.baseline:.3g}); behaviour recovered {self.recovered:.1%}")


def ablate(model, task, components: Iterable[str], kind: str = "mean", seed: int = 0) -> AblationResult:
    """Ablate ``components`` on ``task``'s clean prompts and compare its metric with the clean and
    corrupted runs. Mean / resample values come from the clean prompts. A component with a
    position (``a1.h0@19``) is ablated at that token only; positions beyond the prompts are refused.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> round(ck.ablate(model, task, ["a1.h0"], kind="mean").recovered, 2)  # the induction head
        0.01
        >>> round(ck.ablate(model, task, ["a1.h1"], kind="mean").recovered, 2)  # an unused head
        1.0
    """
    components = list(components)
    task.check_model(model)
    plan(model, components, kind).check_positions(task.clean.shape[1])
    with torch.no_grad():
        clean = float(task.score(model(task.clean)))
        baseline = float(task.score(model(task.corrupted)))
        ablated = float(task.score(run_ablated(model, task.clean, components, kind, task.clean, seed)))
    return AblationResult([str(c) for c in components], kind, clean, ablated, baseline)

"""``Scores``: the one result type every estimator returns.

A Scores is a 1-D tensor of values with one component label per value (node ids such as
``a1.h0`` or ``m2@5``, or edge ids such as ``a0.h0->a1.h0<k>``; see `circuitkit.names`),
plus what produced it. Grids (layer x head, layer x position) are views computed from the
labels, so every method's output can become a table, a heatmap or a circuit the same way.

``meta`` keys (`META_KEYS` says what each means; an estimator sets those that apply):

* shape of the model: ``n_layers``, ``n_heads``, ``has_mlp``, ``model``;
* how the numbers were made: ``ablation``, ``level``, ``steps``, ``interpolate``, ``qk_fix``,
  ``target``, ``by_pos``, ``direction``, ``receivers``, ``receiver_input``, ``freeze_mlps``,
  ``which``, ``kind``, ``hook_name``, ``threshold``, ``min_recall``, ``n_latents``, ``l1``,
  ``normalize``, ``route_capped``, ``from_edges``, ``d_sae``;
* reference values: ``clean_score`` / ``corrupted_score`` (patching), ``clean_metric`` /
  ``corrupted_metric`` (attribution), ``bias``, ``logit_diff``, ``normalized`` (the formula);
* views: ``grid`` (the values in TransformerLens's shape, NaN where not measured) with
  ``grid_dims`` (its axes), ``per_prompt`` (values per prompt), ``retrieval_heads``, ``kept``,
  ``n_kept``, ``recall``, ``context_length``, ``needle_depth``, ``n_prompts``, ``n_positive``,
  ``n_negative``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from circuitkit import names
from circuitkit.errors import InputError, UnknownNameError

# What each ``meta`` key means: one line per key, the key, then its meaning.
_META_TABLE = """
n_layers          layers of the model
n_heads           heads per layer
has_mlp           whether the model has MLPs
model             the model's name
ablation          the ablation kind of the source (circuitkit.ablation.kinds)
level             'edge' or 'node' scores
steps             integration steps (EAP-IG) or SAE training steps
interpolate       EAP-IG's path: 'inputs' or 'activations'
qk_fix            whether q / k edges use the QK fix
target            what was patched or attributed (head_out, resid_pre, ...)
by_pos            one value per position
direction         'denoise' (clean into corrupted) or 'noise'
receivers         path patching's receivers
receiver_input    the receivers' input patched (q, k, v, mlp, resid)
freeze_mlps       whether path patching froze the MLPs
which             the logit lens's read-out
kind              the head-score kind
hook_name         the hook an SAE reads
threshold         the cut a selection used
min_recall        the answer recall a retrieval trial needs
n_latents         latents of the discrete SAE
l1                its L1 coefficient
normalize         whether head counts are divided by the codes used
route_capped      scores capped by the widest route to the logits (circuit.routes)
from_edges        how node scores were summed from edge scores
clean_score       the metric on the clean run
corrupted_score   the metric on the corrupted run
clean_metric      the metric on the clean run
corrupted_metric  the metric on the corrupted run
bias              the logit difference the biases contribute
logit_diff        the model's logit difference
normalized        the formula of a normalized metric
grid              the values in TransformerLens's shape (NaN where not measured)
grid_dims         the grid's axes
per_prompt        values per prompt
retrieval_heads   heads above the retrieval threshold, best first
kept              per trial, whether it was kept
n_kept            trials kept
recall            per trial, the answer recall
context_length    per trial, its context length
needle_depth      per trial, the needle's depth
n_prompts         prompts used
n_positive        positive prompts
n_negative        negative prompts
d_sae             latents of the SAE
baseline          the value an SAE feature graph's ablated nodes take: mean, corrupted or zero
positions         an SAE feature graph's nodes: 'each' position or 'sum' over positions
members           an ensemble's member methods
member_scores     an ensemble's members' own scores, by member
ig_steps          EAP-IG's steps where it ranks for another method
warm_start        the method whose scores started edge pruning's gates
objective         edge pruning's loss: 'metric' or 'kl'
target_edges      edge pruning's final target of open gates
batch_size        prompts per step
anneal            share of the steps over which edge pruning's target falls
price             edge pruning's final price of an open gate
expected_kept     edge pruning's final expected number of open gates
seed              the seed of a random choice
rules             the LRP rules RelP's backward pass follows
"""
META_KEYS: dict[str, str] = dict(line.split(None, 1) for line in _META_TABLE.strip().splitlines())


@dataclass
class Scores:
    """Labelled scores.

    Attributes:
        values: float tensor of shape ``[n]``.
        labels: ``n`` component ids (all nodes or all edges), aligned with ``values``.
        method: what computed them (``"eap-ig"``, ``"activation-patching"``, ``"retrieval"``...).
        task: the task name they were measured on.
        metric: the metric name (``"logit_diff"``...), if any.
        meta: anything else that explains the numbers (ablation kind, steps, n_layers...).

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> scores = ck.activation_patching(model, task, progress=False)
        >>> scores
        Scores(method='activation-patching', task='induction', n=8, nodes, top: a1.h0=+1, ...)
        >>> scores.labels[:3], round(scores["a1.h0"], 2), scores.head_grid().shape
        (['a0.h0', 'a0.h1', 'a0.h2'], 1.0, torch.Size([2, 4]))
    """

    values: torch.Tensor
    labels: list[str]
    method: str
    task: str = ""
    metric: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = torch.as_tensor(self.values).detach().float().cpu().reshape(-1)
        self.labels = [str(label) for label in self.labels]
        if self.values.numel() != len(self.labels):
            raise InputError(
                f"Scores has {self.values.numel()} values but {len(self.labels)} labels; "
                "give exactly one label per value"
            )
        if len(set(self.labels)) != len(self.labels):
            dupes = sorted({x for x in self.labels if self.labels.count(x) > 1})[:5]
            raise InputError(f"Scores labels must be unique; repeated: {dupes}")
        kinds = {names.is_edge(label) for label in self.labels}
        if len(kinds) > 1:
            raise InputError("Scores mixes node and edge labels; keep node and edge scores apart")
        for label in self.labels[:1]:
            names.parse_edge(label) if names.is_edge(label) else names.parse_node(label)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, scores: Mapping[str, float], method: str, **kwargs: Any) -> Scores:
        labels = list(scores)
        return cls(torch.tensor([float(scores[k]) for k in labels]), labels, method, **kwargs)

    @classmethod
    def from_head_grid(
        cls, grid: torch.Tensor, method: str, **kwargs: Any
    ) -> Scores:
        """From a ``[n_layers, n_heads]`` grid (e.g. a head-score map)."""
        grid = torch.as_tensor(grid)
        if grid.ndim != 2:
            raise InputError(f"a head grid must be [n_layers, n_heads], got shape {tuple(grid.shape)}")
        n_layers, n_heads = grid.shape
        labels = [names.head(layer, h) for layer in range(n_layers) for h in range(n_heads)]
        meta = dict(kwargs.pop("meta", {}))
        meta.setdefault("n_layers", n_layers)
        meta.setdefault("n_heads", n_heads)
        return cls(grid.reshape(-1), labels, method, meta=meta, **kwargs)

    # --- views --------------------------------------------------------------------------------
    @property
    def is_edge(self) -> bool:
        return bool(self.labels) and names.is_edge(self.labels[0])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, label: str) -> float:
        try:
            return float(self.values[self.labels.index(label)])
        except ValueError:
            raise UnknownNameError(f"no score for {label!r} in these {self.method} scores") from None

    def __contains__(self, label: object) -> bool:
        return label in self.labels

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.labels, self.values.tolist(), strict=True))

    def top(self, k: int, by_abs: bool = True) -> list[tuple[str, float]]:
        """The k highest-scoring components (by |score| unless ``by_abs=False``)."""
        key = self.values.abs() if by_abs else self.values
        order = torch.argsort(key, descending=True)[:k]
        return [(self.labels[i], float(self.values[i])) for i in order.tolist()]

    def subset(self, labels: Iterable[str]) -> Scores:
        keep = list(labels)
        index = {label: i for i, label in enumerate(self.labels)}
        missing = [x for x in keep if x not in index]
        if missing:
            raise UnknownNameError(f"labels not in these scores: {missing[:5]}")
        return Scores(
            self.values[[index[x] for x in keep]], keep, self.method, self.task, self.metric, dict(self.meta)
        )

    def head_grid(self, n_layers: int | None = None, n_heads: int | None = None) -> torch.Tensor:
        """``[n_layers, n_heads]`` grid of head scores (NaN where a head has no score).

        Position-resolved head labels (``a1.h0@3``) are summed over positions.
        """
        heads = [(names.parse_node(label), v) for label, v in zip(self.labels, self.values.tolist(), strict=True)
                 if not names.is_edge(label) and names.parse_node(label).kind == "head"]
        if not heads:
            raise InputError(f"these {self.method} scores hold no attention-head labels")
        n_layers = n_layers or self.meta.get("n_layers") or 1 + max(n.layer for n, _ in heads)
        n_heads = n_heads or self.meta.get("n_heads") or 1 + max(n.head for n, _ in heads)
        grid = torch.full((n_layers, n_heads), float("nan"))
        for node, v in heads:
            cur = grid[node.layer, node.head]
            grid[node.layer, node.head] = v if torch.isnan(cur) else cur + v
        return grid

    def to_frame(self):
        """A pandas DataFrame: one row per component with its parsed parts and score."""
        import pandas as pd

        rows = []
        for label, value in zip(self.labels, self.values.tolist(), strict=True):
            row: dict[str, Any] = {"component": label, "score": value}
            if names.is_edge(label):
                e = names.parse_edge(label)
                row.update(parent=e.parent, child=e.child, qkv=e.qkv)
            else:
                n = names.parse_node(label)
                row.update(kind=n.kind, layer=n.layer, head=n.head, pos=n.pos)
            rows.append(row)
        frame = pd.DataFrame(rows)
        frame["method"] = self.method
        frame["task"] = self.task
        frame["metric"] = self.metric
        return frame

    def __repr__(self) -> str:
        best = ", ".join(f"{k}={v:+.3g}" for k, v in self.top(3))
        return (f"Scores(method={self.method!r}, task={self.task!r}, n={len(self)}, "
                f"{'edges' if self.is_edge else 'nodes'}, top: {best})")


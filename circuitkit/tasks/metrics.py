"""Task metrics. Each takes logits ``[batch, pos, vocab]`` and a Task and returns ``[batch]``.

Several answers per prompt (padded with -1) are pooled: logit difference compares the mean
answer logit with the mean wrong-answer logit; probability sums the answers' probabilities.
On a task scored at several positions per prompt each metric is computed at every position
and reduced over them by ``task.position_reduce`` (mean or sum).

Higher is better for every metric but ``kl``, ``mse`` and ``l2`` (distances: lower is better);
`normalized` maps both kinds to 0 = corrupted, 1 = clean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from circuitkit.errors import InputError

if TYPE_CHECKING:
    from circuitkit.tasks.task import Task


def final_logits(logits: Tensor, task: Task) -> Tensor:
    """Logits at each prompt's answer position, ``[batch, vocab]``; ``[batch, k, vocab]`` for a
    task scored at ``k`` positions (padding positions read position 0 and are masked later)."""
    if logits.ndim == 2:
        return logits
    batch = torch.arange(logits.shape[0], device=logits.device)
    pos = task.answer_pos.to(logits.device)
    if pos.ndim == 2:
        return logits[batch[:, None], pos.clamp(min=0)]
    return logits[batch, pos]


def _gather_mean(values: Tensor, ids: Tensor) -> Tensor:
    ids = ids.to(values.device)
    mask = ids >= 0
    picked = values.gather(-1, ids.clamp(min=0)) * mask
    return picked.sum(-1) / mask.sum(-1).clamp(min=1)


def logit_diff(logits: Tensor, task: Task) -> Tensor:
    """Mean answer logit minus mean wrong-answer logit."""
    last = final_logits(logits, task)
    return task.reduce_positions(_gather_mean(last, task.answers) - _gather_mean(last, task.wrong_answers))


def answer_prob(logits: Tensor, task: Task) -> Tensor:
    """Total probability of the answer tokens."""
    probs = final_logits(logits, task).float().softmax(-1)
    ids = task.answers.to(probs.device)
    mask = ids >= 0
    return task.reduce_positions((probs.gather(-1, ids.clamp(min=0)) * mask).sum(-1))


def answer_logprob(logits: Tensor, task: Task) -> Tensor:
    """Log of the total answer probability (smooth, useful for gradients)."""
    logp = final_logits(logits, task).float().log_softmax(-1)
    ids = task.answers.to(logp.device)
    picked = logp.gather(-1, ids.clamp(min=0)).masked_fill(ids < 0, float("-inf"))
    value = torch.logsumexp(picked, -1)
    if value.ndim == 2:  # padding positions have no answer (-inf); they are masked out
        value = value.masked_fill(~task.position_mask().to(value.device), 0.0)
    return task.reduce_positions(value)


def accuracy(logits: Tensor, task: Task) -> Tensor:
    """1.0 where the top prediction is one of the answers."""
    top = final_logits(logits, task).argmax(-1, keepdim=True)
    return task.reduce_positions((top == task.answers.to(top.device)).any(-1).float())


def kl_div(logits: Tensor, task: Task, reference: Tensor | None = None) -> Tensor:
    """KL(reference || model) at the answer position; the reference defaults to the clean run.

    The reference logits must be given (``make_kl_metric``) or stored per prompt in
    ``task.data["clean_logits"]`` (``[batch, pos, vocab]``; it follows ``task.subset``), or in
    ``task.meta["clean_logits"]`` (older form, not subset).
    """
    if reference is None:
        reference = task.data.get("clean_logits", task.meta.get("clean_logits"))
    if reference is None:
        raise InputError(
            "the KL metric needs the clean run's logits: store them in task.data['clean_logits'] "
            "(they then follow subsets and batches) or use make_kl_metric(clean_logits)"
        )
    ref_logp = final_logits(reference.to(logits.device), task).float().log_softmax(-1)
    logp = final_logits(logits, task).float().log_softmax(-1)
    return task.reduce_positions(F.kl_div(logp, ref_logp, log_target=True, reduction="none").sum(-1))


def divergence(logits: Tensor, task: Task, reference: Tensor) -> Tensor:
    """How far ``logits`` are from ``reference`` (the full model's) at the answer position(s),
    ``[batch]``: KL(reference || model) over the vocabulary, or, for a model with one numeric
    output (``d_vocab_out = 1``, e.g. tracr's ``frac_prevs``, where a softmax over one logit is
    always 1 and KL always 0), the squared distance of the output."""
    if logits.shape[-1] > 1:
        return kl_div(logits, task, reference)
    diff = (final_logits(logits, task) - final_logits(reference.to(logits.device), task)).float()[..., 0]
    return task.reduce_positions(diff ** 2)


def _output_and_target(logits: Tensor, task: Task) -> tuple[Tensor, Tensor]:
    """The model's numeric output at the answer position(s) and ``task.data["target"]``.

    ``target`` shaped like the answer-position logits (``[batch, (k,) d_vocab_out]``) compares the
    whole output vector; shaped ``[batch]`` / ``[batch, k]`` it compares one scalar output, the
    logit of the prompt's (first) answer id, which names the output dimension read.
    """
    if "target" not in task.data:
        raise InputError(f"task {task.name!r}: the mse / l2 metrics need task.data['target']")
    out = final_logits(logits, task).float()
    target = task.data["target"].to(out.device).float()
    if target.shape == out.shape:
        return out, target
    if target.shape == out.shape[:-1]:
        column = task.answers[..., :1].to(out.device).clamp(min=0)
        return out.gather(-1, column)[..., 0], target
    raise InputError(f"task {task.name!r}: data['target'] has shape {tuple(target.shape)}; give "
                     f"{tuple(out.shape)} (the whole output) or {tuple(out.shape[:-1])} (the answer column's value)")


def mse(logits: Tensor, task: Task) -> Tensor:
    """Mean squared error between the numeric output and ``task.data["target"]`` (lower is better)."""
    out, target = _output_and_target(logits, task)
    sq = (out - target) ** 2
    if sq.ndim == (3 if task.multi_position else 2):
        sq = sq.mean(-1)
    return task.reduce_positions(sq)


def l2(logits: Tensor, task: Task) -> Tensor:
    """Euclidean distance between the numeric output and ``task.data["target"]`` (lower is better)."""
    out, target = _output_and_target(logits, task)
    diff = out - target
    dist = diff.norm(dim=-1) if diff.ndim == (3 if task.multi_position else 2) else diff.abs()
    return task.reduce_positions(dist)


def make_kl_metric(reference_logits: Tensor):
    """A metric computing KL divergence to ``reference_logits`` (e.g. the clean model's).

    Examples:
        >>> import torch
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> with torch.no_grad():
        ...     kl = ck.make_kl_metric(model(task.clean))
        ...     ablated = ck.run_ablated(model, task.clean, ["a1.h0"], reference=task.clean)
        >>> kl(ablated, task).shape, kl(ablated, task).mean().item() > 1
        (torch.Size([64]), True)
    """

    def kl_to_reference(logits: Tensor, task: Task) -> Tensor:
        return kl_div(logits, task, reference_logits)

    return kl_to_reference


def _as_float(x: Tensor | float) -> Tensor:
    """Tensors keep their floating dtype; Python numbers become float64 (no precision lost)."""
    if isinstance(x, Tensor):
        return x if x.is_floating_point() else x.float()
    return torch.as_tensor(x, dtype=torch.float64)


def check_ablation_changes_metric(metric_full: float, metric_empty: float, ablation: str, task_name: str) -> None:
    """``InputError`` when ablating everything leaves the metric where the full model has it: a
    circuit's faithfulness (normalised between the two) is then undefined."""
    if abs(metric_full - metric_empty) < 1e-6:
        raise InputError(
            f"the {ablation}-ablated model scores the same as the full model on task {task_name!r} "
            f"({metric_full:.4g}); faithfulness is undefined, pick another ablation or task")


def normalized(metric_value: Tensor | float, clean_value: Tensor | float, corrupted_value: Tensor | float,
               on_equal: Literal["raise", "nan"] = "raise") -> Tensor:
    """(m - m_corrupt) / (m_clean - m_corrupt): 1 = clean behaviour restored, 0 = corrupted.

    The one normalization circuitkit uses (patching, ablation, faithfulness, studies). Where the
    clean and corrupted values are equal (within 1e-8) it raises ``ValueError``, or with
    ``on_equal="nan"`` returns NaN there.

    Examples:
        >>> import torch
        >>> import circuitkit as ck
        >>> ck.normalized(torch.tensor([0.0, 6.0, 12.0]), clean_value=12.0, corrupted_value=0.0)
        tensor([0.0000, 0.5000, 1.0000])
    """
    m, clean, corrupt = (_as_float(x) for x in (metric_value, clean_value, corrupted_value))
    gap = clean - corrupt
    equal = gap.abs() < 1e-8
    if torch.any(equal):
        if on_equal == "nan":
            return torch.where(equal, torch.full_like(m, float("nan")), (m - corrupt) / torch.where(equal, 1.0, gap))
        raise InputError(
            f"cannot normalize: the clean and corrupted metric are equal ({float(clean.mean()):.4g}); "
            "the corruption does not change the behaviour, so pick a task or corruption that does"
        )
    return (m - corrupt) / gap


METRICS = {
    "logit_diff": logit_diff,
    "answer_prob": answer_prob,
    "answer_logprob": answer_logprob,
    "accuracy": accuracy,
    "kl": kl_div,
    "mse": mse,
    "l2": l2,
}

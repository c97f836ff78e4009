"""Task metrics. Each takes logits ``[batch, pos, vocab]`` and a Task and returns ``[batch]``.

Several answers per prompt (padded with -1) are pooled: logit difference compares the mean
answer logit with the mean wrong-answer logit; probability sums the answers' probabilities.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from circuitkit.tasks.task import Task


def final_logits(logits: Tensor, task: Task) -> Tensor:
    """Logits at each prompt's answer position, ``[batch, vocab]``."""
    if logits.ndim == 2:
        return logits
    batch = torch.arange(logits.shape[0], device=logits.device)
    return logits[batch, task.answer_pos.to(logits.device)]


def _gather_mean(values: Tensor, ids: Tensor) -> Tensor:
    ids = ids.to(values.device)
    mask = ids >= 0
    picked = values.gather(-1, ids.clamp(min=0)) * mask
    return picked.sum(-1) / mask.sum(-1).clamp(min=1)


def logit_diff(logits: Tensor, task: Task) -> Tensor:
    """Mean answer logit minus mean wrong-answer logit."""
    last = final_logits(logits, task)
    return _gather_mean(last, task.answers) - _gather_mean(last, task.wrong_answers)


def answer_prob(logits: Tensor, task: Task) -> Tensor:
    """Total probability of the answer tokens."""
    probs = final_logits(logits, task).float().softmax(-1)
    ids = task.answers.to(probs.device)
    mask = ids >= 0
    return (probs.gather(-1, ids.clamp(min=0)) * mask).sum(-1)


def answer_logprob(logits: Tensor, task: Task) -> Tensor:
    """Log of the total answer probability (smooth, useful for gradients)."""
    logp = final_logits(logits, task).float().log_softmax(-1)
    ids = task.answers.to(logp.device)
    picked = logp.gather(-1, ids.clamp(min=0)).masked_fill(ids < 0, float("-inf"))
    return torch.logsumexp(picked, -1)


def accuracy(logits: Tensor, task: Task) -> Tensor:
    """1.0 where the top prediction is one of the answers."""
    top = final_logits(logits, task).argmax(-1, keepdim=True)
    return (top == task.answers.to(top.device)).any(-1).float()


def kl_div(logits: Tensor, task: Task, reference: Tensor | None = None) -> Tensor:
    """KL(reference || model) at the answer position; the reference defaults to the clean run.

    The reference logits must be given (``make_kl_metric``) or stored in ``task.meta["clean_logits"]``.
    """
    if reference is None:
        reference = task.meta.get("clean_logits")
    if reference is None:
        raise ValueError(
            "the KL metric needs the clean run's logits: use make_kl_metric(clean_logits) or store "
            "them in task.meta['clean_logits']"
        )
    ref_logp = final_logits(reference.to(logits.device), task).float().log_softmax(-1)
    logp = final_logits(logits, task).float().log_softmax(-1)
    return F.kl_div(logp, ref_logp, log_target=True, reduction="none").sum(-1)


def make_kl_metric(reference_logits: Tensor):
    """A metric computing KL divergence to ``reference_logits`` (e.g. the clean model's)."""

    def kl_to_reference(logits: Tensor, task: Task) -> Tensor:
        return kl_div(logits, task, reference_logits)

    return kl_to_reference


def _as_float(x: Tensor | float) -> Tensor:
    """Tensors keep their floating dtype; Python numbers become float64 (no precision lost)."""
    if isinstance(x, Tensor):
        return x if x.is_floating_point() else x.float()
    return torch.as_tensor(x, dtype=torch.float64)


def normalized(metric_value: Tensor | float, clean_value: Tensor | float, corrupted_value: Tensor | float,
               on_equal: Literal["raise", "nan"] = "raise") -> Tensor:
    """(m - m_corrupt) / (m_clean - m_corrupt): 1 = clean behaviour restored, 0 = corrupted.

    The one normalization circuitkit uses (patching, ablation, faithfulness, studies). Where the
    clean and corrupted values are equal (within 1e-8) it raises ``ValueError``, or with
    ``on_equal="nan"`` returns NaN there.
    """
    m, clean, corrupt = (_as_float(x) for x in (metric_value, clean_value, corrupted_value))
    gap = clean - corrupt
    equal = gap.abs() < 1e-8
    if torch.any(equal):
        if on_equal == "nan":
            return torch.where(equal, torch.full_like(m, float("nan")), (m - corrupt) / torch.where(equal, 1.0, gap))
        raise ValueError(
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
}

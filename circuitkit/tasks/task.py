"""``Task``: clean / corrupted batches, answers and a metric — one type for every experiment."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuitkit.errors import InputError
from circuitkit.models import backend
from circuitkit.tasks import metrics

# metric(logits [batch, pos, vocab], task) -> per-prompt values [batch]
Metric = Callable[[Tensor, "Task"], Tensor]

PAD_ANSWER = -1  # fills the answer / wrong-answer rows of prompts with fewer answers
PAD_POSITION = -1  # fills the answer-position rows of prompts with fewer scored positions


class TaskError(InputError):
    """A task is malformed or does not fit a model; the message names the prompt and the fix."""


class OutOfVocabularyError(TaskError):
    """A prompt token or an answer lies outside the vocabulary it must index."""


@dataclass
class Task:
    """A batch of clean prompts, matched corrupted prompts, and what the model should answer.

    Shapes:
        clean, corrupted: ``[batch, pos]`` token ids (right-padded; same shape).
        answers, wrong_answers: ``[batch, n]`` token ids, padded with ``-1`` where a prompt has
            fewer than ``n`` answers (greater-than has many "right" years per prompt).
        answer_pos: ``[batch]`` the position whose next-token prediction is scored (the last
            real token of each prompt), identical for clean and corrupted.
        positions: named positions that matter, each ``[batch]`` (e.g. ``IO``, ``S1``, ``S2``).

    Several scored positions per prompt (a tracr ``reverse`` / ``sort`` output): ``answer_pos`` is
    ``[batch, k]`` (padded with ``-1``) and ``answers`` / ``wrong_answers`` are ``[batch, k]`` (one
    token per position) or ``[batch, k, n]``; the metric is computed at each position and reduced
    over them with ``position_reduce`` (``"mean"`` or ``"sum"``). ``wrong_answers`` may be omitted
    for metrics that do not read them (all but ``logit_diff``).

    ``data`` holds per-prompt tensors (first dimension ``batch``) that metrics read, e.g.
    ``data["target"]`` for the ``mse`` / ``l2`` metrics of a numeric output, or a custom metric's
    per-prompt references: `subset`, `to` and batching index them with the prompts, so
    a metric reading ``task.data`` (never a closure over per-prompt values) stays aligned.

    ``metric`` is a name from `circuitkit.tasks.metrics.METRICS` or a callable
    ``metric(logits, task) -> [batch]``; `score` applies it and averages. ``d_vocab`` is the
    tokenizer's size (checks prompt tokens), ``d_vocab_out`` the output classes (checks answers;
    defaults to ``d_vocab``). Every inconsistency raises `TaskError` (a ``ValueError``);
    token ids outside a vocabulary raise `OutOfVocabularyError`.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.induction(model, n_prompts=8, seq_len=5)
        >>> task
        Task('induction', prompts=8, seq_len=10, metric='logit_diff')
        >>> task.clean.shape, task.answers.shape, task.answer_pos.shape
        (torch.Size([8, 10]), torch.Size([8, 1]), torch.Size([8]))
        >>> task.score(model(task.clean)).item()
        12.0
    """

    name: str
    clean: Tensor
    corrupted: Tensor
    answers: Tensor
    wrong_answers: Tensor | None = None
    answer_pos: Tensor | None = None
    metric: str | Metric = "logit_diff"
    positions: dict[str, Tensor] = field(default_factory=dict)
    prompts: list[str] | None = None
    corrupted_prompts: list[str] | None = None
    d_vocab: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    d_vocab_out: int | None = None
    data: dict[str, Tensor] = field(default_factory=dict)
    position_reduce: str = "mean"

    def __post_init__(self) -> None:
        self.clean = _as_tokens(self.clean, "clean")
        self.corrupted = _as_tokens(self.corrupted, "corrupted")
        if self.answer_pos is None:
            self.answer_pos = torch.full((len(self.clean),), self.clean.shape[1] - 1, dtype=torch.long)
        self.answer_pos = torch.as_tensor(self.answer_pos, dtype=torch.long)
        if self.answer_pos.ndim == 0 or (self.answer_pos.ndim == 2 and self.answer_pos.shape[1] == 1):
            self.answer_pos = self.answer_pos.reshape(-1)
        if self.answer_pos.ndim > 2:
            raise TaskError(f"task {self.name!r}: answer_pos must be [batch] or [batch, k] positions, "
                            f"got shape {tuple(self.answer_pos.shape)}")
        k = self.answer_pos.shape[1] if self.answer_pos.ndim == 2 else None
        self.answers = _as_answers(self.answers, "answers", k)
        if self.wrong_answers is None:
            self.wrong_answers = torch.full((*self.answers.shape[:-1], 1), PAD_ANSWER, dtype=torch.long)
        self.wrong_answers = _as_answers(self.wrong_answers, "wrong_answers", k)
        self.positions = {k: torch.as_tensor(v, dtype=torch.long).reshape(-1) for k, v in self.positions.items()}
        self.data = {key: torch.as_tensor(v) for key, v in self.data.items()}
        self.validate()

    # --- validation -----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise `TaskError` naming the offending prompt and the fix on any inconsistency."""
        batch, seq = self.clean.shape
        if batch == 0:
            raise TaskError(f"task {self.name!r} has no prompts; build it with at least one prompt")
        padded_mismatch = self.meta.get("pad_token_id") is not None and self.corrupted.shape == self.clean.shape and bool(
            ((self.clean != self.meta["pad_token_id"]).sum(-1) != (self.corrupted != self.meta["pad_token_id"]).sum(-1)).any()
        )
        if self.corrupted.shape != self.clean.shape or padded_mismatch:
            if self.corrupted.shape[0] != batch:
                raise TaskError(
                    f"task {self.name!r}: {batch} clean prompts but {self.corrupted.shape[0]} corrupted "
                    "prompts; give exactly one corrupted prompt per clean prompt"
                )
            i = self._first_length_mismatch()
            raise TaskError(
                f"task {self.name!r}: clean prompt {i} tokenizes to {self._length(self.clean, i)} tokens, "
                f"corrupted to {self._length(self.corrupted, i)}; clean and corrupted prompts must "
                "tokenize to the same length (pick names / words that are single tokens)"
            )
        if self.answer_pos.shape[0] != batch:
            raise TaskError(f"task {self.name!r}: answer_pos has {self.answer_pos.shape[0]} entries for {batch} prompts")
        scored = self.position_mask()
        for label, t in (("answers", self.answers), ("wrong_answers", self.wrong_answers)):
            if t.shape[0] != batch:
                raise TaskError(f"task {self.name!r}: {t.shape[0]} rows of {label} for {batch} prompts; give one row per prompt")
            if self.multi_position and t.shape[1] != self.answer_pos.shape[1]:
                raise TaskError(f"task {self.name!r}: {label} cover {t.shape[1]} positions per prompt but answer_pos "
                                f"lists {self.answer_pos.shape[1]}; give one {label} entry per answer position")
            empty = ((t != PAD_ANSWER).sum(-1) == 0) & (scored if self.multi_position else True)
            if label == "answers" and bool(empty.any()):
                i = empty.nonzero()[0].tolist()
                where = f"prompt {i[0]}" + (f", answer position {i[1]}" if self.multi_position else "")
                raise TaskError(f"task {self.name!r}: {where} has no answer token; give at least one")
        if not bool(scored.reshape(batch, -1).any(-1).all()):
            i = int((~scored.reshape(batch, -1).any(-1)).nonzero()[0])
            raise TaskError(f"task {self.name!r}: prompt {i} has no answer position; give at least one")
        pos = self.answer_pos
        bad = ((pos >= seq) | ((pos < 0) & (pos != PAD_POSITION if self.multi_position else True))).nonzero()
        if len(bad):
            i = bad[0].tolist()
            raise TaskError(
                f"task {self.name!r}: answer position {int(pos[tuple(i)])} of prompt {i[0]} is outside "
                f"its {seq} tokens; use the index of the prompt's last token"
            )
        if self.position_reduce not in ("mean", "sum"):
            raise TaskError(f"task {self.name!r}: position_reduce must be 'mean' or 'sum', got {self.position_reduce!r}")
        for key, value in self.data.items():
            if value.ndim == 0 or value.shape[0] != batch:
                raise TaskError(f"task {self.name!r}: data[{key!r}] has shape {tuple(value.shape)}; per-prompt data "
                                f"needs a first dimension of {batch} (one entry per prompt)")
        for key, pos in self.positions.items():
            if pos.shape[0] != batch:
                raise TaskError(f"task {self.name!r}: position {key!r} has {pos.shape[0]} entries for {batch} prompts")
            bad = ((pos < 0) | (pos >= seq)).nonzero()
            if len(bad):
                i = int(bad[0])
                raise TaskError(f"task {self.name!r}: position {key!r} = {int(pos[i])} of prompt {i} is outside its {seq} tokens")
        if self.d_vocab is not None or self.d_vocab_out is not None:
            self.check_vocab(self.d_vocab, d_vocab_out=self.d_vocab_out)
        if self.prompts is not None and len(self.prompts) != batch:
            raise TaskError(f"task {self.name!r}: {len(self.prompts)} prompt strings for {batch} token rows")
        if isinstance(self.metric, str) and self.metric not in metrics.METRICS:
            raise TaskError(
                f"task {self.name!r}: unknown metric {self.metric!r}; choose one of {sorted(metrics.METRICS)} "
                "or pass a callable metric(logits, task) -> [batch]"
            )
        if self.metric == "logit_diff" and bool((self.wrong_answers == PAD_ANSWER).all()):
            raise TaskError(f"task {self.name!r}: metric 'logit_diff' compares answers with wrong answers, but none "
                            "were given; give wrong_answers or choose metric='answer_logprob' (or 'accuracy')")
        if self.metric in ("mse", "l2") and "target" not in self.data:
            raise TaskError(f"task {self.name!r}: metric {self.metric!r} compares the output with data['target'], "
                            "which is missing; pass data={'target': tensor of shape [batch, ...]}")

    def check_vocab(self, d_vocab: int | None, what: str = "the vocabulary", d_vocab_out: int | None = None) -> None:
        """Raise `OutOfVocabularyError` if a prompt token lies outside ``[0, d_vocab)`` or an
        answer outside ``[0, d_vocab_out)`` (``d_vocab_out`` defaults to ``d_vocab``; ``None`` skips)."""
        d_vocab_out = d_vocab if d_vocab_out is None else d_vocab_out
        for label, t, pad_ok, size, kind in (
            ("clean prompt", self.clean, False, d_vocab, "input vocabulary"),
            ("corrupted prompt", self.corrupted, False, d_vocab, "input vocabulary"),
            ("answer of prompt", self.answers, True, d_vocab_out, "output vocabulary (d_vocab_out)"),
            ("wrong answer of prompt", self.wrong_answers, True, d_vocab_out, "output vocabulary (d_vocab_out)"),
        ):
            if size is None:
                continue
            bad = (t >= size) | (t < 0) if not pad_ok else (t >= size) | ((t < 0) & (t != PAD_ANSWER))
            if bad.any():
                i = int(bad.nonzero()[0][0])
                tok = int(t[bad][0])
                where = f"the {kind}" if what == "the vocabulary" and d_vocab != d_vocab_out else what
                raise OutOfVocabularyError(
                    f"task {self.name!r}: {label} {i} has token id {tok}, outside {where} of size {size}; "
                    "build the task with the model's own tokenizer (answers index the model's output classes)"
                )

    def check_model(self, model) -> None:
        """Raise `TaskError` when this task cannot run on ``model``: prompt tokens are checked
        against ``cfg.d_vocab``, answers against ``cfg.d_vocab_out`` (they differ in tracr models),
        prompt lengths against ``cfg.n_ctx``. A ``TransformerBridge`` gets its compatibility hook
        names here (`circuitkit.models.backend.prepare`), as every method checks its task."""
        backend.prepare(model)
        d_out = getattr(model.cfg, "d_vocab_out", None) or model.cfg.d_vocab
        if d_out < 0:
            d_out = model.cfg.d_vocab
        self.check_vocab(model.cfg.d_vocab, what=f"model {model.cfg.model_name!r}'s vocabulary", d_vocab_out=d_out)
        # Embedding matrices are often padded past the tokenizer (Pythia: 50304 rows, 50277 tokens),
        # so a task built with the model's own tokenizer is compared with that tokenizer's size.
        tokenizer = getattr(model, "tokenizer", None)
        own = len(tokenizer) if tokenizer is not None else None
        if self.d_vocab is not None and (self.d_vocab > model.cfg.d_vocab or own not in (None, self.d_vocab)):
            raise TaskError(
                f"task {self.name!r} was built for a vocabulary of {self.d_vocab} tokens but model "
                f"{model.cfg.model_name!r} has {model.cfg.d_vocab} (its tokenizer {own}); rebuild the task "
                "with this model's tokenizer"
            )
        if self.clean.shape[1] > model.cfg.n_ctx:
            raise TaskError(
                f"task {self.name!r} has prompts of {self.clean.shape[1]} tokens but model "
                f"{model.cfg.model_name!r} has n_ctx={model.cfg.n_ctx}; use shorter prompts"
            )

    def _length(self, tokens: Tensor, i: int) -> int:
        pad = self.meta.get("pad_token_id")
        row = tokens[i]
        return int((row != pad).sum()) if pad is not None else int(row.shape[0])

    def _first_length_mismatch(self) -> int:
        for i in range(len(self.clean)):
            if self._length(self.clean, i) != self._length(self.corrupted, i):
                return i
        return 0

    # --- use ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def metric_name(self) -> str:
        return self.metric if isinstance(self.metric, str) else getattr(self.metric, "__name__", "custom")

    @property
    def multi_position(self) -> bool:
        """Whether each prompt is scored at several positions (``answer_pos`` is ``[batch, k]``)."""
        return self.answer_pos.ndim == 2

    def position_mask(self) -> Tensor:
        """Which answer positions are real (not ``-1`` padding): ``[batch]`` or ``[batch, k]``."""
        return self.answer_pos != PAD_POSITION if self.multi_position else torch.ones_like(self.answer_pos, dtype=torch.bool)

    def reduce_positions(self, values: Tensor) -> Tensor:
        """``[batch, k]`` per-position values -> ``[batch]`` (``position_reduce`` over real positions);
        ``[batch]`` values pass through."""
        if values.ndim == 1:
            return values
        mask = self.position_mask().to(values.device)
        total = (values * mask).sum(-1)
        return total if self.position_reduce == "sum" else total / mask.sum(-1).clamp(min=1)

    @property
    def reads_answer_position_only(self) -> bool:
        """Whether the metric looks at nothing but the logits at one ``answer_pos`` per prompt (true
        of every built-in metric on a single-position task; a callable metric may read any position,
        and a multi-position task reads several, so they get full logits)."""
        return isinstance(self.metric, str) and not self.multi_position

    def metric_token_ids(self) -> Tensor | None:
        """The vocabulary entries the metric reads, or ``None`` for all of them: the logit
        difference reads only the answer and wrong-answer logits (the softmax-based metrics and
        accuracy need every logit)."""
        if self.metric != "logit_diff":
            return None
        ids = torch.cat([self.answers.flatten(), self.wrong_answers.flatten()])
        return ids[ids != PAD_ANSWER].unique()

    def metric_fn(self) -> Metric:
        return metrics.METRICS[self.metric] if isinstance(self.metric, str) else self.metric

    def per_prompt(self, logits: Tensor) -> Tensor:
        """The metric for each prompt, ``[batch]``."""
        top = max(int(self.answers.max()), int(self.wrong_answers.max()))
        if top >= logits.shape[-1]:
            raise OutOfVocabularyError(
                f"task {self.name!r}: answer token id {top} is outside the model's {logits.shape[-1]} output "
                "logits (d_vocab_out); build the task with the model's own tokenizer / output classes"
            )
        values = self.metric_fn()(logits, self)
        if values.ndim != 1 or values.shape[0] != len(self):
            raise TaskError(f"metric {self.metric_name!r} of task {self.name!r} returned shape {tuple(values.shape)} "
                            f"for {len(self)} prompts; a metric returns one value per prompt, [batch]")
        if torch.isnan(values).any():
            i = int(torch.isnan(values).nonzero()[0])
            raise TaskError(
                f"metric {self.metric_name!r} returned NaN for prompt {i} of task {self.name!r}; "
                "check the metric for division by zero or log(0)"
            )
        return values

    def score(self, logits: Tensor) -> Tensor:
        """The metric averaged over prompts (a scalar tensor, differentiable)."""
        return self.per_prompt(logits).mean()

    def to(self, device) -> Task:
        moved = {k: getattr(self, k).to(device) for k in ("clean", "corrupted", "answers", "wrong_answers", "answer_pos")}
        positions = {k: v.to(device) for k, v in self.positions.items()}
        data = {k: v.to(device) for k, v in self.data.items()}
        return _replace(self, **moved, positions=positions, data=data)

    def subset(self, index: Sequence[int] | slice | Tensor) -> Task:
        """The task restricted to some prompts, in ``index`` order (repeats allowed): tokens, answers,
        positions and per-prompt ``data`` are indexed together; names, metric and meta kept."""
        if isinstance(index, slice):
            index = list(range(len(self)))[index]
        idx = torch.as_tensor(index, dtype=torch.long)
        changes: dict[str, Any] = {k: getattr(self, k)[idx] for k in ("clean", "corrupted", "answers", "wrong_answers", "answer_pos")}
        changes["positions"] = {k: v[idx] for k, v in self.positions.items()}
        changes["data"] = {k: v[idx.to(v.device)] for k, v in self.data.items()}
        for k in ("prompts", "corrupted_prompts"):
            value = getattr(self, k)
            changes[k] = [value[i] for i in idx.tolist()] if value is not None else None
        # meta entries listed in "per_prompt" hold one item per prompt (e.g. needle answer tokens).
        meta = dict(self.meta)
        for key in meta.get("per_prompt", ()):
            meta[key] = [meta[key][i] for i in idx.tolist()]
        changes["meta"] = meta
        return _replace(self, **changes)

    def with_metric(self, metric: str | Metric) -> Task:
        return _replace(self, metric=metric)

    def swap(self) -> Task:
        """Corrupted becomes clean and vice versa (answers swap too): for noising experiments."""
        return _replace(self, clean=self.corrupted, corrupted=self.clean, answers=self.wrong_answers,
                        wrong_answers=self.answers, prompts=self.corrupted_prompts,
                        corrupted_prompts=self.prompts)

    def __repr__(self) -> str:
        return (f"Task({self.name!r}, prompts={len(self)}, seq_len={self.clean.shape[1]}, "
                f"metric={self.metric_name!r})")


def _replace(task: Task, **changes: Any) -> Task:
    import dataclasses

    return dataclasses.replace(task, **changes)


def _as_tokens(t, label: str) -> Tensor:
    t = torch.as_tensor(t)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2:
        raise TaskError(f"{label} tokens must be [batch, pos], got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point:
        raise TaskError(f"{label} tokens must be integer token ids, got {t.dtype}")
    return t.long()


def _as_answers(t, label: str, k: int | None) -> Tensor:
    """``[batch, n]`` token ids (one scored position), or ``[batch, k, n]`` with ``k`` positions."""
    if isinstance(t, (list, tuple)) and t and isinstance(t[0], (list, tuple)) and not (
            k is not None and t[0] and isinstance(t[0][0], (list, tuple))):
        width = max(len(row) for row in t)
        t = [list(row) + [PAD_ANSWER] * (width - len(row)) for row in t]
    if isinstance(t, Tensor) and t.dtype.is_floating_point:
        raise TaskError(f"{label} must be integer token ids, got {t.dtype}; numeric targets go in data['target']")
    t = torch.as_tensor(t, dtype=torch.long)
    if k is None:
        if t.ndim == 1:
            t = t[:, None]
        if t.ndim != 2:
            raise TaskError(f"{label} must be [batch] or [batch, n] token ids, got shape {tuple(t.shape)}")
        return t
    if t.ndim == 2:
        t = t[:, :, None]
    if t.ndim != 3:
        raise TaskError(f"{label} of a task with {k} answer positions must be [batch, {k}] or [batch, {k}, n] "
                        f"token ids, got shape {tuple(t.shape)}")
    return t

"""``Task``: clean / corrupted batches, answers and a metric — one type for every experiment."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuitkit.tasks import metrics

# metric(logits [batch, pos, vocab], task) -> per-prompt values [batch]
Metric = Callable[[Tensor, "Task"], Tensor]

PAD_ANSWER = -1  # fills the answer / wrong-answer rows of prompts with fewer answers


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

    ``metric`` is a name from :data:`circuitkit.tasks.metrics.METRICS` or a callable
    ``metric(logits, task) -> [batch]``; :meth:`score` applies it and averages.
    """

    name: str
    clean: Tensor
    corrupted: Tensor
    answers: Tensor
    wrong_answers: Tensor
    answer_pos: Tensor | None = None
    metric: str | Metric = "logit_diff"
    positions: dict[str, Tensor] = field(default_factory=dict)
    prompts: list[str] | None = None
    corrupted_prompts: list[str] | None = None
    d_vocab: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.clean = _as_tokens(self.clean, "clean")
        self.corrupted = _as_tokens(self.corrupted, "corrupted")
        self.answers = _as_answers(self.answers, "answers", len(self.clean))
        self.wrong_answers = _as_answers(self.wrong_answers, "wrong_answers", len(self.clean))
        if self.answer_pos is None:
            self.answer_pos = torch.full((len(self.clean),), self.clean.shape[1] - 1, dtype=torch.long)
        self.answer_pos = torch.as_tensor(self.answer_pos, dtype=torch.long).reshape(-1)
        self.positions = {k: torch.as_tensor(v, dtype=torch.long).reshape(-1) for k, v in self.positions.items()}
        self.validate()

    # --- validation -----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending prompt and the fix on any inconsistency."""
        batch, seq = self.clean.shape
        if batch == 0:
            raise ValueError(f"task {self.name!r} has no prompts; build it with at least one prompt")
        padded_mismatch = self.meta.get("pad_token_id") is not None and self.corrupted.shape == self.clean.shape and bool(
            ((self.clean != self.meta["pad_token_id"]).sum(-1) != (self.corrupted != self.meta["pad_token_id"]).sum(-1)).any()
        )
        if self.corrupted.shape != self.clean.shape or padded_mismatch:
            if self.corrupted.shape[0] != batch:
                raise ValueError(
                    f"task {self.name!r}: {batch} clean prompts but {self.corrupted.shape[0]} corrupted "
                    "prompts; give exactly one corrupted prompt per clean prompt"
                )
            i = self._first_length_mismatch()
            raise ValueError(
                f"task {self.name!r}: clean prompt {i} tokenizes to {self._length(self.clean, i)} tokens, "
                f"corrupted to {self._length(self.corrupted, i)}; clean and corrupted prompts must "
                "tokenize to the same length (pick names / words that are single tokens)"
            )
        for label, t in (("answers", self.answers), ("wrong_answers", self.wrong_answers)):
            if t.shape[0] != batch:
                raise ValueError(f"task {self.name!r}: {t.shape[0]} rows of {label} for {batch} prompts; give one row per prompt")
            empty = ((t != PAD_ANSWER).sum(-1) == 0).nonzero()
            if len(empty) and label == "answers":
                raise ValueError(f"task {self.name!r}: prompt {int(empty[0])} has no answer token; give at least one")
        if self.answer_pos.shape[0] != batch:
            raise ValueError(f"task {self.name!r}: answer_pos has {self.answer_pos.shape[0]} entries for {batch} prompts")
        bad = ((self.answer_pos < 0) | (self.answer_pos >= seq)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise ValueError(
                f"task {self.name!r}: answer position {int(self.answer_pos[i])} of prompt {i} is outside "
                f"its {seq} tokens; use the index of the prompt's last token"
            )
        for key, pos in self.positions.items():
            if pos.shape[0] != batch:
                raise ValueError(f"task {self.name!r}: position {key!r} has {pos.shape[0]} entries for {batch} prompts")
            bad = ((pos < 0) | (pos >= seq)).nonzero()
            if len(bad):
                i = int(bad[0])
                raise ValueError(f"task {self.name!r}: position {key!r} = {int(pos[i])} of prompt {i} is outside its {seq} tokens")
        if self.d_vocab is not None:
            self.check_vocab(self.d_vocab)
        if self.prompts is not None and len(self.prompts) != batch:
            raise ValueError(f"task {self.name!r}: {len(self.prompts)} prompt strings for {batch} token rows")
        if isinstance(self.metric, str) and self.metric not in metrics.METRICS:
            raise ValueError(
                f"task {self.name!r}: unknown metric {self.metric!r}; choose one of {sorted(metrics.METRICS)} "
                "or pass a callable metric(logits, task) -> [batch]"
            )

    def check_vocab(self, d_vocab: int, what: str = "the vocabulary") -> None:
        """Raise ``ValueError`` if any token id lies outside ``[0, d_vocab)``."""
        for label, t, pad_ok in (
            ("clean prompt", self.clean, False),
            ("corrupted prompt", self.corrupted, False),
            ("answer of prompt", self.answers, True),
            ("wrong answer of prompt", self.wrong_answers, True),
        ):
            valid = t if not pad_ok else t[t != PAD_ANSWER]
            if valid.numel() == 0:
                continue
            bad = (t >= d_vocab) | (t < 0) if not pad_ok else (t >= d_vocab) | ((t < 0) & (t != PAD_ANSWER))
            if bad.any():
                i = int(bad.nonzero()[0][0])
                tok = int(t[bad][0])
                raise ValueError(
                    f"task {self.name!r}: {label} {i} has token id {tok}, outside {what} of size {d_vocab}; "
                    "build the task with the model's own tokenizer"
                )

    def check_model(self, model) -> None:
        """Raise ``ValueError`` when this task cannot run on ``model`` (vocabulary, context)."""
        self.check_vocab(model.cfg.d_vocab, what=f"model {model.cfg.model_name!r}'s vocabulary")
        # Embedding matrices are often padded past the tokenizer (Pythia: 50304 rows, 50277 tokens),
        # so a task built with the model's own tokenizer is compared with that tokenizer's size.
        tokenizer = getattr(model, "tokenizer", None)
        own = len(tokenizer) if tokenizer is not None else None
        if self.d_vocab is not None and (self.d_vocab > model.cfg.d_vocab or own not in (None, self.d_vocab)):
            raise ValueError(
                f"task {self.name!r} was built for a vocabulary of {self.d_vocab} tokens but model "
                f"{model.cfg.model_name!r} has {model.cfg.d_vocab} (its tokenizer {own}); rebuild the task "
                "with this model's tokenizer"
            )
        if self.clean.shape[1] > model.cfg.n_ctx:
            raise ValueError(
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
    def reads_answer_position_only(self) -> bool:
        """Whether the metric looks at nothing but the logits at ``answer_pos`` (true of every
        built-in metric; a callable metric may read any position, so it gets full logits)."""
        return isinstance(self.metric, str)

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
        values = self.metric_fn()(logits, self)
        if torch.isnan(values).any():
            i = int(torch.isnan(values).nonzero()[0])
            raise ValueError(
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
        return _replace(self, **moved, positions=positions)

    def subset(self, index: Sequence[int] | slice | Tensor) -> Task:
        """The task restricted to some prompts (keeps names, metric and meta)."""
        if isinstance(index, slice):
            index = list(range(len(self)))[index]
        idx = torch.as_tensor(index, dtype=torch.long)
        changes: dict[str, Any] = {k: getattr(self, k)[idx] for k in ("clean", "corrupted", "answers", "wrong_answers", "answer_pos")}
        changes["positions"] = {k: v[idx] for k, v in self.positions.items()}
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
        raise ValueError(f"{label} tokens must be [batch, pos], got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point:
        raise ValueError(f"{label} tokens must be integer token ids, got {t.dtype}")
    return t.long()


def _as_answers(t, label: str, batch: int) -> Tensor:
    if isinstance(t, (list, tuple)) and t and isinstance(t[0], (list, tuple)):
        width = max(len(row) for row in t)
        t = [list(row) + [PAD_ANSWER] * (width - len(row)) for row in t]
    t = torch.as_tensor(t, dtype=torch.long)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"{label} must be [batch] or [batch, n] token ids, got shape {tuple(t.shape)}")
    return t

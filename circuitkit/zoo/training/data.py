"""Training data shared by the recipes: repeated segments (induction), curricula, text windows."""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor

from circuitkit.errors import InputError
from circuitkit.tokenizers import python_docs_corpus
from circuitkit.zoo.training.loop import BatchFn


def varied_repeat_batch(pool: list[int], bos: int, batch: int = 32, length: int = 48,
                        min_period: int = 3, max_period: int = 12, copies: int | None = None) -> BatchFn:
    """Rows ``BOS, random prefix, segment, segment, segment...`` (the segment repeated to the end of
    the row, or ``copies`` times and then random tokens): the prefix length (offset) and the segment
    length (period) are drawn per row, so only content-based copying predicts the repeats. The loss
    covers every token of the second and later copies except the second copy's first (whose
    previous token has no earlier occurrence)."""
    reps = copies or 2
    if length < 1 + reps * max_period:
        raise InputError(f"length {length} cannot hold BOS and {reps} copies of a {max_period}-token segment")

    def batch_fn(rng: random.Random):
        rows, masks = [], []
        for _ in range(batch):
            period = rng.randint(min_period, max_period)
            prefix = rng.randint(0, length - 1 - reps * period)
            seg = rng.choices(pool, k=period)
            row = [bos, *rng.choices(pool, k=prefix)]
            first = len(row)
            while len(row) < length and (copies is None or len(row) < first + copies * period):
                row += seg
            end = min(len(row), length)  # the repeats end here; random tokens fill the rest
            row = (row + rng.choices(pool, k=max(0, length - len(row))))[:length]
            mask = [False] * length
            # Targets: every repeated token from the second copy on (mask[i] marks predicting row[i + 1]).
            for i in range(first + period, end - 1):
                mask[i] = True
            rows.append(row)
            masks.append(mask)
        return torch.tensor(rows), torch.tensor(masks)
    return batch_fn

def fixed_repeat_batch(pool: list[int], bos: int, batch: int = 64, period: int = 10) -> BatchFn:
    """Rows ``BOS, segment, segment`` with one fixed period and no offset (the positional shortcut
    data): the token to predict always sits ``period`` positions back."""
    def batch_fn(rng: random.Random):
        rows = []
        for _ in range(batch):
            seg = rng.choices(pool, k=period)
            rows.append([bos, *seg, *seg])
        mask = torch.zeros(batch, 1 + 2 * period, dtype=torch.bool)
        mask[:, 1 + period: 2 * period] = True
        return torch.tensor(rows), mask
    return batch_fn

class CopyCurriculum:
    """Two-copy repeat rows (`varied_repeat_batch` with ``copies=2``) over the ``k`` most
    frequent tokens, ``k`` doubling each time copying works at the current size.

    Induction forms fastest over a small vocabulary (a few hundred tokens) and then carries over to
    the rest as the pool grows. "Works": the mean loss of the last ``patience`` batches is below
    half of ``ln k``. Call it as a `BatchFn`; `train_model` feeds ``observe`` the loss.
    """

    def __init__(self, ranked_ids: list[int], bos: int, start: int = 228, batch: int = 32, length: int = 100,
                 min_period: int = 6, max_period: int = 40, patience: int = 50):
        self.ranked_ids, self.bos, self.k = list(ranked_ids), bos, min(start, len(ranked_ids))
        self.batch, self.length, self.min_period, self.max_period, self.patience = batch, length, min_period, max_period, patience
        self.grown_at: list[int] = []  # batches drawn when k doubled
        self._drawn, self._losses = 0, []

    def __call__(self, rng: random.Random) -> tuple[Tensor, Tensor]:
        self._drawn += 1
        return varied_repeat_batch(self.ranked_ids[:self.k], self.bos, self.batch, self.length,
                                   self.min_period, self.max_period, copies=2)(rng)

    def observe(self, loss: float) -> None:
        self._losses.append(loss)
        recent = self._losses[-self.patience:]
        if len(recent) == self.patience and sum(recent) / self.patience < 0.5 * math.log(self.k) \
                and self.k < len(self.ranked_ids):
            self.k = min(len(self.ranked_ids), 2 * self.k)
            self.grown_at.append(self._drawn)
            self._losses = []

class MixedBatches:
    """Each step one batch: from ``second`` with probability ``share``, else from ``first``; the
    loss goes back to whichever drew the batch (if it observes)."""

    def __init__(self, first: BatchFn, second: BatchFn, share: float):
        if not 0.0 <= share <= 1.0:
            raise InputError(f"share must be in [0, 1], got {share}")
        self.first, self.second, self.share = first, second, share
        self._last: BatchFn = first

    def __call__(self, rng: random.Random) -> tuple[Tensor, Tensor]:
        self._last = self.second if rng.random() < self.share else self.first
        return self._last(rng)

    def observe(self, loss: float) -> None:
        observe = getattr(self._last, "observe", None)
        if observe is not None:
            observe(loss)

def frequency_ranked(ids: Tensor, pool: list[int]) -> list[int]:
    """``pool`` ordered by how often each token occurs in ``ids`` (most frequent first; ties and
    unseen tokens keep ``pool`` order)."""
    counts = torch.bincount(ids, minlength=max(pool) + 1)
    return sorted(pool, key=lambda t: -int(counts[t]))

def text_batch(ids: Tensor, batch: int = 16, length: int = 128) -> BatchFn:
    """Random ``length``-token windows of the token stream, every position a target."""
    def batch_fn(rng: random.Random):
        starts = [rng.randrange(0, len(ids) - length) for _ in range(batch)]
        tokens = torch.stack([ids[s: s + length] for s in starts])
        return tokens, torch.ones_like(tokens, dtype=torch.bool)
    return batch_fn

def docs_token_split(tok, held_out: float = 0.05, corpus: str | None = None) -> tuple[Tensor, Tensor]:
    """(train, held-out) token ids of ``corpus`` (default ``python_docs_corpus()``): the last
    ``held_out`` share held out."""
    ids = torch.tensor(tok.encode(python_docs_corpus() if corpus is None else corpus, add_special_tokens=False))
    split = int(len(ids) * (1 - held_out))
    return ids[:split], ids[split:]

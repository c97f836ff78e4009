"""Tasks for tracr-compiled RASP programs (Lindner et al. 2023): every position is scored.

Each program here has a plain-Python reference (what the RASP program computes), so the task is
built without tracr or JAX: prompts are ``BOS x_1 ... x_n`` over the program's vocabulary, the
answer at position ``i`` (1..n) is the program's output there. Categorical programs (``reverse``,
``hist``) score the logit difference between the output token and every other output value, at
each position (``answer_pos`` is ``[batch, n]``), averaged; the numeric ``frac_prevs`` scores the
squared error of the output dimension against the reference (``mse``, ``data["target"]``).
Corrupted prompts are the same prompts in a seeded order with no prompt kept in place, as ACDC's
tracr tasks use.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from circuitkit.tasks.task import Task, TaskError
from circuitkit.tokenizers import SPECIAL_TOKENS, tokenizer_of


def _reverse(xs: Sequence[str]) -> list[str]:
    return list(reversed(xs))


def _hist(xs: Sequence[str]) -> list[str]:
    return [str(sum(y == x for y in xs)) for x in xs]


def _frac_prevs(xs: Sequence[str]) -> list[float]:
    return [sum(y == "x" for y in xs[: i + 1]) / (i + 1) for i in range(len(xs))]


@dataclass(frozen=True)
class RaspProgram:
    """A RASP program of tracr's library, its vocabulary and its plain-Python reference."""

    name: str
    vocab: tuple[str, ...]
    max_seq_len: int
    reference: Callable[[Sequence[str]], list]
    outputs: tuple[str, ...] | None  # categorical output values (their tokens); None: numeric

    @property
    def categorical(self) -> bool:
        return self.outputs is not None

    def words(self) -> list[str]:
        """The tokenizer's words: the input vocabulary, then output values not already in it."""
        return [*self.vocab, *(o for o in self.outputs or () if o not in self.vocab)]


PROGRAMS: dict[str, RaspProgram] = {
    # tracr's lib.make_reverse / make_hist / make_frac_prevs(tokens == "x"); vocabularies as ACDC's
    "reverse": RaspProgram("reverse", ("1", "2", "3"), 5, _reverse, ("1", "2", "3")),
    "hist": RaspProgram("hist", ("a", "b", "c"), 5, _hist, tuple(str(i) for i in range(6))),
    "frac_prevs": RaspProgram("frac_prevs", ("w", "x", "y", "z"), 5, _frac_prevs, None),
}


def every_input(program: RaspProgram, length: int) -> list[tuple[str, ...]]:
    """All ``len(vocab) ** length`` inputs of ``length`` tokens, in lexicographic order."""
    return list(itertools.product(program.vocab, repeat=length))


def _derangement(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    order = list(range(n))
    while n > 1 and any(i == j for i, j in enumerate(order)):
        rng.shuffle(order)
    return order


def rasp_task(model_or_tokenizer, program: str, length: int = 4, n_prompts: int | None = None, seed: int = 0,
              metric: str | None = None) -> Task:
    """The task of tracr program ``program`` (``reverse``, ``hist``, ``frac_prevs``) on inputs of
    ``length`` tokens after BOS: every input (``n_prompts=None``) or the first ``n_prompts`` of a
    seeded shuffle. ``metric`` defaults to ``logit_diff`` (categorical) or ``mse`` (numeric).

    Shapes: clean / corrupted ``[batch, length + 1]``; ``answer_pos`` ``[batch, length]``;
    categorical ``answers`` ``[batch, length, 1]`` / ``wrong_answers`` ``[batch, length, n_out - 1]``;
    numeric ``answers`` ``[batch, length, 1]`` (output column 0) and ``data["target"]`` ``[batch, length]``.
    """
    if program not in PROGRAMS:
        raise TaskError(f"unknown tracr program {program!r}; choose one of {sorted(PROGRAMS)}")
    spec = PROGRAMS[program]
    if not 1 <= length <= spec.max_seq_len:
        raise TaskError(f"tracr program {program!r} was compiled for inputs of 1..{spec.max_seq_len} tokens, "
                        f"got length={length}")
    tok = tokenizer_of(model_or_tokenizer)
    vocab = tok.get_vocab()
    missing = [w for w in [SPECIAL_TOKENS["bos_token"], *spec.words()] if w not in vocab]
    if missing:
        raise TaskError(f"the tokenizer lacks tracr program {program!r}'s tokens {missing}; use the zoo model's "
                        f"tokenizer (zoo:tracr-{program.replace('_', '-')})")
    inputs = every_input(spec, length)
    if n_prompts is not None:
        if not 1 <= n_prompts <= len(inputs):
            raise TaskError(f"n_prompts must be between 1 and the {len(inputs)} inputs of length {length}")
        random.Random(seed).shuffle(inputs)
        inputs = inputs[:n_prompts]
    bos = vocab[SPECIAL_TOKENS["bos_token"]]
    clean = torch.tensor([[bos, *(vocab[x] for x in xs)] for xs in inputs])
    corrupted = clean[_derangement(len(inputs), seed)]
    positions = torch.arange(1, length + 1).expand(len(inputs), length).clone()
    outputs = [spec.reference(xs) for xs in inputs]
    data = {}
    if spec.categorical:
        answers = torch.tensor([[[vocab[o]] for o in out] for out in outputs])
        wrong = torch.tensor([[[vocab[w] for w in spec.outputs if w != o] for o in out] for out in outputs])
        metric = metric or "logit_diff"
        d_vocab_out = None
    else:
        answers = torch.zeros(len(inputs), length, 1, dtype=torch.long)
        wrong = None
        data["target"] = torch.tensor(outputs, dtype=torch.float32)
        metric = metric or "mse"
        d_vocab_out = 1
    return Task(name=f"tracr-{program}", clean=clean, corrupted=corrupted, answers=answers, wrong_answers=wrong,
                answer_pos=positions, metric=metric, prompts=[" ".join(xs) for xs in inputs], d_vocab=len(tok),
                d_vocab_out=d_vocab_out, data=data, position_reduce="mean",
                meta={"program": program, "length": length, "seed": seed})

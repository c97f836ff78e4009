"""Retrieval heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context Factuality").

While the model produces the needle's answer tokens, a head scores a hit on a step when its
most-attended position lies inside the needle span and the token produced there equals the token
at that position; a head's trial score is hits / answer length, and its score is the mean over
trials the model answers mostly right (ROUGE-1 recall of the answer tokens > 0.5). Heads scoring
above 0.1 are retrieval heads.

`retrieval_scores` computes this with teacher forcing: prompt + answer tokens go through the
model once per batch and every answer step is read off that one pass; only the argmax of each
head's attention row at the answer positions is kept (never the full patterns).
`retrieval_scores_generate` is the obvious slow definition: token-by-token greedy decoding
with one ``run_with_cache`` (patterns only) per generated token. On a model that answers every
prompt correctly the two are identical (tested); otherwise teacher forcing conditions later steps
on the true answer tokens rather than the model's own (the steps after a mistake differ).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitkit import names
from circuitkit.attribution.common import DEFAULT_MEMORY_SHARE, available_memory
from circuitkit.errors import InputError, InputTypeError
from circuitkit.scores import Scores
from circuitkit.tasks.task import Task

RETRIEVAL_THRESHOLD = 0.1
MIN_RECALL = 0.5


def _is_pattern_hook(name: str) -> bool:
    return name.endswith("attn.hook_pattern")


@dataclass
class NeedlePrompt:
    """One needle trial.

    Attributes:
        tokens: ``[pos]`` prompt token ids ending right before the answer (no padding).
        needle_start, needle_end: the needle value's token span in ``tokens`` (end exclusive).
        answer: ``[n_answer]`` the answer's token ids (the value, as it continues the question).
    """

    tokens: Tensor
    needle_start: int
    needle_end: int
    answer: Tensor

    def __post_init__(self) -> None:
        self.tokens = torch.as_tensor(self.tokens, dtype=torch.long).reshape(-1)
        self.answer = torch.as_tensor(self.answer, dtype=torch.long).reshape(-1)
        self.needle_start, self.needle_end = int(self.needle_start), int(self.needle_end)


def needle_prompts(task_or_prompts: Task | Sequence[NeedlePrompt]) -> list[NeedlePrompt]:
    """The trials of a needle `Task` (from `circuitkit.needle`), or the prompts as given.

    A task must carry ``positions["needle_start"]``, ``positions["needle_end"]`` and
    ``meta["answer_tokens"]``; each prompt is cut at its ``answer_pos``.
    """
    if isinstance(task_or_prompts, Task):
        task = task_or_prompts
        missing = [k for k in ("needle_start", "needle_end") if k not in task.positions]
        if missing or "answer_tokens" not in task.meta:
            raise InputError(
                f"task {task.name!r} has no needle span (positions {missing or ''} / meta['answer_tokens'] "
                "missing); build it with circuitkit.needle(...) or pass NeedlePrompt objects"
            )
        answers = task.meta["answer_tokens"]
        if len(answers) != len(task):
            raise InputError(f"task {task.name!r} has {len(answers)} answer_tokens rows for {len(task)} prompts")
        return [
            NeedlePrompt(task.clean[i, : int(task.answer_pos[i]) + 1], int(task.positions["needle_start"][i]),
                         int(task.positions["needle_end"][i]), torch.as_tensor(answers[i]))
            for i in range(len(task))
        ]
    prompts = list(task_or_prompts)
    if not prompts:
        raise InputError("no needle prompts given; pass a needle Task or a non-empty list of NeedlePrompt")
    if not all(isinstance(p, NeedlePrompt) for p in prompts):
        raise InputTypeError("pass a needle Task (circuitkit.needle) or a list of NeedlePrompt objects")
    return prompts


def check_needle_prompts(model, prompts: Sequence[NeedlePrompt]) -> None:
    """Raise ``ValueError`` before any work when a trial cannot be scored on ``model``."""
    n_ctx, d_vocab = model.cfg.n_ctx, model.cfg.d_vocab
    for i, p in enumerate(prompts):
        n, span = len(p.tokens), p.needle_end - p.needle_start
        if len(p.answer) == 0:
            raise InputError(f"needle prompt {i} has an empty answer; give the needle value's token ids")
        if n == 0:
            raise InputError(f"needle prompt {i} has no tokens; the haystack / context is empty")
        if not (0 <= p.needle_start < p.needle_end <= n):
            raise InputError(
                f"needle prompt {i}: needle span [{p.needle_start}, {p.needle_end}) is not inside its {n} tokens; "
                "the needle is not in the context (use a longer context length or another depth)"
            )
        if span != len(p.answer) or not torch.equal(p.tokens[p.needle_start: p.needle_end], p.answer):
            raise InputError(
                f"needle prompt {i}: the needle span holds tokens {p.tokens[p.needle_start: p.needle_end].tolist()} "
                f"but the answer is {p.answer.tolist()}, so the needle is not in the context; rebuild the "
                "prompt so the needle value's tokens appear in it (circuitkit.needle records the span)"
            )
        if n + len(p.answer) - 1 > n_ctx:
            raise InputError(
                f"needle prompt {i} needs {n + len(p.answer) - 1} positions (prompt + answer) but model "
                f"{model.cfg.model_name!r} has n_ctx={n_ctx}; use context lengths <= {n_ctx - len(p.answer) + 1}"
            )
        top = int(max(p.tokens.max(), p.answer.max()))
        if top >= d_vocab or int(min(p.tokens.min(), p.answer.min())) < 0:
            raise InputError(
                f"needle prompt {i} has token id {top} outside model {model.cfg.model_name!r}'s vocabulary of "
                f"{d_vocab}; build the task with the model's own tokenizer"
            )


def rouge1_recall(produced: Sequence[int], answer: Sequence[int]) -> float:
    """Share of the answer's tokens (with multiplicity) that the produced tokens contain."""
    overlap = Counter(int(x) for x in produced) & Counter(int(x) for x in answer)
    return sum(overlap.values()) / max(1, len(answer))


def forward_memory_per_prompt(model, n_pos: int) -> int:
    """Estimated peak bytes one prompt of ``n_pos`` tokens adds to a no-gradient forward pass: one
    layer's attention scores, mask and pattern (``3 n_heads n_pos^2`` values), the logits and a
    few residual-width activations per token."""
    cfg = model.cfg
    elem = torch.finfo(cfg.dtype).bits // 8 if cfg.dtype.is_floating_point else 4
    per_token = 3 * cfg.n_heads * n_pos + cfg.d_vocab_out + 8 * cfg.d_model + 2 * (cfg.d_mlp or 0)
    return int(elem * n_pos * per_token)


def budget_prompts_per_batch(model, prompts: Sequence[NeedlePrompt], batch_size: int, max_memory: float | None) -> int:
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if max_memory is not None and (not isinstance(max_memory, (int, float)) or max_memory <= 0):
        raise InputError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    budget = DEFAULT_MEMORY_SHARE * available_memory() if max_memory is None else float(max_memory)
    n_pos = max(len(p.tokens) + len(p.answer) - 1 for p in prompts)
    one = forward_memory_per_prompt(model, n_pos)
    if one > budget:
        raise InputError(f"retrieval_scores: one prompt of {n_pos} tokens needs about {one / 2**30:.3g} GiB for its "
                         f"forward pass but the memory budget is {budget / 2**30:.3g} GiB; pass a larger max_memory "
                         "(bytes) or use shorter contexts")
    return max(1, min(batch_size, int(budget // one)))


def prompt_ranges(n: int, batch_size: int):
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    return [range(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]


def pad_id(model) -> int:
    tok = getattr(model, "tokenizer", None)
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tok, attr, None) if tok is not None else None
        if value is not None:
            return int(value)
    return 0


def _answer_positions(prompts: Sequence[NeedlePrompt]) -> tuple[Tensor, Tensor]:
    """Query positions ``[b, T]`` of each answer step (clamped past a prompt's answer) and the step mask."""
    steps = max(len(p.answer) for p in prompts)
    t = torch.arange(steps)
    starts = torch.tensor([len(p.tokens) - 1 for p in prompts])
    lengths = torch.tensor([len(p.answer) for p in prompts])
    mask = t[None] < lengths[:, None]
    return torch.where(mask, starts[:, None] + t[None], starts[:, None]), mask


def teacher_forced_batch(model, prompts: Sequence[NeedlePrompt], fwd_hooks=()):
    """One forward pass over prompt + answer[:-1] for each prompt (right-padded; causal
    attention never sees the padding).

    Returns tokens ``[b, seq]``, answer-step query positions ``[b, T]``, step mask ``[b, T]`` and
    the logits at those positions ``[b, T, vocab]``. ``fwd_hooks`` are ``(name, fn)`` pairs where
    ``fn(activation, hook, qpos)`` also receives the query positions.
    """
    seqs = [torch.cat([p.tokens, p.answer[:-1]]) for p in prompts]
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), pad_id(model), dtype=torch.long)
    for row, s in enumerate(seqs):
        tokens[row, : len(s)] = s
    qpos, mask = _answer_positions(prompts)
    hooks = [(name, lambda act, hook, fn=fn: fn(act, hook, qpos)) for name, fn in fwd_hooks]
    with torch.no_grad():
        logits = model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=hooks)
    rows = torch.arange(len(seqs), device=logits.device)[:, None]
    return tokens, qpos, mask, logits[rows, qpos.to(logits.device)].float().cpu()


def retrieval_scores(
    model,
    task_or_prompts: Task | Sequence[NeedlePrompt],
    *,
    batch_size: int = 16,
    min_recall: float = MIN_RECALL,
    threshold: float = RETRIEVAL_THRESHOLD,
    progress: bool = True,
    max_memory: float | None = None,
) -> Scores:
    """Retrieval score of every head, by teacher forcing (one forward pass per batch).

    For each trial, prompt + answer tokens run once; at answer step ``t`` (position ``p_t``
    predicting answer token ``t``) the produced token is the logits' argmax ``y_t`` and each
    head's most-attended position ``j`` scores a hit when ``j`` is in the needle span and
    ``tokens[j] == y_t``. Trial score = hits / answer length; a trial is kept when the
    ROUGE-1 recall of the produced tokens against the answer exceeds ``min_recall``.

    Memory: each layer's pattern is reduced at once to the argmax rows the score reads
    (``[batch, answer steps, heads]``), so a batch costs about a bare forward pass; batches hold
    ``batch_size`` prompts, fewer where ``max_memory`` (bytes; by default half the memory
    available) holds fewer (`forward_memory_per_prompt`), and ``ValueError`` before any
    run when one prompt does not fit.

    Returns head ``Scores`` (mean over kept trials) with ``meta``: ``per_prompt`` ``[n, L, H]``
    trial scores, ``recall`` ``[n]``, ``kept`` ``[n]`` bool, ``context_length`` / ``needle_depth``
    per trial, ``threshold`` and ``retrieval_heads`` (heads scoring above it).

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:retrieval-handbuilt")
        >>> task = ck.zoo_task("retrieval-handbuilt", model, context_lengths=[64])
        >>> scores = ck.retrieval_scores(model, task, progress=False)
        >>> scores.top(1), scores.meta["retrieval_heads"]
        ([('a1.h0', 1.0)], ['a1.h0'])
    """
    prompts = needle_prompts(task_or_prompts)
    check_needle_prompts(model, prompts)
    batch_size = budget_prompts_per_batch(model, prompts, batch_size, max_memory)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    per_prompt = torch.zeros(len(prompts), n_layers, n_heads)
    recall = torch.zeros(len(prompts))
    for batch in tqdm(prompt_ranges(len(prompts), batch_size), desc="retrieval scores", disable=not progress):
        chunk = [prompts[i] for i in batch]
        argmax: dict[int, Tensor] = {}

        def keep_argmax(pattern, hook, qpos, argmax=argmax):
            rows = torch.arange(pattern.shape[0], device=pattern.device)[:, None]
            # [b, T, heads]: argmax of each head's attention row at the answer positions only
            argmax[hook.layer()] = pattern[rows, :, qpos.to(pattern.device)].argmax(-1).cpu()

        tokens, qpos, mask, logits = teacher_forced_batch(model, chunk, [(_is_pattern_hook, keep_argmax)])
        produced = logits.argmax(-1)  # [b, T]
        for row, p in enumerate(chunk):
            n_ans = len(p.answer)
            recall[batch[row]] = rouge1_recall(produced[row, :n_ans].tolist(), p.answer.tolist())
        for layer in range(n_layers):
            j = argmax[layer]  # [b, T, H]
            token_at_j = torch.gather(tokens, 1, j.reshape(len(chunk), -1)).reshape(j.shape)
            starts = torch.tensor([p.needle_start for p in chunk])[:, None, None]
            ends = torch.tensor([p.needle_end for p in chunk])[:, None, None]
            hit = (j >= starts) & (j < ends) & (token_at_j == produced[:, :, None]) & mask[:, :, None]
            n_ans = torch.tensor([len(p.answer) for p in chunk], dtype=torch.float)[:, None]
            per_prompt[list(batch), layer] = hit.sum(1).float() / n_ans
    return _finish(model, prompts, per_prompt, recall, min_recall, threshold, "retrieval", task_or_prompts)


def retrieval_scores_generate(
    model,
    task_or_prompts: Task | Sequence[NeedlePrompt],
    *,
    min_recall: float = MIN_RECALL,
    threshold: float = RETRIEVAL_THRESHOLD,
    progress: bool = True,
) -> Scores:
    """The slow reference: greedy decoding, one ``run_with_cache`` (patterns only) per generated token.

    Generates as many tokens as the answer has, scoring each step exactly as Wu et al.: a head
    hits when its most-attended position from the current (last) position lies in the needle
    span and holds the token just produced. Same output as `retrieval_scores`.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:retrieval-handbuilt")
        >>> task = ck.zoo_task("retrieval-handbuilt", model, context_lengths=[64])
        >>> slow = ck.retrieval_scores_generate(model, task, progress=False)
        >>> slow.values.tolist() == ck.retrieval_scores(model, task, progress=False).values.tolist()
        True
    """
    prompts = needle_prompts(task_or_prompts)
    check_needle_prompts(model, prompts)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    per_prompt = torch.zeros(len(prompts), n_layers, n_heads)
    recall = torch.zeros(len(prompts))
    device = model.cfg.device
    for i, p in enumerate(tqdm(prompts, desc="retrieval scores (generation)", disable=not progress)):
        tokens = p.tokens.clone()
        produced: list[int] = []
        for _ in range(len(p.answer)):
            with torch.no_grad():
                logits, cache = model.run_with_cache(tokens[None].to(device), names_filter=_is_pattern_hook)
            y = int(logits[0, -1].argmax())
            for layer in range(n_layers):
                j = cache["pattern", layer][0, :, -1].argmax(-1).cpu()  # [heads]
                hit = (j >= p.needle_start) & (j < p.needle_end) & (tokens[j] == y)
                per_prompt[i, layer] += hit.float()
            produced.append(y)
            tokens = torch.cat([tokens, torch.tensor([y])])
        per_prompt[i] /= len(p.answer)
        recall[i] = rouge1_recall(produced, p.answer.tolist())
    return _finish(model, prompts, per_prompt, recall, min_recall, threshold, "retrieval-generate", task_or_prompts)


def _finish(model, prompts, per_prompt, recall, min_recall, threshold, method, source) -> Scores:
    kept = recall > min_recall
    if not bool(kept.any()):
        raise InputError(
            f"model {model.cfg.model_name!r} answers none of the {len(prompts)} needle prompts mostly right "
            f"(ROUGE-1 recall of the answer > {min_recall}; best {float(recall.max()):.2f}); retrieval scores "
            "need trials the model solves: use shorter contexts, a model that solves the task, or a lower min_recall"
        )
    grid = per_prompt[kept].mean(0)
    task_name = source.name if isinstance(source, Task) else "needle"
    scores = Scores.from_head_grid(
        grid, method, task=task_name, metric="rouge1_recall",
        meta={
            "per_prompt": per_prompt,
            "recall": recall,
            "kept": kept,
            "n_kept": int(kept.sum()),
            "min_recall": min_recall,
            "threshold": threshold,
            "context_length": [len(p.tokens) for p in prompts],
            "needle_depth": [p.needle_start / max(1, len(p.tokens)) for p in prompts],
        },
    )
    scores.meta["retrieval_heads"] = retrieval_heads(scores, threshold)
    return scores


def retrieval_heads(scores: Scores, threshold: float = RETRIEVAL_THRESHOLD) -> list[str]:
    """Heads whose score exceeds ``threshold``, best first.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:retrieval-handbuilt")
        >>> task = ck.zoo_task("retrieval-handbuilt", model, context_lengths=[64])
        >>> scores = ck.retrieval_scores(model, task, progress=False)
        >>> ck.retrieval_heads(scores, threshold=0.1)
        ['a1.h0']
    """
    return [label for label, value in scores.top(len(scores), by_abs=False)
            if value > threshold and names.parse_node(label).kind == "head"]

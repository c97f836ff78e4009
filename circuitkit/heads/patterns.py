"""Head scores through one interface: ``head_scores(model, tokens_or_task, kind) -> Scores``.

Kinds:

* ``"previous_token"``, ``"duplicate_token"``, ``"induction"`` — TransformerLens's
  ``head_detector`` detection patterns and similarity score (``"mul"``: share of a head's
  attention on the pattern's query-key pairs), computed per prompt from one batched cache and
  averaged over prompts, exactly as ``detect_head(model, [texts], name)`` averages its per-string
  scores (it runs one string at a time).
* ``"locality"`` — the streaming-head signature (DuoAttention / StreamingLLM): share of attention
  mass on the first ``sink`` tokens plus the last ``window`` tokens (the query's own included),
  averaged over queries at positions ``>= sink + window`` (earlier ones see nothing else).
* ``"echo"`` — RazorAttention's echo score: attention mass on earlier copies of the current token,
  averaged over queries that have one.
* ``"retrieval"`` — `circuitkit.heads.retrieval.retrieval_scores` on a needle task.
* ``"qrhead"`` / ``"locos"`` — `circuitkit.heads.detectors.qr_scores` (query-to-needle attention
  mass) and `circuitkit.heads.detectors.locos_scores` (OV write to the answer's logit) on a needle
  task; ``per_kv_group=True`` averages them over heads that share a key / value head.
* ``"duo"`` — `circuitkit.heads.gates.duo_gates`: DuoAttention's gates, trained on a needle task
  to mix each key / value head's full and streaming (``sink`` + ``window``) attention.

Without input, the repeated-random-token prompts of `repeated_tokens` are used (the usual
probe for induction / duplicate heads; RazorAttention repeats a sequence 4 times).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import head_detector

from circuitkit.errors import InputError, InputTypeError
from circuitkit.heads.detectors import locos_scores, qr_scores
from circuitkit.heads.gates import duo_gates
from circuitkit.heads.retrieval import retrieval_scores
from circuitkit.scores import Scores
from circuitkit.tasks.builders import check_n_prompts
from circuitkit.tasks.task import Task
from circuitkit.tokenizers import bos_id, ordinary_token_ids

DETECTOR_KINDS = {
    "previous_token": head_detector.get_previous_token_head_detection_pattern,
    "duplicate_token": head_detector.get_duplicate_token_head_detection_pattern,
    "induction": head_detector.get_induction_head_detection_pattern,
}
PATTERN_KINDS = (*DETECTOR_KINDS, "locality", "echo")  # scored on repeated random tokens (`heads score`)
NEEDLE_KINDS = {"retrieval": retrieval_scores, "qrhead": qr_scores, "locos": locos_scores,
                "duo": duo_gates}  # need a needle task
KINDS = (*PATTERN_KINDS, *NEEDLE_KINDS)


def repeated_tokens(model, n_prompts: int = 8, seq_len: int = 20, n_repeats: int = 2, seed: int = 0,
                    prepend_bos: bool = True) -> Tensor:
    """``[n_prompts, 1 + seq_len * n_repeats]``: BOS then a random token sequence repeated (no BOS,
    ``[n_prompts, seq_len * n_repeats]``, with ``prepend_bos=False``, for BOS-less tokenizers)."""
    tok = getattr(model, "tokenizer", None)
    for what, value in (("seq_len", seq_len), ("n_repeats", n_repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{what} must be a positive whole number, got {value!r}")
    # the builders' cap, with its memory estimate, before anything is allocated
    check_n_prompts("repeated tokens", n_prompts, tok if tok is not None else range(model.cfg.d_vocab),
                    1 + seq_len * n_repeats)
    pool = torch.tensor(ordinary_token_ids(tok)) if tok is not None else torch.arange(model.cfg.d_vocab)
    if len(pool) < seq_len:
        raise InputError(f"the vocabulary has {len(pool)} ordinary tokens, fewer than seq_len={seq_len}; use a shorter seq_len")
    if 1 + seq_len * n_repeats > model.cfg.n_ctx:
        raise InputError(
            f"1 + seq_len * n_repeats = {1 + seq_len * n_repeats} tokens exceeds model n_ctx={model.cfg.n_ctx}; "
            "use a shorter seq_len or fewer repeats"
        )
    gen = torch.Generator().manual_seed(seed)
    draws = torch.stack([pool[torch.randperm(len(pool), generator=gen)[:seq_len]] for _ in range(n_prompts)])
    if not prepend_bos:
        return draws.repeat(1, n_repeats)
    bos = bos_id(tok) if tok is not None else 0
    return torch.cat([torch.full((n_prompts, 1), bos), draws.repeat(1, n_repeats)], dim=1)


def _as_batch(model, tokens_or_task) -> tuple[Tensor, list[int], str]:
    """Token rows ``[batch, pos]``, each row's real length, and a task name."""
    if tokens_or_task is None:
        tokens = repeated_tokens(model)
        return tokens, [tokens.shape[1]] * len(tokens), "repeated_tokens"
    if isinstance(tokens_or_task, Task):
        task = tokens_or_task
        return task.clean, [int(p) + 1 for p in task.answer_pos], task.name
    if isinstance(tokens_or_task, str) or (
        isinstance(tokens_or_task, Sequence) and tokens_or_task and isinstance(tokens_or_task[0], str)
    ):
        texts = [tokens_or_task] if isinstance(tokens_or_task, str) else list(tokens_or_task)
        rows = [model.to_tokens(t)[0] for t in texts]
        width = max(len(r) for r in rows)
        tokens = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r
        return tokens, [len(r) for r in rows], "text"
    tokens = torch.as_tensor(tokens_or_task)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.dtype.is_floating_point:
        raise InputError(f"tokens must be integer ids of shape [batch, pos], got {tuple(tokens.shape)} {tokens.dtype}")
    return tokens.long(), [tokens.shape[1]] * len(tokens), "tokens"


def head_scores(
    model,
    tokens_or_task: Tensor | Task | str | Sequence[str] | None = None,
    kind: str = "induction",
    *,
    sink: int = 4,
    window: int = 8,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: str = "mul",
    batch_size: int = 16,
    progress: bool = False,
    **retrieval_kwargs,
) -> Scores:
    """Score every head of ``model`` for one attention signature (see the module docstring).

    ``tokens_or_task``: token ids ``[batch, pos]`` (unpadded), a `Task` (its clean prompts,
    each up to its ``answer_pos``), a string or list of strings, or None for repeated random
    tokens. ``sink`` / ``window`` parametrise ``"locality"`` and ``"duo"``'s streaming cache; ``exclude_bos``,
    ``exclude_current_token`` and ``error_measure`` go to TransformerLens's detector score.
    Returns head ``Scores`` ``[n_layers * n_heads]`` with ``meta["per_prompt"]`` ``[n, L, H]``.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> [label for label, _ in ck.head_scores(model, task, "induction").top(1)]
        ['a1.h0']
        >>> [label for label, _ in ck.head_scores(model, task, "previous_token").top(1)]
        ['a0.h0']
    """
    if kind not in KINDS:
        raise InputError(f"unknown head score kind {kind!r}; choose one of {list(KINDS)}")
    if kind in NEEDLE_KINDS:
        if tokens_or_task is None:
            raise InputError(f"kind={kind!r} needs a needle task; build one with circuitkit.needle(model, ...)")
        if kind == "duo":  # the streaming cache the gates mix with the full one
            retrieval_kwargs.update(sink=sink, window=window)
        return NEEDLE_KINDS[kind](model, tokens_or_task, batch_size=batch_size, progress=progress, **retrieval_kwargs)
    if retrieval_kwargs:
        raise InputTypeError(f"unexpected arguments for kind={kind!r}: {sorted(retrieval_kwargs)}")
    if error_measure not in ("mul", "abs"):
        raise InputError(f"error_measure must be 'mul' or 'abs', got {error_measure!r}")
    if kind == "locality" and (sink < 0 or window < 1):
        raise InputError(f"locality needs sink >= 0 and window >= 1, got sink={sink}, window={window}")
    tokens, lengths, task_name = _as_batch(model, tokens_or_task)
    if tokens.shape[1] > model.cfg.n_ctx:
        raise InputError(f"prompts of {tokens.shape[1]} tokens exceed model n_ctx={model.cfg.n_ctx}; use shorter prompts")
    if int(tokens.max()) >= model.cfg.d_vocab or int(tokens.min()) < 0:
        raise InputError(f"token ids outside model vocabulary of {model.cfg.d_vocab}; tokenize with the model's tokenizer")
    if min(lengths) < 2:
        raise InputError("head scores need prompts of at least 2 tokens")
    if kind == "locality" and min(lengths) <= sink + window:
        raise InputError(
            f"locality with sink={sink} + window={window} needs prompts longer than {sink + window} tokens "
            f"(shortest has {min(lengths)}); use longer prompts or a smaller sink / window"
        )
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    per_prompt = torch.full((len(tokens), n_layers, n_heads), float("nan"))
    starts = range(0, len(tokens), batch_size)
    for start in tqdm(starts, desc=f"{kind} scores", disable=not progress):
        rows = range(start, min(len(tokens), start + batch_size))
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens[list(rows)].to(model.cfg.device),
                                            names_filter=lambda n: n.endswith("attn.hook_pattern"))
        for b, i in enumerate(rows):
            n = lengths[i]
            seq = tokens[i, :n].cpu()
            for layer in range(n_layers):
                pattern = cache["pattern", layer][b, :, :n, :n].float().cpu()  # [heads, q, k]
                per_prompt[i, layer] = _score_layer(pattern, seq, kind, sink, window, exclude_bos,
                                                    exclude_current_token, error_measure)
    grid = per_prompt.nanmean(0)
    if torch.isnan(grid).any():
        raise InputError(
            f"no prompt gives an {kind} score (no token repeats in the input); use prompts with repeated "
            "tokens, e.g. circuitkit.heads.repeated_tokens(model)"
        )
    meta = {"per_prompt": per_prompt, "kind": kind, "n_prompts": len(tokens)}
    if kind == "locality":
        meta.update(sink=sink, window=window)
    return Scores.from_head_grid(grid, kind, task=task_name, meta=meta)


def _score_layer(pattern: Tensor, seq: Tensor, kind: str, sink: int, window: int, exclude_bos: bool,
                 exclude_current_token: bool, error_measure: str) -> Tensor:
    """Scores ``[heads]`` of one layer on one prompt (NaN when the prompt has nothing to score)."""
    n_heads, n = pattern.shape[0], pattern.shape[-1]
    if kind in DETECTOR_KINDS:
        detection = DETECTOR_KINDS[kind](seq)
        return torch.tensor([
            head_detector.compute_head_attention_similarity_score(
                pattern[h], detection, exclude_bos=exclude_bos, exclude_current_token=exclude_current_token,
                error_measure=error_measure)
            for h in range(n_heads)
        ])
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None]
    if kind == "locality":
        local = ((k < sink) | ((q - k < window) & (k <= q))).float()  # [q, k]
        queries = torch.arange(n) >= sink + window
        return (pattern * local).sum(-1)[:, queries].mean(-1)
    # echo: mass on earlier copies of the query's token
    copies = ((seq[None] == seq[:, None]) & (k < q)).float()
    queries = copies.sum(-1) > 0
    if not bool(queries.any()):
        return torch.full((n_heads,), float("nan"))
    return (pattern * copies).sum(-1)[:, queries].mean(-1)

"""The batched engine behind activation and path patching: the reference runs, the patched
runs and the normalized metric, much faster than one forward pass per patch:

* many patches share one forward pass: the run being patched is repeated ``k`` times along the
  batch and copy ``i`` receives patch ``i`` (a boolean mask over the activation's index
  dimensions, applied with one ``torch.where``);
* each patched run starts from the cached residual stream at the first patched layer
  (``model(resid, start_at_layer=L)``) instead of recomputing the unchanged layers below;
* only the hooks that are needed are cached;
* when the task's metric reads only the answer position (every built-in metric does), logits are
  computed at that position alone, and for the logit difference only for the answer and
  wrong-answer tokens: on real vocabularies the unembedding is a large share of a forward pass
  (a third of GPT-2 small's, most of Pythia-14m's) and full logits cap the batch;
* with causal attention only the positions that can change the metric are run: none after the
  last answer position (when the metric reads only answer positions), and none before the first
  position where the clean and corrupted tokens differ or, by position, before the patched one
  (those keep the base run's values; later positions attend to its cached keys and values);
  in the last layer, a head's output, query or pattern, the attention / MLP output or resid_mid matter only
  at the answer positions, so those patches run from the first answer position, and by-position
  patches elsewhere take the base run's value without a run;
* a by-position patch of those hooks in an earlier layer changes only its own position in that
  layer, so the later positions start one layer up from the base run's residual stream
  (`run_split`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from circuitkit import names
from circuitkit.errors import InputError
from circuitkit.models import backend
from circuitkit.tasks.metrics import normalized
from circuitkit.tasks.task import Task

Direction = Literal["denoise", "noise"]
DIRECTIONS = ("denoise", "noise")
# Defaults when batch_size is left to us: rows per forward pass (measured fastest on CPU for
# small models; larger batches thrash the cache) and a cap on logit floats (~512 MB).
_DEFAULT_ROWS = 256
_LOGIT_BUDGET = 2**27


# --- shared setup ---------------------------------------------------------------------------

@dataclass
class PatchRuns:
    """The two reference runs of a patching experiment and the normalized metric.

    ``base`` is the run that receives patches (corrupted tokens when denoising, clean when
    noising); ``source`` supplies the patched-in activations.
    """

    task: Task
    direction: str
    base_tokens: Tensor  # [batch, pos]
    source_tokens: Tensor  # [batch, pos]
    clean_score: float
    corrupted_score: float
    base_cache: dict[str, Tensor]
    source_cache: dict[str, Tensor]
    shortformer_pos_embed: Tensor | None
    attention_mask: Tensor | None
    base_logits: Tensor  # [batch, pos, vocab]; [batch, vocab] (answer position) when the task reads only that
    prefix_ok: bool = False  # whether patched runs may skip an unchanged prefix (see run_batched, prepare_runs)
    # Positions before this one hold the same tokens in both runs, so patching them changes nothing.
    same_tokens_before: int = 0
    # Per layer, the keys and values TransformerLens's KV cache stores for the base run
    # ([batch, pos, kv_head, d_head] each; after QK-norm and clipping, before rotary), where prefix_ok.
    base_keys_values: list[tuple[Tensor, Tensor]] | None = None
    # Whether runs stop after the last block and compute logits at the answer positions alone (the
    # metric reads nothing else, and the model's logits are its final norm and unembedding); None:
    # whenever the metric reads only answer positions.
    answer_logits: bool | None = None

    def __post_init__(self) -> None:
        if self.answer_logits is None:
            self.answer_logits = self.task.reads_answer_position_only

    def normalized(self, logits: Tensor) -> float:
        """``(m - m_corrupted) / (m_clean - m_corrupted)`` of the task metric on ``logits``."""
        return float(normalized(float(self.task.score(logits)), self.clean_score, self.corrupted_score))

    def normalized_copies(self, logits: Tensor, copies: int) -> Tensor:
        """`normalized` of each of ``copies`` stacked copies of the prompts, ``[copies]``.

        ``logits``: ``[copies * batch, pos, vocab]`` or, from an answer-position run, ``[copies * batch, vocab]``.
        """
        # One score per copy (not one per-prompt call on the stack): a metric such as KL holds
        # per-prompt references that only line up with one copy of the prompts.
        per_copy = logits.reshape(copies, -1, *logits.shape[1:])
        m = torch.stack([self.task.score(x) for x in per_copy]).float().cpu()
        return normalized(m, self.clean_score, self.corrupted_score)

    def metric(self) -> Callable[[Tensor], Tensor]:
        """The same normalized metric as a TransformerLens ``patching_metric`` (logits -> scalar)."""
        def patching_metric(logits: Tensor) -> Tensor:
            return normalized(self.task.score(logits), self.clean_score, self.corrupted_score)
        return patching_metric


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise InputError(
            f"direction must be 'denoise' (clean activations into the corrupted run) or 'noise' "
            f"(corrupted into clean), got {direction!r}"
        )


def prepare_runs(model, task: Task, direction: str, base_hooks: Iterable[str], source_hooks: Iterable[str],
                 trim_from_layer: int | None = None) -> PatchRuns:
    """Validate, run clean and corrupted once (caching only the named hooks) and score them.

    ``trim_from_layer``: the patched runs start at this layer or later and may skip positions
    that cannot change the metric (causal attention only): the runs end at the last answer
    position when the metric reads nothing else (every cached activation is then that much
    shorter), and ``same_tokens_before`` records the unchanged prefix, with the keys and values
    the base run leaves in a TransformerLens KV cache kept for `run_batched`'s ``prefix``.
    (Those are not ``hook_k`` / ``hook_v``: where the model normalises or clips keys, the cache
    holds the result.)
    """
    check_direction(direction)
    task.check_model(model)
    cfg = model.cfg
    device = cfg.device
    task = task.to(device)
    base_tokens, source_tokens = (task.corrupted, task.clean) if direction == "denoise" else (task.clean, task.corrupted)
    with torch.no_grad():
        _, shortformer, attention_mask = backend.embed(model, base_tokens)
    # Only where asked, where a position cannot see later ones and TransformerLens's KV cache is the
    # plain (tested) kind: causal attention, learned / rotary positions, no padding mask, no local windows.
    prefix_ok = (trim_from_layer is not None and attention_mask is None and shortformer is None
                 and backend.keeps_prefix_cache(model))
    same_before = 0
    if prefix_ok:
        if task.reads_answer_position_only:
            end = int(task.answer_pos.max()) + 1
            base_tokens, source_tokens = base_tokens[:, :end], source_tokens[:, :end]
        differs = (base_tokens != source_tokens).any(dim=0).nonzero()
        same_before = int(differs[0]) if len(differs) else base_tokens.shape[1]
    base_set, source_set = set(base_hooks), set(source_hooks)
    # Every hook patched or cached lives inside a block, so when the metric reads only the answer
    # position the two reference runs stop at the final residual and unembed that position alone
    # (with a realistic vocabulary the full unembedding is most of a forward pass).
    # (where the model's logits are its final norm and unembedding of that residual: a bridge is checked)
    answer_logits = task.reads_answer_position_only and backend.audit(model).ok("unembed")
    stop = cfg.n_layers if answer_logits else None
    keys_values = None
    with torch.no_grad():
        if prefix_ok:
            base_logits, base_cache, keys_values = run_keeping_keys_values(model, base_tokens, base_set, stop)
        else:
            base_logits, base_cache = backend.run_with_cache(model, base_tokens, base_set, stop)
        source_logits, source_cache = backend.run_with_cache(model, source_tokens, source_set, stop)
        if stop is not None:
            base_logits = _answer_position_logits(model, task, base_logits, task.answer_pos)
            source_logits = _answer_position_logits(model, task, source_logits, task.answer_pos)
    base_score, source_score = float(task.score(base_logits)), float(task.score(source_logits))
    clean_score, corrupted_score = (source_score, base_score) if direction == "denoise" else (base_score, source_score)
    if abs(clean_score - corrupted_score) < 1e-6:
        raise InputError(
            f"task {task.name!r}: the clean and corrupted runs give the same {task.metric_name} "
            f"({clean_score:.4g}), so patching effects cannot be normalized; use a task whose "
            "corruption changes the model's behaviour"
        )
    return PatchRuns(
        task, direction, base_tokens, source_tokens, clean_score, corrupted_score,
        {k: base_cache[k] for k in base_set}, {k: source_cache[k] for k in source_set},
        shortformer, attention_mask, base_logits, prefix_ok, same_before, keys_values, answer_logits,
    )


def run_keeping_keys_values(model, tokens: Tensor, hooks: set[str], stop_at_layer: int | None = None):
    """``model.run_with_cache(tokens)`` caching only ``hooks``, plus, per layer, the keys and values
    TransformerLens's KV cache stores (``[batch, pos, kv_head, d_head]`` each: after QK-norm and
    clipping, before rotary; not ``hook_k`` / ``hook_v``), for runs that skip a prefix of positions
    (`run_batched`'s ``prefix``). Returns ``(output, cache, keys_values)``."""
    kv_cache = TransformerLensKeyValueCache.init_cache(model.cfg, tokens.device, tokens.shape[0])
    # from the embedding, so TransformerLens builds no padding mask from the tokenizer
    embedded = backend.embed(model, tokens)[0]
    out, cache = model.run_with_cache(embedded, start_at_layer=0, past_kv_cache=kv_cache,
                                      names_filter=lambda n: n in hooks, stop_at_layer=stop_at_layer)
    return out, cache, [(e.past_keys, e.past_values) for e in kv_cache.entries]


def rows_per_pass(model, runs: PatchRuns, batch_size: int | None) -> int:
    """How many copies of the prompts one forward pass holds."""
    n_prompts, seq = runs.base_tokens.shape
    if batch_size is not None:
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be a positive number of rows per forward pass, got {batch_size}")
        return max(1, int(batch_size) // n_prompts)
    logit_positions = 1 if runs.task.reads_answer_position_only else seq
    return max(1, min(_DEFAULT_ROWS // n_prompts, _LOGIT_BUDGET // (n_prompts * logit_positions * model.cfg.d_vocab)))


def run_batched(
    model,
    runs: PatchRuns,
    start: int,
    hooks: list[tuple[str, Callable]],
    copies: int,
    stop_at_layer: int | None = None,
    prefix: int = 0,
) -> Tensor:
    """Run ``copies`` copies of the base run from the cached ``resid_pre`` of layer ``start``.

    ``prefix > 0``: the patches leave positions ``< prefix`` untouched (causal attention), so
    only the later positions are run, attending to the base run's cached keys and values
    (``runs.base_keys_values``, kept where ``runs.prefix_ok``); the prefix's logits
    are the base run's. Hooks then see activations of positions ``prefix..`` only.

    Returns logits ``[copies * batch, pos, vocab]``, or ``[copies * batch, vocab]`` at each prompt's
    answer position when the task's metric reads nothing else (``Task.reads_answer_position_only``),
    or the residual when ``stop_at_layer`` is given.
    """
    resid = runs.base_cache[names.hook("resid_pre", start)]
    kwargs = {}
    if prefix:
        kwargs["past_kv_cache"] = _prefix_cache(model, runs, start, copies, prefix)
        resid = resid[:, prefix:]
    if runs.shortformer_pos_embed is not None:
        kwargs["shortformer_pos_embed"] = runs.shortformer_pos_embed.repeat(copies, 1, 1)
    if runs.attention_mask is not None:
        kwargs["attention_mask"] = runs.attention_mask.repeat(copies, 1)
    answer_only = stop_at_layer is None and runs.answer_logits
    tokens = runs.base_tokens[:, prefix:].repeat(copies, 1)
    with torch.no_grad():
        out = backend.run_from_layer(model, resid.repeat(copies, 1, 1), start, tokens,
                                     stop_at_layer=model.cfg.n_layers if answer_only else stop_at_layer,
                                     fwd_hooks=hooks, **kwargs)
        return out if stop_at_layer is not None else _patched_logits(model, runs, out, copies, prefix)


def _patched_logits(model, runs: PatchRuns, out: Tensor, copies: int, prefix: int) -> Tensor:
    """A patched run's output for positions ``prefix..`` (the residual stream after the last block
    when the metric reads only answer positions, else logits) as `run_batched` returns it,
    with the base run's values before ``prefix``."""
    if runs.answer_logits:
        return _answer_logits(model, runs, out, copies, prefix)
    return torch.cat([runs.base_logits[:, :prefix].repeat(copies, 1, 1), out], dim=1) if prefix else out


def _answer_logits(model, runs: PatchRuns, final_resid: Tensor, copies: int, prefix: int) -> Tensor:
    """Logits ``[copies * batch, vocab]`` at each prompt's answer position from the residual stream
    after the last block (positions ``prefix..``); answers before ``prefix`` keep the base run's."""
    answer_pos = runs.task.answer_pos.to(final_resid.device).repeat(copies)
    logits = _answer_position_logits(model, runs.task, final_resid, (answer_pos - prefix).clamp(min=0))
    if prefix:
        before = answer_pos < prefix
        if bool(before.any()):
            logits = torch.where(before[:, None], runs.base_logits.repeat(copies, 1), logits)
    return logits


def _answer_position_logits(model, task: Task, final_resid: Tensor, positions: Tensor) -> Tensor:
    """Logits ``[rows, vocab]`` at ``positions[i]`` of row ``i`` of the residual stream after the
    last block (``[rows, pos, d_model]``); when the metric is the logit difference, only the answer
    and wrong-answer columns are computed (the rest stay 0 and are never read)."""
    rows = torch.arange(final_resid.shape[0], device=final_resid.device)
    picked = final_resid[rows, positions.to(final_resid.device)]
    normed = backend.final_norm(model, picked[:, None])[:, 0]
    return backend.unembed_columns(model, normed, task.metric_token_ids())


def _prefix_cache(model, runs: PatchRuns, start: int, copies: int, prefix: int,
                  keys_values: Callable[[int], tuple[Tensor, Tensor]] | None = None, frozen: bool = True):
    """A TransformerLens KV cache holding ``prefix`` positions for layers ``>= start``: the base
    run's keys and values, or ``keys_values(layer)`` (already ``copies`` times the batch).

    ``frozen``: the run leaves the cache as it is; otherwise each layer's entry gains the run's
    own keys and values (as TransformerLens stores them), for `run_split` to reuse.
    """
    entries = []
    rows = copies * runs.base_tokens.shape[0]
    for layer in range(model.cfg.n_layers):
        if layer < start:  # never read: those blocks do not run
            entries.append(TransformerLensKeyValueCacheEntry.init_cache_entry(model.cfg, runs.base_tokens.device, 1))
            continue
        if keys_values is not None:
            keys, values = keys_values(layer)
        else:
            keys, values = (x[:, :prefix].repeat(copies, 1, 1, 1) for x in runs.base_keys_values[layer])
        entries.append(TransformerLensKeyValueCacheEntry(keys, values, frozen=frozen))
    mask = torch.ones(rows, prefix, dtype=torch.int, device=runs.base_tokens.device)
    return TransformerLensKeyValueCache(entries=entries, previous_attention_mask=mask, frozen=frozen)


def run_split(model, runs: PatchRuns, start: int, hooks: list[tuple[str, Callable]], copies: int,
              lo: int, hi: int) -> Tensor:
    """`run_batched` with ``prefix=lo`` for patches of a position-local hook (see
    `_POSITION_LOCAL_HOOKS`) in layer ``start`` at positions ``lo..hi`` only.

    In layer ``start`` such patches change positions ``lo..hi`` alone, so the run is split in two:
    those positions through every layer from ``start``, then the later ones from layer ``start + 1``
    (their residual stream there is the base run's), attending to the first part's keys and values.
    When layer ``start + 1`` is the last and the metric reads only answer positions, the second part
    runs only from the first answer position: the last layer's keys and values between are the
    base run's. Requires ``runs.prefix_ok`` and ``resid_pre`` of layer ``start + 1`` in the base cache.
    """
    cfg = model.cfg
    answer_only = runs.answer_logits
    stop = cfg.n_layers if answer_only else None
    resid = runs.base_cache[names.hook("resid_pre", start)][:, lo:hi + 1].repeat(copies, 1, 1)
    # a growing cache: afterwards each layer's entry holds positions 0..hi as the model stores them
    grown = _prefix_cache(model, runs, start, copies, lo, frozen=False)
    with torch.no_grad():
        first = model.run_with_hooks(resid, start_at_layer=start, stop_at_layer=stop, past_kv_cache=grown,
                                     fwd_hooks=hooks)
    later_from = hi + 1
    if answer_only and start + 1 == cfg.n_layers - 1:
        later_from = max(later_from, int(runs.task.answer_pos.min()))

    def keys_values(layer: int) -> tuple[Tensor, Tensor]:
        entry = grown.entries[layer]
        return tuple(torch.cat([ran, base[:, hi + 1:later_from].repeat(copies, 1, 1, 1)], dim=1)
                     for ran, base in zip((entry.past_keys, entry.past_values), runs.base_keys_values[layer],
                                          strict=True))

    resid = runs.base_cache[names.hook("resid_pre", start + 1)][:, later_from:].repeat(copies, 1, 1)
    with torch.no_grad():
        later = model(resid, start_at_layer=start + 1, stop_at_layer=stop,
                      past_kv_cache=_prefix_cache(model, runs, start + 1, copies, later_from, keys_values))
        # positions hi + 1 .. later_from - 1 are never read (no answer there): zeros stand in
        gap = first.new_zeros(first.shape[0], later_from - hi - 1, *first.shape[2:])
        return _patched_logits(model, runs, torch.cat([first, gap, later], dim=1), copies, lo)


def masked_patch_hook(mask: Tensor, source: Tensor, copies: int, prefix: int = 0, pos_axis: int = 0,
                      end: int | None = None) -> Callable:
    """A hook giving copy ``i`` of the batch ``source`` wherever ``mask[i]`` is True.

    ``mask``: ``[copies, *index_dims]`` over the activation's dims after batch, minus the last.
    ``prefix`` / ``end``: the run covers positions ``prefix..end - 1`` only (``pos_axis`` of the
    index dims; ``end`` None = to the last).
    """
    end = mask.shape[1 + pos_axis] if end is None else end
    if prefix or end < mask.shape[1 + pos_axis]:
        mask = mask.narrow(1 + pos_axis, prefix, end - prefix)
        source = source.narrow(1 + pos_axis, prefix, end - prefix)
        if pos_axis == 1:  # a pattern [batch, head, dest, src]: the run holds keys 0..end - 1 only
            source = source[..., :end]

    def hook(act: Tensor, hook) -> Tensor:
        shaped = act.reshape(copies, -1, *act.shape[1:])
        m = mask.reshape(copies, 1, *mask.shape[1:], 1)
        return torch.where(m, source.unsqueeze(0), shaped).reshape(act.shape)
    return hook


def sweep_patches(
    model,
    runs: PatchRuns,
    hook_short: str,
    patches: Sequence[dict[int, Tensor]],
    batch_size: int | None,
    progress: bool,
    desc: str,
    pos_axis: int,
) -> Tensor:
    """The normalized metric for each patch ``{layer: mask}`` (several layers = patched together).

    Patches are grouped by their first layer and run from that layer's cached residual stream,
    ``k`` patches per forward pass. ``pos_axis`` is the position axis of the masks. Where
    ``runs.prefix_ok``, patches are ordered by their first patched position and each pass starts
    at the first position any of its patches touches, and not before the first position whose
    tokens differ between the runs (see `run_batched`); masks are cut to the positions the
    runs hold and, for patches confined to the last layer of a hook that feeds no keys or values
    there, to the answer positions when the metric reads nothing else. A patch left empty keeps the
    base run's value. Passes whose patches of such a hook sit in one layer and end before the last
    position run in two parts (`run_split`). Returns ``[len(patches)]``.
    """
    k_max = rows_per_pass(model, runs, batch_size)
    seq = runs.base_tokens.shape[1]
    results = torch.full((len(patches),), float("nan"))
    unchanged = float(runs.normalized_copies(runs.base_logits, 1)[0])
    read_in_last_layer = _positions_read_in_last_layer(runs, hook_short, seq)
    by_start: dict[int, list[tuple[int, int]]] = {}
    cut = []
    for i, patch in enumerate(patches):
        patch = {layer: mask.narrow(pos_axis, 0, seq) for layer, mask in patch.items()}
        if read_in_last_layer is not None and min(patch) == model.cfg.n_layers - 1:
            patch = {layer: mask & read_in_last_layer.view([seq if d == pos_axis else 1 for d in range(mask.ndim)])
                     for layer, mask in patch.items()}
        cut.append(patch)
        patched = torch.cat([_patched_positions(mask, pos_axis) for mask in patch.values()])
        if runs.prefix_ok:  # source and base values are equal before the first differing token
            patched = patched[patched >= runs.same_tokens_before]
        if not len(patched):
            results[i] = unchanged
            continue
        prefix = int(patched.min()) if runs.prefix_ok else 0
        by_start.setdefault(min(patch), []).append((prefix, i))
    chunks = []
    for start, items in sorted(by_start.items()):
        items.sort()
        for j in range(0, len(items), k_max):
            part = items[j:j + k_max]
            chunks.append(((start, part[0][0]), [i for _, i in part]))
    device = runs.base_tokens.device
    split_ok = runs.prefix_ok and hook_short in _POSITION_LOCAL_HOOKS
    for (start, prefix), chunk in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        k = len(chunk)
        layers = sorted({layer for i in chunk for layer in cut[i]})
        split = split_ok and layers == [start] and names.hook("resid_pre", start + 1) in runs.base_cache
        # the last position the chunk patches; later ones need running from layer start + 1 only
        hi = max(int(_patched_positions(cut[i][start], pos_axis)[-1]) for i in chunk) if split else seq - 1
        split = split and hi < seq - 1
        hooks = []
        for layer in layers:
            some = next(cut[i][layer] for i in chunk if layer in cut[i])
            mask = torch.zeros((k, *some.shape), dtype=torch.bool)
            for j, i in enumerate(chunk):
                if layer in cut[i]:
                    mask[j] = cut[i][layer]
            name = names.hook(hook_short, layer)
            hooks.append((name, masked_patch_hook(mask.to(device), runs.source_cache[name], k, prefix, pos_axis,
                                                  end=hi + 1 if split else None)))
        if split:
            logits = run_split(model, runs, start, hooks, k, prefix, hi)
        else:
            logits = run_batched(model, runs, start, hooks, k, prefix=prefix)
        results[chunk] = runs.normalized_copies(logits, k)
    return results


# Hooks whose value at a position reaches the rest of their layer only through the residual stream
# at that same position (they feed none of the layer's keys / values): patched in the last layer
# they matter only at the answer positions, in an earlier one they leave the layer's other
# positions as they were.
_POSITION_LOCAL_HOOKS = frozenset({"z", "q", "pattern", "attn_out", "mlp_out", "resid_mid"})


def _positions_read_in_last_layer(runs: PatchRuns, hook_short: str, seq: int) -> Tensor | None:
    """Where a patch of ``hook_short`` in the last layer can change the metric: the answer positions
    (``[seq]`` bool), or None where every position can (the metric reads other positions, or the
    hook feeds the last layer's keys / values)."""
    if hook_short not in _POSITION_LOCAL_HOOKS or not runs.task.reads_answer_position_only:
        return None
    read = torch.zeros(seq, dtype=torch.bool)
    read[runs.task.answer_pos.cpu()] = True
    return read


def _patched_positions(mask: Tensor, pos_axis: int) -> Tensor:
    """The positions a mask patches, ascending (``[n]``)."""
    other = [d for d in range(mask.ndim) if d != pos_axis]
    return (mask.any(dim=other) if other else mask).nonzero()[:, 0]

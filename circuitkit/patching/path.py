"""Path patching (Wang et al. 2022, the IOI circuit analysis), batched.

For each sender head ``s`` the effect of the path ``s -> receivers' <input>``:

1. run the clean prompts with every attention head's output (``hook_z``) frozen to its clean
   value, except ``s``, whose output comes from the corrupted run (MLPs are recomputed unless
   ``freeze_mlps``); record what the receivers read (their q, k or v, the MLP output, or the
   final residual stream);
2. run the clean prompts again, patching only the receivers' input with those values;
3. score the normalized metric ``(m - m_corrupted) / (m_clean - m_corrupted)``: 1 = the path does
   not matter, lower = the path carries the clean behaviour.

Senders of the same layer share batched forward passes started at that layer's cached
residual stream (everything below it is clean by construction).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitkit import names
from circuitkit.errors import InputError
from circuitkit.models import backend
from circuitkit.patching.activation import validate_heads
from circuitkit.patching.engine import PatchRuns, prepare_runs, rows_per_pass, run_batched
from circuitkit.scores import Scores
from circuitkit.tasks.task import Task

RECEIVER_INPUTS = ("q", "k", "v", "mlp", "resid")


def _receiver_sites(model, receivers: Sequence[str] | None, receiver_input: str) -> dict[int, list[int] | None]:
    """``{layer: [head indices at the hooked tensor] or None (whole tensor)}`` of the receivers."""
    if receiver_input not in RECEIVER_INPUTS:
        raise InputError(
            f"receiver_input must be one of {RECEIVER_INPUTS} ('resid' = the final residual stream, "
            f"i.e. receivers=['logits']), got {receiver_input!r}"
        )
    cfg = model.cfg
    if receiver_input == "resid":
        if receivers not in (None, [names.LOGITS], (names.LOGITS,)):
            raise InputError(
                f"receiver_input='resid' patches the final residual stream: give receivers=['logits'] "
                f"(or None), got {receivers!r}"
            )
        return {}
    if not receivers:
        raise InputError(f"receiver_input={receiver_input!r} needs receivers, e.g. ['a2.h1'] or ['m1']")
    sites: dict[int, list[int] | None] = {}
    if receiver_input == "mlp":
        if cfg.attn_only:
            raise InputError(f"model {cfg.model_name!r} is attention-only: it has no MLP receivers; use q, k, v or resid")
        for r in receivers:
            node = names.parse_node(r)
            if node.kind != "mlp" or not 0 <= node.layer < cfg.n_layers:
                raise InputError(f"MLP receiver {r!r} must be 'm<layer>' with layer in 0 .. {cfg.n_layers - 1}")
            sites[node.layer] = None
        return sites
    group = 1
    if receiver_input in ("k", "v") and cfg.n_key_value_heads is not None:
        # Grouped-query attention: a head's k / v is its group's shared key/value head.
        group = cfg.n_heads // cfg.n_key_value_heads
    for layer, h in validate_heads(model, receivers, what="receiver head"):
        heads = sites.setdefault(layer, [])
        if h // group not in heads:
            heads.append(h // group)
    return sites


def _hook_short(receiver_input: str) -> str:
    return "mlp_out" if receiver_input == "mlp" else receiver_input


def path_patching(
    model,
    task: Task,
    senders: Iterable[str] | None = None,
    receivers: Sequence[str] | None = None,
    receiver_input: str = "resid",
    *,
    freeze_mlps: bool = False,
    batch_size: int | None = None,
    progress: bool = True,
) -> Scores:
    """Path patching from each sender head to ``receivers``' ``receiver_input``.

    Args:
        model: a ``HookedTransformer``.
        task: clean / corrupted prompts and the metric.
        senders: head ids (``"a0.h3"``); None sweeps every head.
        receivers: head ids for ``q`` / ``k`` / ``v`` (all positions; in grouped-query models the
            k / v of a head's key/value group), MLP ids (``"m1"``) for ``mlp``, or
            ``["logits"]`` / None for ``resid`` (the final residual stream: every path from the
            sender that avoids attention heads).
        receiver_input: ``"q"``, ``"k"``, ``"v"``, ``"mlp"`` or ``"resid"``.
        freeze_mlps: also freeze every MLP to its clean output in step 1 (direct paths only).
        batch_size: rows (prompts x senders) per forward pass.
        progress: show a tqdm bar.

    Returns:
        Scores per sender head (normalized metric, 1 = no effect); ``meta["grid"]`` is
        ``[n_layers, n_heads]`` (NaN for heads not swept).

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> scores = ck.path_patching(model, task, senders=["a0.h0", "a0.h1"], receivers=["a1.h0"],
        ...                           receiver_input="k", progress=False)
        >>> round(scores["a0.h0"], 2), round(scores["a0.h1"], 2)  # 1 = the path carries nothing
        (0.0, 1.0)
    """
    backend.require(model, ("heads", "qkv") if receiver_input in ("q", "k", "v") else ("heads",), "path patching")
    sites = _receiver_sites(model, receivers, receiver_input)
    cfg = model.cfg
    task.check_model(model)
    sender_list = ([names.head(layer, h) for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
                   if senders is None else list(senders))
    if not sender_list:
        raise InputError("senders is empty; give head ids such as ['a0.h1'] or None for every head")
    pairs = validate_heads(model, sender_list, what="sender head")
    if freeze_mlps and cfg.attn_only:
        raise InputError("freeze_mlps=True but the model is attention-only (it has no MLPs)")
    sender_layers = sorted({layer for layer, _ in pairs})
    receiver_short = _hook_short(receiver_input)
    receiver_hooks = [names.hook(receiver_short, layer) for layer in sites]
    first_receiver = min(sites) if sites else None
    z_hooks = [names.hook("z", layer) for layer in range(cfg.n_layers)]
    mlp_hooks = [names.hook("mlp_out", layer) for layer in range(cfg.n_layers)] if freeze_mlps else []
    start_layers = sender_layers + ([first_receiver] if first_receiver is not None else [])
    runs = prepare_runs(
        model, task, "noise",
        base_hooks=[names.hook("resid_pre", layer) for layer in start_layers] + z_hooks + mlp_hooks + receiver_hooks,
        source_hooks=[names.hook("z", layer) for layer in sender_layers],
    )
    k_max = rows_per_pass(model, runs, batch_size)
    chunks = []
    for layer in sender_layers:
        idx = [i for i, (sender_layer, _) in enumerate(pairs) if sender_layer == layer]
        chunks += [(layer, idx[j:j + k_max]) for j in range(0, len(idx), k_max)]
    values = torch.full((len(pairs),), float("nan"))
    for layer, chunk in tqdm(chunks, desc="path patching", disable=not progress, leave=False):
        heads = [pairs[i][1] for i in chunk]
        per_copy = _path_chunk(model, runs, layer, heads, sites, receiver_short, freeze_mlps)
        for j, i in enumerate(chunk):
            values[i] = per_copy[j]
    grid = torch.full((cfg.n_layers, cfg.n_heads), float("nan"))
    for (layer, h), v in zip(pairs, values.tolist(), strict=True):
        grid[layer, h] = v
    return Scores(
        values, [names.head(layer, h) for layer, h in pairs], "path-patching", task=task.name,
        metric=task.metric_name,
        meta={"receivers": list(receivers) if receivers else [names.LOGITS], "receiver_input": receiver_input,
              "freeze_mlps": freeze_mlps, "grid": grid, "grid_dims": ("layer", "head"),
              "clean_score": runs.clean_score, "corrupted_score": runs.corrupted_score,
              "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
              "normalized": "(m - corrupted) / (clean - corrupted); 1 = no effect"},
    )


def _freeze_hook(mask: Tensor | None, source: Tensor | None, clean: Tensor, copies: int) -> Callable:
    """Every copy gets ``clean``; copy ``i`` gets ``source`` where ``mask[i]`` (``[copies, n_heads]``)."""
    def hook(act: Tensor, hook) -> Tensor:
        if mask is None:
            return clean.unsqueeze(0).expand(copies, *clean.shape).reshape(act.shape)
        m = mask.reshape(copies, 1, 1, -1, 1)
        return torch.where(m, source.unsqueeze(0), clean.unsqueeze(0)).reshape(act.shape)
    return hook


def _path_chunk(model, runs: PatchRuns, sender_layer: int, heads: list[int], sites: dict[int, list[int] | None],
                receiver_short: str, freeze_mlps: bool) -> list[float]:
    """Steps 1-3 for ``len(heads)`` senders of one layer, batched as copies."""
    cfg, k = model.cfg, len(heads)
    device = runs.base_tokens.device
    last = cfg.n_layers if not sites else max(sites) + 1
    mask = torch.zeros(k, cfg.n_heads, dtype=torch.bool, device=device)
    mask[torch.arange(k), torch.tensor(heads)] = True
    hooks = []
    for layer in range(sender_layer, last):
        z = names.hook("z", layer)
        hooks.append((z, _freeze_hook(mask if layer == sender_layer else None, runs.source_cache.get(z),
                                      runs.base_cache[z], k)))
        if freeze_mlps:
            mlp = names.hook("mlp_out", layer)
            hooks.append((mlp, _freeze_hook(None, None, runs.base_cache[mlp], k)))
    if not sites:  # receivers = the final residual stream: step 1's logits are the answer
        logits = run_batched(model, runs, sender_layer, hooks, k)
        return [runs.normalized(x) for x in logits.reshape(k, -1, *logits.shape[1:])]

    captured: dict[str, Tensor] = {}
    for layer in sites:
        name = names.hook(receiver_short, layer)
        clean = runs.base_cache[name]
        # Receivers below the sender see only clean values.
        captured[name] = clean.unsqueeze(0).expand(k, *clean.shape).reshape(k * clean.shape[0], *clean.shape[1:])
        if layer >= sender_layer:
            def capture(act, hook, name=name):  # by name: a bridge's hook point carries its own name
                captured[name] = act.detach().clone()
            hooks.append((name, capture))
    if sender_layer < last:
        run_batched(model, runs, sender_layer, hooks, k, stop_at_layer=last)

    patch_hooks = []
    for layer, head_idx in sites.items():
        name = names.hook(receiver_short, layer)
        patch_hooks.append((name, _receiver_hook(captured[name], head_idx)))
    logits = run_batched(model, runs, min(sites), patch_hooks, k)
    return [runs.normalized(x) for x in logits.reshape(k, -1, *logits.shape[1:])]


def _receiver_hook(values: Tensor, head_idx: list[int] | None) -> Callable:
    def hook(act: Tensor, hook) -> Tensor:
        if head_idx is None:
            return values
        out = act.clone()
        out[:, :, head_idx] = values[:, :, head_idx]
        return out
    return hook

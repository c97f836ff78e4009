"""Exact activation patching at every granularity of ``transformer_lens.patching``, batched.

The numbers are those of ``transformer_lens.patching.get_act_patch_*`` with the normalized
metric ``(m - m_corrupted) / (m_clean - m_corrupted)`` (0 = corrupted behaviour, 1 = clean), but
computed much faster by `circuitkit.patching.engine`.

Granularities (``target``) and the TransformerLens-shaped grid kept in ``scores.meta["grid"]``:

============  ==========================  ============================  =======================
target        hook                        grid (all positions / by_pos)  labels
============  ==========================  ============================  =======================
resid_pre     ``blocks.L.hook_resid_pre``  ``[L]`` / ``[L, pos]``        ``resid_pre.L[@pos]``
resid_mid     ``blocks.L.hook_resid_mid``  ``[L]`` / ``[L, pos]``        ``resid_mid.L[@pos]``
attn_out      ``blocks.L.hook_attn_out``   ``[L]`` / ``[L, pos]``        ``attn_out.L[@pos]``
mlp_out       ``blocks.L.hook_mlp_out``    ``[L]`` / ``[L, pos]``        ``mL[@pos]``
head_out      ``blocks.L.attn.hook_z``     ``[L, H]`` / ``[L, pos, H]``  ``aL.hH[@pos]``
q / k / v     ``blocks.L.attn.hook_q|k|v`` ``[L, H]`` / ``[L, pos, H]``  ``aL.hH[@pos]``
pattern       ``blocks.L.attn.hook_pattern`` ``[L, H]`` / ``[L, H, dest]`` ``aL.hH[@dest]``
============  ==========================  ============================  =======================

For ``k`` and ``v`` in grouped-query models ``H`` counts key/value heads (as in TransformerLens).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from circuitkit import names
from circuitkit.errors import InputError
from circuitkit.models import backend
from circuitkit.patching.engine import Direction, check_direction, prepare_runs, sweep_patches
from circuitkit.scores import Scores
from circuitkit.tasks.task import Task


@dataclass(frozen=True)
class _Target:
    hook: str  # TransformerLens short hook name (get_act_name)
    kind: Literal["site", "head", "pattern"]
    # site: act [batch, pos, d]; head: [batch, pos, head, d_head]; pattern: [batch, head, dest, src]


TARGETS: dict[str, _Target] = {
    "resid_pre": _Target("resid_pre", "site"),
    "resid_mid": _Target("resid_mid", "site"),
    "attn_out": _Target("attn_out", "site"),
    "mlp_out": _Target("mlp_out", "site"),
    "head_out": _Target("z", "head"),
    "q": _Target("q", "head"),
    "k": _Target("k", "head"),
    "v": _Target("v", "head"),
    "pattern": _Target("pattern", "pattern"),
}


def validate_heads(model, heads: Iterable[str], n_heads: int | None = None, what: str = "head") -> list[tuple[int, int]]:
    """Parse head ids and check their range (`circuitkit.names.check_model_components`);
    returns ``(layer, head)`` pairs."""
    nodes = names.check_model_components(model, heads, ("head",), n_heads=n_heads, what=what)
    return [(node.layer, node.head) for node in nodes]


# --- activation patching --------------------------------------------------------------------

# What a target's hook must carry (circuitkit.models.backend.NEEDS), checked on a bridge.
_TARGET_NEEDS = {"head_out": ("heads",), "q": ("qkv",), "k": ("qkv",), "v": ("qkv",), "pattern": ("pattern",),
                 "resid_mid": ("additive",)}


def valid_targets(model) -> list[str]:
    """The patching targets this model has (and runs) hooks for, that mean what patching assumes."""
    # Attention-only blocks define hook_mlp_out / hook_resid_mid but never call them.
    skip = {"mlp_out", "resid_mid"} if model.cfg.attn_only else set()
    audit = backend.audit(model)
    return [t for t, spec in TARGETS.items() if names.hook(spec.hook, 0) in model.hook_dict and t not in skip
            and all(audit.ok(need) for need in _TARGET_NEEDS.get(t, ()))]


def _check_target(model, target: str) -> _Target:
    if target not in TARGETS or target not in valid_targets(model):
        if target in TARGETS and names.hook(TARGETS[target].hook, 0) in model.hook_dict:
            backend.require(model, _TARGET_NEEDS.get(target, ()), f"activation patching of {target!r}")
        why = "unknown target" if target not in TARGETS else f"model {model.cfg.model_name!r} has no {target} hook"
        raise InputError(f"{why} {target!r}; choose one of {valid_targets(model)}")
    return TARGETS[target]


def _head_count(model, spec: _Target) -> int:
    if spec.hook in ("k", "v") and model.cfg.n_key_value_heads is not None:
        return int(model.cfg.n_key_value_heads)
    return int(model.cfg.n_heads)


def _grid_layout(model, spec: _Target, target: str, by_pos: bool, seq: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    n_layers, n_heads = model.cfg.n_layers, _head_count(model, spec)
    if spec.kind == "site":
        return ((n_layers, seq), ("layer", "pos")) if by_pos else ((n_layers,), ("layer",))
    if spec.kind == "head":
        return ((n_layers, seq, n_heads), ("layer", "pos", "head")) if by_pos else ((n_layers, n_heads), ("layer", "head"))
    return ((n_layers, n_heads, seq), ("layer", "head", "dest_pos")) if by_pos else ((n_layers, n_heads), ("layer", "head"))


def _label(target: str, spec: _Target, index: dict[str, int]) -> str:
    layer, pos = index["layer"], index.get("pos", index.get("dest_pos"))
    if spec.kind == "site":
        return names.mlp(layer, pos) if target == "mlp_out" else names.site(target, layer, pos)
    return names.head(layer, index["head"], pos)


def _mask(spec: _Target, index: dict[str, int], seq: int, n_heads: int) -> Tensor:
    """Boolean mask over the activation's index dims selecting what one grid entry patches."""
    if spec.kind == "site":
        mask = torch.zeros(seq, dtype=torch.bool)
        mask[index["pos"] if "pos" in index else slice(None)] = True
    elif spec.kind == "head":
        mask = torch.zeros(seq, n_heads, dtype=torch.bool)
        mask[index["pos"] if "pos" in index else slice(None), index["head"]] = True
    else:
        mask = torch.zeros(n_heads, seq, dtype=torch.bool)
        mask[index["head"], index["dest_pos"] if "dest_pos" in index else slice(None)] = True
    return mask


def _pos_axis(spec: _Target) -> int:
    return 1 if spec.kind == "pattern" else 0


def activation_patching(
    model,
    task: Task,
    target: str = "head_out",
    *,
    by_pos: bool = False,
    direction: Direction = "denoise",
    heads: Iterable[str] | None = None,
    layers: Iterable[int] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> Scores:
    """Exact activation patching of every layer / head (/ position) of ``target``.

    Args:
        model: a ``HookedTransformer``.
        task: clean / corrupted prompts ``[batch, pos]`` and the metric.
        target: one of `TARGETS` (``head_out``, ``q``, ``k``, ``v``, ``pattern``,
            ``resid_pre``, ``resid_mid``, ``attn_out``, ``mlp_out``).
        by_pos: one patch per position (per destination position for ``pattern``) instead of
            all positions at once.
        direction: ``"denoise"`` patches clean activations into the corrupted run,
            ``"noise"`` corrupted activations into the clean run. Either way the value is the
            normalized metric, 0 = corrupted behaviour, 1 = clean.
        heads: head ids (``"a1.h0"``) to restrict a head-level sweep to (others are NaN in the grid).
        layers: layers to restrict the sweep to.
        batch_size: rows (prompts x patches) per forward pass; default 256 (fewer if the
            logits would pass ~512 MB). Raise it on a GPU.
        progress: show a tqdm bar.

    Returns:
        Scores labelled per component (see the module table); ``meta["grid"]`` holds the values
        in TransformerLens's shape (NaN where not patched), ``meta["grid_dims"]`` its axes.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> scores = ck.activation_patching(model, task, "head_out", progress=False)
        >>> round(scores["a1.h0"], 2), round(scores["a1.h1"], 2)
        (1.0, 0.0)
        >>> scores.meta["grid"].shape, scores.meta["grid_dims"]
        (torch.Size([2, 4]), ('layer', 'head'))
    """
    spec = _check_target(model, target)
    check_direction(direction)
    task.check_model(model)
    n_layers, seq = model.cfg.n_layers, task.clean.shape[1]
    n_heads = _head_count(model, spec)
    layer_set = set(range(n_layers)) if layers is None else {int(x) for x in layers}
    bad = sorted(x for x in layer_set if not 0 <= x < n_layers)
    if bad:
        raise InputError(f"layer {bad[0]} is out of range: model {model.cfg.model_name!r} has layers 0 .. {n_layers - 1}")
    head_set = None
    if heads is not None:
        if spec.kind == "site":
            raise InputError(f"heads= restricts head-level targets; {target!r} is not one (use head_out, q, k, v or pattern)")
        head_set = set(validate_heads(model, list(heads), n_heads, "key/value head" if n_heads != model.cfg.n_heads else "head"))
    shape, dims = _grid_layout(model, spec, target, by_pos, seq)

    entries = []
    for flat in itertools.product(*(range(s) for s in shape)):
        index = dict(zip(dims, flat, strict=True))
        if index["layer"] not in layer_set:
            continue
        if head_set is not None and (index["layer"], index["head"]) not in head_set:
            continue
        entries.append(flat)
    if not entries:
        raise InputError("nothing to patch: the heads / layers given select no component")
    used_layers = sorted({e[0] for e in entries})
    hook_names = [names.hook(spec.hook, layer) for layer in used_layers]
    # run_split starts the positions after a by-position patch at the next layer
    resid_layers = sorted({*used_layers, *(x + 1 for x in used_layers if by_pos and x + 1 < n_layers)})
    runs = prepare_runs(model, task, direction,
                        base_hooks=[names.hook("resid_pre", layer) for layer in resid_layers],
                        source_hooks=hook_names, trim_from_layer=used_layers[0])
    patches = [{flat[0]: _mask(spec, dict(zip(dims, flat, strict=True)), seq, n_heads)} for flat in entries]
    values = sweep_patches(model, runs, spec.hook, patches, batch_size, progress, f"patching {target}",
                           pos_axis=_pos_axis(spec))

    grid = torch.full(shape, float("nan"))
    labels = []
    for flat, value in zip(entries, values.tolist(), strict=True):
        grid[flat] = value
        labels.append(_label(target, spec, dict(zip(dims, flat, strict=True))))
    return Scores(
        values, labels, "activation-patching", task=task.name, metric=task.metric_name,
        meta={"target": target, "direction": direction, "by_pos": by_pos, "grid": grid, "grid_dims": dims,
              "clean_score": runs.clean_score, "corrupted_score": runs.corrupted_score,
              "n_layers": n_layers, "n_heads": n_heads, "normalized": "(m - corrupted) / (clean - corrupted)"},
    )


def patch_head_sets(
    model,
    task: Task,
    head_sets: Sequence[Iterable[str]],
    target: str = "head_out",
    *,
    direction: Direction = "denoise",
    batch_size: int | None = None,
    progress: bool = True,
) -> Tensor:
    """Patch each set of heads together (all positions); the normalized metric per set, ``[n_sets]``.

    ``head_sets``: e.g. ``[["a0.h1", "a1.h2"], ["a1.h0"]]``. ``target``: ``head_out``, ``q``, ``k``,
    ``v`` or ``pattern`` (for ``k`` / ``v`` in grouped-query models the ids name key/value heads).

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> ck.patch_head_sets(model, task, [["a0.h0"], ["a1.h0"], ["a0.h0", "a1.h0"]], progress=False)
        tensor([0., 1., 1.])
    """
    spec = _check_target(model, target)
    if spec.kind == "site":
        raise InputError(f"head sets need a head-level target (head_out, q, k, v, pattern), not {target!r}")
    sets = [list(s) for s in head_sets]
    if not sets or any(len(s) == 0 for s in sets):
        raise InputError("head_sets must be a non-empty list of non-empty head lists, e.g. [['a0.h1', 'a1.h2']]")
    n_heads, seq = _head_count(model, spec), task.clean.shape[1]
    parsed = [validate_heads(model, s, n_heads) for s in sets]
    patches = []
    for pairs in parsed:
        patch: dict[int, Tensor] = {}
        for layer, h in pairs:
            mask = _mask(spec, {"layer": layer, "head": h}, seq, n_heads)
            patch[layer] = patch[layer] | mask if layer in patch else mask
        patches.append(patch)
    layers = sorted({layer for p in patches for layer in p})
    runs = prepare_runs(model, task, direction,
                        base_hooks=[names.hook("resid_pre", layer) for layer in layers],
                        source_hooks=[names.hook(spec.hook, layer) for layer in layers], trim_from_layer=layers[0])
    return sweep_patches(model, runs, spec.hook, patches, batch_size, progress, "patching head sets",
                         pos_axis=_pos_axis(spec))
